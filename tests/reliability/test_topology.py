"""A hot standby is refused, never read; a promoted standby behind the same URL is caught up.

Both tests run a real primary and a real streaming replica (pg_basebackup -R).
"""

from __future__ import annotations

import asyncio
import logging

import aiohttp
import psycopg
import pytest
from pg_realtime.embedded import EmbeddedPostgres
from pg_realtime.stream import STANDBY_REASON, snapshot_xmax
from psycopg.types.json import Jsonb

from tests.sidecar.test_delivery import Subscriber, run_sql
from tests.sidecar.wire import RawSocket

from .conftest import wait_replayed
from .support import sample, scrape, wait_for

pytestmark = pytest.mark.asyncio


def send(dsn: str, topic: str, **payload: int | str) -> None:
    run_sql(dsn, "select realtime.send(%s::jsonb, 'e', %s, false)", (Jsonb(payload), topic))


async def test_a_hot_standby_is_refused_with_the_reason_and_delivers_nothing(replicated, make_server, caplog):
    caplog.set_level(logging.INFO, logger="pg_realtime")
    primary, standby = replicated
    server = await make_server(standby.dsn(), wait_live=False)
    stream = server.server.stream
    assert stream is not None
    await wait_for(lambda: stream.reason == STANDBY_REASON, what="standby refusal")
    key = {"Authorization": f"Bearer {server.token('service_role')}"}
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/healthz", headers=key) as response:
        assert response.status == 503
        assert await response.json() == {
            "status": "unavailable",
            "state": "stream_down",
            "reason": STANDBY_REASON,
        }
    assert any(r.getMessage().startswith("ReadFromStandbyRefused: ") for r in caplog.records)
    samples = await scrape(server)
    assert sample(samples, "realtime_stream_up") == 0
    assert sample(samples, "realtime_stream_standby_refusals_total") >= 1

    async with await RawSocket.connect(server.url, server.token()) as ws:
        await ws.join("room")
        sub = Subscriber(ws)
        sub.task = asyncio.create_task(sub.pump())
        try:
            await interleave(primary, standby)
        finally:
            sub.task.cancel()
    assert dict(sub.received) == {}
    assert stream.reads == 0 and stream.state.value == "down"
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/healthz") as response:
        assert response.status == 503


async def interleave(primary: EmbeddedPostgres, standby: EmbeddedPostgres) -> None:
    """The interleaving that the cursor would lose on a standby: T1 is open while T2 commits."""
    slow = psycopg.connect(primary.dsn())
    try:
        slow.execute("select realtime.send('{\"who\": \"slow\"}'::jsonb, 'e', 'room', false)")
        send(primary.dsn(), "room", who="fast")
        wait_replayed(primary, standby)
        (snapshot,) = run_sql(standby.dsn(), "select pg_current_snapshot()::text")[0]
        xmin, xmax, xip = snapshot.split(":")
        # Why: T1 is in progress, yet the standby's snapshot lists no in-progress xid at all.
        assert int(xmin) < int(xmax) and xip == ""
        slow.commit()
    finally:
        slow.close()
    wait_replayed(primary, standby)
    await asyncio.sleep(1.5)  # longer than a re-check of the standby


@pytest.mark.slow
async def test_failover_to_a_lagging_standby_delivers_everything_the_new_primary_commits(
    replicated, make_server, caplog
):
    caplog.set_level(logging.INFO, logger="pg_realtime")
    primary, standby = replicated
    # One URL naming both servers, as a client of a failover pair would: libpq takes the first
    # that answers, and the reader refuses the standby until it is promoted.
    url = f"postgresql://postgres@127.0.0.1:{primary.port},127.0.0.1:{standby.port}/postgres"
    server = await make_server(url)
    stream = server.server.stream
    assert stream is not None
    ws = await RawSocket.connect(server.url, server.token())
    await ws.join("fo")
    sub = Subscriber(ws)
    sub.task = asyncio.create_task(sub.pump())
    try:
        for n in range(5):
            send(primary.dsn(), "fo", phase="before", n=n)
        await wait_for(lambda: len(sub.received["fo"]) == 5, what="messages before the failover")

        # The standby stops following: what the primary commits from now on is lost with it, and so
        # are the xids it issues, which the promoted standby will issue again.
        run_sql(standby.dsn(), "alter system set primary_conninfo = ''")
        run_sql(standby.dsn(), "select pg_reload_conf()")
        await wait_for(
            lambda: run_sql(standby.dsn(), "select count(*) from pg_stat_wal_receiver")[0][0] == 0,
            what="WAL receiver stopped",
        )
        with psycopg.connect(primary.dsn(), autocommit=True) as conn:
            for _ in range(200):
                conn.execute("select pg_current_xact_id()")
        for n in range(5):
            send(primary.dsn(), "fo", phase="lost", n=n)
        await wait_for(lambda: len(sub.received["fo"]) == 10, what="messages the standby never got")
        old_xmax = snapshot_xmax(stream.snapshot or "0:0:")

        await asyncio.to_thread(primary.stop, "immediate")
        await wait_for(lambda: not stream.live, what="stream down")
        await asyncio.to_thread(standby.promote)
        # Some sends land before the reader is back, some after: both must arrive.
        for n in range(60):
            send(standby.dsn(), "fo", phase="after", n=n)
            await asyncio.sleep(0.03)
        await server.wait_live(timeout=20)
        for n in range(60, 80):
            send(standby.dsn(), "fo", phase="after", n=n)

        after = {
            row_id: xid
            for row_id, xid in run_sql(
                standby.dsn(),
                "select id::text, xid::text::bigint from realtime.messages where payload->>'phase' = 'after'",
            )
        }
        assert len(after) == 80
        # The new primary issued again xids below the old snapshot's xmax: the case that loses rows.
        assert min(after.values()) < old_xmax
        await wait_for(
            lambda: sum(1 for _, p in sub.received["fo"] if p["phase"] == "after") >= 80,
            timeout=20,
            what="every message of the new primary",
        )
        await asyncio.sleep(0.3)  # a duplicate would arrive now
    finally:
        sub.task.cancel()
        await ws.close()
    got = [row_id for row_id, _ in sub.received["fo"]]
    assert len(got) == len(set(got)), "duplicates"
    assert {row_id for row_id, p in sub.received["fo"] if p["phase"] == "after"} == set(after)
    assert [p["n"] for _, p in sub.received["fo"] if p["phase"] == "after"] == list(range(80))
    assert stream.failovers.get("timeline") == 1
    samples = await scrape(server)
    assert sample(samples, "realtime_stream_failovers_total", cause="timeline") == 1
    assert sample(samples, "realtime_stream_catch_ups_total") >= 1
    assert any(r.getMessage().startswith("DatabaseChanged: ") for r in caplog.records)
