"""`pg-realtime diagnose <topic>` against running sidecars: one table, the cause of each miss."""

from __future__ import annotations

import asyncio

import pytest
from pg_realtime import cli
from pg_realtime.diagnose import registered_urls

from tests.harness import TEST_JWT_SECRET

from .test_delivery import run_sql
from .wire import RawSocket

pytestmark = pytest.mark.asyncio


async def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    status = await asyncio.to_thread(cli.main, argv)
    return status, capsys.readouterr().out


async def test_diagnose_prints_the_messages_of_every_sidecar_with_their_cause(make_server, db_dsn, capsys):
    first = await make_server(db_dsn)
    second = await make_server(db_dsn)
    argv = ["diagnose", "room:1", "--url", first.url, "--url", second.url, "--jwt-secret", TEST_JWT_SECRET]
    async with await RawSocket.connect(first.url, first.token()) as ws:
        await ws.join("room:1")
        # Asked first, both record every message of the topic from now on; until then a sidecar
        # keeps only the messages that missed someone.
        status, out = await run(argv, capsys)
        assert status == 0 and "No message recorded yet." in out
        run_sql(db_dsn, """select realtime.send('{"n": 1}'::jsonb, 'update', 'room:1')""")
        for live in (first, second):
            diagnostics = live.server.diagnostics
            assert diagnostics is not None
            for _ in range(500):
                if diagnostics.messages("room:1"):
                    break
                await asyncio.sleep(0.01)
        status, out = await run(argv, capsys)
    assert status == 0
    lines = out.splitlines()
    assert lines[0] == 'topic "room:1"'
    assert f"  {first.url}: subscribers 1 public v2.0.0" in lines
    assert f"  {second.url}: subscribers none" in lines
    header = next(line for line in lines if line.startswith("sidecar"))
    assert header.split() == [
        "sidecar",
        "committed",
        "read",
        "source",
        "visibility",
        "event",
        "lag",
        "matched",
        "delivered",
        "why",
    ]
    # Each sidecar read the row from the database: one line each, the first one with the miss.
    rows = [line for line in lines if line.startswith("http://")]
    assert len(rows) == 2
    mine = next(row for row in rows if row.startswith(first.url))
    assert "database  private     update" in mine
    assert mine.endswith("visibility: join with config.private = true, or send with private => false")
    theirs = next(row for row in rows if row.startswith(second.url))
    assert theirs.endswith("no subscriber on this or a similar topic")


async def test_diagnose_refuses_without_a_service_role_key(live_server, capsys):
    s = live_server
    status, out = await run(["diagnose", "room:1", "--url", s.url, "--key", s.token("anon")], capsys)
    assert status == 1
    assert f"{s.url}: unreachable or refused (HTTP 403: a service_role key is required)" in out


async def test_diagnose_finds_every_sidecar_in_the_registry(make_server, db_dsn, capsys):
    first = await make_server(db_dsn)
    second = await make_server(db_dsn)
    for live in (first, second):
        assert live.server.cluster is not None
    # Both have registered themselves (at start, then every few seconds).
    for _ in range(500):
        urls = await asyncio.to_thread(registered_urls, db_dsn)
        if {first.url, second.url} <= set(urls):
            break
        await asyncio.sleep(0.02)
    assert {first.url, second.url} <= set(urls)
    argv = ["diagnose", "room:9", "--database-url", db_dsn, "--jwt-secret", TEST_JWT_SECRET]
    status, out = await run(argv, capsys)
    assert status == 0
    assert first.url in out and second.url in out
