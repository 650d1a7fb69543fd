"""Fixtures of the end-to-end tests: a headless browser and a server outside demo mode."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.harness import LiveServer, serve_in_process, server_settings

from .browser import Browser


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    b = Browser()
    try:
        await b.start()
        yield b
    finally:
        await b.close()


@pytest.fixture
async def external_server(db_dsn: str) -> AsyncIterator[LiveServer]:
    """A server given its database URL, as in production: not demo mode, the page holds no key."""
    live = await serve_in_process(server_settings(db_dsn, demo=False))
    try:
        yield live
    finally:
        await live.stop()
