"""The cluster bus between sidecars of one database, in this process: losing its LISTEN
connection, reporting it, the large-message path, the sidecar registry, and the pooler refusal."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import aiohttp
import psycopg
from pg_realtime.cluster import Cluster
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from tests.clients.drivers import py_close, py_subscribe
from tests.harness import TEST_JWT_SECRET, LiveServer, ServerProcess, pg_realtime_command, scalar
from tests.reliability.support import sample, scrape, wait_for

from .fake_pooler import FakePooler


async def healthz(server: LiveServer) -> tuple[int, dict[str, str]]:
    """/healthz as the operator's service_role key sees it (with the reason)."""
    key = {"Authorization": f"Bearer {server.token('service_role')}"}
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/healthz", headers=key) as response:
        return response.status, await response.json()


async def test_two_sidecars_one_service_connections_named(make_server, db_dsn) -> None:
    a, b = await make_server(db_dsn), await make_server(db_dsn)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        names = {
            row[0]
            for row in conn.execute(
                "select application_name from pg_stat_activity where datname = current_database()"
            )
        }
    assert {"pg-realtime", "pg-realtime stream", "pg-realtime bus", "pg-realtime bus publish"} <= names
    client, _ch, q = await py_subscribe(b.url, b.token(), "room")
    sender, ch, _q = await py_subscribe(a.url, a.token(), "room")
    try:
        await ch.send_broadcast("hello", {"n": 1})
        assert (await q.next())["payload"] == {"n": 1}
    finally:
        await py_close(client)
        await py_close(sender)


async def test_large_messages_go_through_attachments(make_server, db_dsn) -> None:
    a, b = await make_server(db_dsn), await make_server(db_dsn)
    client, _ch, q = await py_subscribe(b.url, b.token(), "room")
    try:
        async with aiohttp.ClientSession() as http:
            messages = [
                {"topic": "room", "event": f"m{i}", "payload": {"pad": "y" * (i * 3000)}} for i in range(12)
            ]
            async with http.post(
                f"{a.url}/api/broadcast",
                json={"messages": messages},
                headers={"Authorization": f"Bearer {a.token('service_role')}"},
            ) as response:
                assert response.status == 202
        got = [await q.next(timeout=10) for _ in messages]
        # In order, small and large mixed (inline up to a notification's size, attachments beyond).
        assert [m["event"] for m in got] == [m["event"] for m in messages]
        assert [len(m["payload"]["pad"]) for m in got] == [i * 3000 for i in range(12)]
    finally:
        await py_close(client)
    with psycopg.connect(db_dsn) as conn:
        assert scalar(conn, "select count(*) from realtime.bus_attachments") > 0
    assert sample(await scrape(b), "realtime_bus_lost_total") == 0


async def test_bus_connection_terminated_reconnects_and_delivers_again(make_server, db_dsn) -> None:
    a, b = await make_server(db_dsn), await make_server(db_dsn)
    assert b.server.bus is not None
    client, _ch, q = await py_subscribe(b.url, b.token(), "room")
    sender, ch, _q = await py_subscribe(a.url, a.token(), "room")
    try:
        old_pid = b.server.bus.listen_pid
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            assert scalar(
                conn, "select application_name from pg_stat_activity where pid = %s", (old_pid,)
            ) == ("pg-realtime bus")
            assert scalar(conn, "select pg_terminate_backend(%s)", (old_pid,)) is True
        bus = b.server.bus
        await wait_for(lambda: bus.listen_pid != old_pid and bus.down_reason is None, what="bus back")
        samples = await scrape(b)
        assert sample(samples, "realtime_bus_reconnects_total") >= 1
        assert sample(samples, "realtime_bus_up") == 1
        assert (await healthz(b))[0] == 200
        await ch.send_broadcast("again", {"n": 2})
        assert (await q.next(timeout=10))["event"] == "again"
    finally:
        await py_close(client)
        await py_close(sender)


async def test_healthz_reports_the_bus_down_while_it_cannot_listen(make_server, db_dsn) -> None:
    server = await make_server(db_dsn)
    seen: list[dict[str, str]] = []
    stop = asyncio.Event()

    async def keep_terminating() -> None:
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            while not stop.is_set():
                conn.execute(
                    "select pg_terminate_backend(pid) from pg_stat_activity "
                    "where application_name = 'pg-realtime bus' and datname = current_database()"
                )
                await asyncio.sleep(0.01)

    killer = asyncio.create_task(keep_terminating())
    try:
        deadline = time.monotonic() + 30
        while not seen:
            assert time.monotonic() < deadline, "healthz never reported the bus down"
            status, body = await healthz(server)
            if status == 503:
                seen.append(body)
            await asyncio.sleep(0.005)
    finally:
        stop.set()
        await killer
    assert seen[0]["state"] == "bus_down"
    assert "cluster bus" in seen[0]["reason"]
    await wait_for(
        lambda: server.server.bus is not None and server.server.bus.down_reason is None, what="bus up"
    )
    assert (await healthz(server))[0] == 200


async def test_broadcasts_while_the_bus_is_down_stay_local_and_are_counted(make_server, db_dsn) -> None:
    server = await make_server(db_dsn)
    bus = server.server.bus
    assert bus is not None
    # What a lost publishing connection leaves: the bus refuses new messages until it is back.
    bus.publishing = False
    client, _ch, q = await py_subscribe(server.url, server.token(), "room")
    sender, ch, _q = await py_subscribe(server.url, server.token(), "room")
    try:
        await ch.send_broadcast("local", {"n": 1})
        assert (await q.next())["event"] == "local"  # its own subscribers still get it
        await wait_for(lambda: bus.metrics.local_only._value.get() >= 1, what="counted")
    finally:
        bus.publishing = True
        await py_close(client)
        await py_close(sender)


async def test_sidecar_registry_lists_the_cluster_and_drops_expired_leases(make_server, db_dsn) -> None:
    a, b = await make_server(db_dsn), await make_server(db_dsn)
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(
            "insert into realtime.sidecars values "
            "(gen_random_uuid(), 'gone', '10.0.0.9:4000', now() - interval '1 h', now() - interval '1 min', "
            "now() - interval '1 s')"
        )
    assert a.server.cluster is not None and b.server.cluster is not None
    cluster = a.server.cluster
    await wait_for(
        lambda: {m.address for m in cluster.members} == {f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"},
        what="the two sidecars listed, the expired one gone",
    )
    samples = await scrape(a)
    assert sample(samples, "realtime_cluster_sidecars") == 2
    async with (
        aiohttp.ClientSession() as http,
        http.get(
            f"{a.url}/api/inspector/stats", headers={"Authorization": f"Bearer {a.token('service_role')}"}
        ) as response,
    ):
        stats = await response.json()
    assert {s["address"] for s in stats["cluster"]["sidecars"]} == {
        f"127.0.0.1:{a.port}",
        f"127.0.0.1:{b.port}",
    }
    assert stats["cluster"]["bus"] == {"up": True, "reason": None}
    await b.stop()
    # A sidecar that stops in order leaves at once.
    with psycopg.connect(db_dsn) as conn:
        assert (
            scalar(
                conn, "select count(*) from realtime.sidecars where address = %s", (f"127.0.0.1:{b.port}",)
            )
            == 0
        )


async def test_a_transaction_mode_pooler_is_refused_with_a_clear_message(db_dsn, tmp_path: Path) -> None:
    params = conninfo_to_dict(db_dsn)
    pooler = FakePooler(str(params.get("host", "127.0.0.1")), int(str(params.get("port", 5432))))
    port = await pooler.start()
    try:
        url = make_conninfo(db_dsn, host="127.0.0.1", port=port, sslmode="disable")
        served = await ServerProcess.start(
            [*pg_realtime_command(), "serve", "--database-url", url, "--port", "0"],
            0,
            tmp_path,
            env={"REALTIME_JWT_SECRET": TEST_JWT_SECRET},
        )
        code = await asyncio.wait_for(served.proc.wait(), 60)
    finally:
        await pooler.stop()
    assert code == 2, served.describe()
    assert pooler.refused >= 1
    assert "LISTEN is refused" in served.log
    assert "transaction-mode pooler" in served.log or "Transaction-mode poolers" in served.log


def test_a_filling_notification_queue_is_warned_about_once_per_crossing(caplog) -> None:
    usages: list[float] = []
    cluster = Cluster(None, lambda: "127.0.0.1:0", on_queue_usage=usages.append)  # type: ignore[arg-type]
    with caplog.at_level(logging.WARNING, logger="pg_realtime"):
        for usage in (0.1, 0.6, 0.7, 0.2, 0.55):
            cluster._queue(usage)
    warnings = [r.getMessage() for r in caplog.records if "NotificationQueueFilling" in r.getMessage()]
    assert len(warnings) == 2 and "60%" in warnings[0] and "55%" in warnings[1]
    assert usages == [0.1, 0.6, 0.7, 0.2, 0.55]
