"""Fixtures of the reliability suite: servers on a chosen port, and clusters that can be stopped."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from pg_realtime.config import Settings
from pg_realtime.embedded import EmbeddedPostgres
from pg_realtime.server import RealtimeServer

from tests.conftest import TEST_JWT_SECRET, LiveServer
from tests.sidecar.test_delivery import run_sql

PortServerFactory = Callable[..., Awaitable[LiveServer]]

# Enough of a Supabase project for private channels: the roles, the extension, and policies that let
# `authenticated` read and write the topics named `room-*`.
PRIVATE_SETUP = """
do $$ begin
  if not exists (select from pg_roles where rolname = 'anon') then create role anon nologin; end if;
  if not exists (select from pg_roles where rolname = 'authenticated') then
    create role authenticated nologin;
  end if;
  if not exists (select from pg_roles where rolname = 'service_role') then
    create role service_role nologin;
  end if;
end $$;
create extension if not exists realtime;
create policy read_rooms on realtime.messages for select to authenticated
  using ((select realtime.topic()) like 'room-%');
create policy write_rooms on realtime.messages for insert to authenticated
  with check ((select realtime.topic()) like 'room-%');
"""


@pytest.fixture
async def server_on_port() -> AsyncIterator[PortServerFactory]:
    """Like ``make_server``, with a chosen port (0: any), so a test can restart a server in place."""
    started: list[LiveServer] = []

    async def start(database_url: str | None, port: int = 0, **overrides: Any) -> LiveServer:
        settings = Settings(jwt_secret=TEST_JWT_SECRET, port=port, **overrides)
        server = RealtimeServer(settings, database_url=database_url)
        runner = web.AppRunner(server.app, handle_signals=False, shutdown_timeout=2)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
        await site.start()
        live = LiveServer(server, runner, runner.addresses[0][1], database_url)
        started.append(live)
        if database_url:
            await live.wait_live()
        return live

    yield start
    for live in started:
        await live.stop()


@pytest.fixture
def private_cluster(fresh_cluster: Callable[[], EmbeddedPostgres]) -> tuple[EmbeddedPostgres, str]:
    """A dedicated cluster (it may be stopped) whose ``postgres`` database is ready for private channels."""
    cluster = fresh_cluster()
    dsn = cluster.dsn()
    run_sql(dsn, PRIVATE_SETUP)
    return cluster, dsn
