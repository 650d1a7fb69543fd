"""The inspector lists a near-miss with its cause and fix (the steps of the docs' screenshot)."""

from __future__ import annotations

import pytest

from .browser import ARTIFACTS
from .near_miss import show_near_miss

pytestmark = pytest.mark.asyncio


async def test_page_shows_a_private_send_to_a_public_channel(live_server, db_dsn, browser):
    ARTIFACTS.mkdir(exist_ok=True)
    text = await show_near_miss(browser, live_server.url, db_dsn, ARTIFACTS / "inspector-near-miss.png")
    assert "visibility" in text
    assert 'message to "room:1" (event "update") is private and reached nobody' in text
    assert "join with config.private = true, or send with private => false" in text
    assert "score" not in text  # no payload on the page
    assert browser.page_errors == []
