"""Fixtures of the end-to-end tests: a headless browser and a server outside demo mode."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from pg_realtime.config import Settings
from pg_realtime.server import RealtimeServer

from ..conftest import TEST_JWT_SECRET, LiveServer
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
    settings = Settings(jwt_secret=TEST_JWT_SECRET, port=0, database_url=db_dsn)
    server = RealtimeServer(settings)
    runner = web.AppRunner(server.app, handle_signals=False, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    live = LiveServer(server, runner, runner.addresses[0][1], db_dsn)
    try:
        await live.wait_live()
        yield live
    finally:
        await live.stop()
