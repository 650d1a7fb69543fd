"""Database messages to subscribers: every committed row, exactly once, in commit order.

The ground truth is the table itself: after the writers finish, the rows present in
realtime.messages are exactly the committed ones, and each subscriber must have received
exactly those (no loss, no duplicate, nothing rolled back), in each writer's order.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import defaultdict
from typing import Any

import aiohttp
import psycopg
import pytest

from tests.harness import parse_kind4

from .wire import RawSocket

pytestmark = pytest.mark.asyncio


def decode_db_frame(frame: Any) -> tuple[str, str, Any, dict[str, Any]]:
    """(subtopic, event, payload, meta) of a broadcast frame in any of the three wire forms."""
    if isinstance(frame, bytes):
        kind4 = parse_kind4(frame)
        return kind4.subtopic, kind4.event, kind4.payload_value(), kind4.meta_json()
    if isinstance(frame, list):
        body = frame[4]
        return frame[2].removeprefix("realtime:"), body["event"], body["payload"], body.get("meta", {})
    body = frame["payload"]
    return frame["topic"].removeprefix("realtime:"), body["event"], body["payload"], body.get("meta", {})


def run_sql(dsn: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cur = conn.execute(sql, params)
        return cur.fetchall() if cur.description else []


async def test_public_send_reaches_public_subscribers_of_that_topic_only(live_server, db_dsn):
    s = live_server
    async with (
        await RawSocket.connect(s.url, s.token()) as v2,
        await RawSocket.connect(s.url, s.token(), vsn="1.0.0") as v1,
        await RawSocket.connect(s.url, s.token()) as other_topic,
    ):
        await v2.join("room1")
        await v1.join("room1")
        await other_topic.join("room2")
        run_sql(db_dsn, "select realtime.send('{\"a\": 1}'::jsonb, 'hello', 'room1', false)")
        row_id = run_sql(db_dsn, "select id::text from realtime.messages where topic = 'room1'")[0][0]
        binary = await v2.recv()
        assert isinstance(binary, bytes)
        assert decode_db_frame(binary) == ("room1", "hello", {"a": 1, "id": row_id}, {"id": row_id})
        assert await v1.recv() == {
            "topic": "realtime:room1",
            "event": "broadcast",
            "payload": {
                "event": "hello",
                "payload": {"a": 1, "id": row_id},
                "type": "broadcast",
                "meta": {"id": row_id},
            },
            "ref": None,
        }
        await other_topic.expect_silence()


async def test_private_rows_do_not_reach_public_channels(live_server, db_dsn):
    s = live_server
    async with await RawSocket.connect(s.url, s.token()) as ws:
        await ws.join("room1")
        run_sql(db_dsn, "select realtime.send('{\"a\": 1}'::jsonb, 'hello', 'room1')")  # private by default
        run_sql(db_dsn, "select realtime.send('{\"b\": 2}'::jsonb, 'hello', 'room1', false)")
        assert decode_db_frame(await ws.recv())[2]["b"] == 2
        await ws.expect_silence()


async def test_rolled_back_sends_are_never_delivered(live_server, db_dsn):
    s = live_server
    async with await RawSocket.connect(s.url, s.token()) as ws:
        await ws.join("room1")
        with psycopg.connect(db_dsn) as conn:
            conn.execute("select realtime.send('{\"n\": 1}'::jsonb, 'e', 'room1', false)")
            conn.rollback()
            conn.execute("select realtime.send('{\"n\": 2}'::jsonb, 'e', 'room1', false)")
            conn.commit()
        assert decode_db_frame(await ws.recv())[2]["n"] == 2
        await ws.expect_silence()


async def test_long_transaction_delays_only_its_own_rows(live_server, db_dsn):
    s = live_server
    async with await RawSocket.connect(s.url, s.token()) as ws:
        await ws.join("room1")
        slow = psycopg.connect(db_dsn)
        try:
            slow.execute("select realtime.send('{\"who\": \"slow\"}'::jsonb, 'e', 'room1', false)")
            # A later transaction (larger xid? not necessarily earlier commit) commits first.
            run_sql(db_dsn, "select realtime.send('{\"who\": \"fast\"}'::jsonb, 'e', 'room1', false)")
            assert decode_db_frame(await ws.recv())[2]["who"] == "fast"
            await ws.expect_silence(0.3)  # many reads pass while the slow one is open
            slow.commit()
            assert decode_db_frame(await ws.recv())[2]["who"] == "slow"
        finally:
            slow.close()


async def test_rows_of_one_transaction_arrive_in_insertion_order(live_server, db_dsn):
    s = live_server
    async with await RawSocket.connect(s.url, s.token(), vsn="1.0.0") as ws:
        await ws.join("room1")
        with psycopg.connect(db_dsn) as conn:
            for n in range(50):
                conn.execute(
                    "select realtime.send(jsonb_build_object('n', %s::int), 'e', 'room1', false)", (n,)
                )
        received = [decode_db_frame(await ws.recv())[2]["n"] for _ in range(50)]
        assert received == list(range(50))


async def test_binary_rows_go_to_v2_as_binary_and_not_to_v1(live_server, db_dsn):
    s = live_server
    async with (
        await RawSocket.connect(s.url, s.token()) as v2,
        await RawSocket.connect(s.url, s.token(), vsn="1.0.0") as v1,
    ):
        await v2.join("bin")
        await v1.join("bin")
        run_sql(db_dsn, "select realtime.send_binary('\\x00ff01'::bytea, 'blob', 'bin', false)")
        frame = await v2.recv()
        assert isinstance(frame, bytes)
        assert frame[4] == 0  # raw bytes, not JSON
        assert decode_db_frame(frame)[2] == b"\x00\xff\x01"
        await v1.expect_silence()


async def test_broadcast_changes_trigger_payloads_on_a_public_topic(live_server, db_dsn):
    s = live_server
    run_sql(
        db_dsn,
        """
        create table public.todos (id int primary key, title text);
        create function public.todos_changes() returns trigger language plpgsql as $$
        begin
          -- broadcast_changes() always sends private; this wrapper publishes the same payload publicly.
          perform realtime.send(
            jsonb_build_object('old_record', case when tg_op = 'INSERT' then null else to_jsonb(old) end,
                               'record', case when tg_op = 'DELETE' then null else to_jsonb(new) end,
                               'operation', tg_op, 'table', tg_table_name, 'schema', tg_table_schema),
            tg_op, 'todos', false);
          return null;
        end $$;
        create trigger todos_changes after insert or update or delete on public.todos
          for each row execute function public.todos_changes();
        """,
    )
    async with await RawSocket.connect(s.url, s.token()) as ws:
        await ws.join("todos")
        run_sql(db_dsn, "insert into public.todos values (1, 'a')")
        run_sql(db_dsn, "update public.todos set title = 'b' where id = 1")
        run_sql(db_dsn, "delete from public.todos where id = 1")
        frames = [decode_db_frame(await ws.recv()) for _ in range(3)]
    keys = {"id", "schema", "table", "operation", "record", "old_record"}
    insert, update, delete = (f[2] for f in frames)
    assert [f[1] for f in frames] == ["INSERT", "UPDATE", "DELETE"]
    assert set(insert) == set(update) == set(delete) == keys
    assert insert["record"] == {"id": 1, "title": "a"} and insert["old_record"] is None
    assert update["record"] == {"id": 1, "title": "b"} and update["old_record"] == {"id": 1, "title": "a"}
    assert delete["record"] is None and delete["old_record"] == {"id": 1, "title": "b"}
    assert insert["schema"] == "public" and insert["table"] == "todos"


class Subscriber:
    """A raw socket that records every database message it receives, per topic."""

    def __init__(self, ws: RawSocket) -> None:
        self.ws = ws
        self.received: dict[str, list[tuple[str, Any]]] = defaultdict(list)
        self.task: asyncio.Task[None] | None = None

    async def pump(self) -> None:
        while True:
            try:
                frame = await self.ws.recv(timeout=3600)
            except TimeoutError:
                return
            if isinstance(frame, bytes) or (isinstance(frame, dict | list) and _is_broadcast(frame)):
                topic, _event, payload, meta = decode_db_frame(frame)
                self.received[topic].append((meta["id"], payload))


def _is_broadcast(frame: Any) -> bool:
    return bool((frame[3] if isinstance(frame, list) else frame.get("event")) == "broadcast")


#: Writing for 0.3 s, then silent for 0.4 s, on one clock for all writers: while every writer is
#: silent the snapshot stays the same, so the reader probes instead of reading.
SPELLS = (0.3, 0.4)


def writer(
    dsn: str,
    writer_id: int,
    topics: list[str],
    transactions: int,
    seed: int,
    stop_at: float,
    spells: tuple[float, float] | None = None,
    sends: tuple[int, int] = (1, 3),
) -> None:
    """Sequential transactions of ``sends`` (1-3) sends; about 10% rolled back on purpose; with
    ``spells``, only during the writing part of each (burst, silence) period."""
    rng = random.Random(seed)
    epoch = time.monotonic()
    with psycopg.connect(dsn) as conn:
        for tx in range(transactions):
            if time.monotonic() > stop_at:
                break
            if spells is not None:
                burst, idle = spells
                phase = (time.monotonic() - epoch) % (burst + idle)
                if phase >= burst:
                    time.sleep(burst + idle - phase)
            for k in range(rng.randint(*sends)):
                conn.execute(
                    "select realtime.send(jsonb_build_object('w', %s::int, 'tx', %s::int, 'k', %s::int),"
                    " 'e', %s, false)",
                    (writer_id, tx, k, rng.choice(topics)),
                )
            if rng.random() < 0.1:
                conn.rollback()
            else:
                conn.commit()


def check_subscriber(sub: Subscriber, dsn: str, topics: list[str]) -> int:
    """Exactly the committed rows, each once, in each writer's commit order."""
    checked = 0
    for topic in topics:
        committed = {
            row_id
            for (row_id,) in run_sql(dsn, "select id::text from realtime.messages where topic = %s", (topic,))
        }
        got = [row_id for row_id, _ in sub.received[topic]]
        assert len(got) == len(set(got)), f"duplicates on {topic}"
        assert set(got) == committed, f"{topic}: missing {committed - set(got)}, extra {set(got) - committed}"
        last: dict[int, tuple[int, int]] = {}
        for _row_id, payload in sub.received[topic]:
            if "w" not in payload:
                continue
            position = (payload["tx"], payload["k"])
            assert position > last.get(payload["w"], (-1, -1)), f"out of order on {topic}: {payload}"
            last[payload["w"]] = position
        checked += len(got)
    return checked


@pytest.mark.slow
@pytest.mark.parametrize("spells", [None, SPELLS], ids=["steady", "idle-spells"])
async def test_torture_concurrent_writers_rollbacks_and_long_transactions(make_server, db_dsn, spells):
    server = await make_server(db_dsn)
    topics = [f"torture-{i}" for i in range(4)]
    subscribers: list[Subscriber] = []
    for i in range(8):  # two subscribers per topic in each format, every socket on all topics
        ws = await RawSocket.connect(server.url, server.token(), vsn="2.0.0" if i % 2 else "1.0.0")
        for topic in topics:
            await ws.join(topic)
        subscribers.append(Subscriber(ws))
    for sub in subscribers:
        sub.task = asyncio.create_task(sub.pump())

    long_commit = psycopg.connect(db_dsn)
    long_rollback = psycopg.connect(db_dsn)
    long_commit.execute("select realtime.send('{\"long\": \"commit\"}'::jsonb, 'e', %s, false)", (topics[0],))
    long_rollback.execute(
        "select realtime.send('{\"long\": \"rollback\"}'::jsonb, 'e', %s, false)", (topics[1],)
    )

    stop_at = time.monotonic() + 40  # bound the run on a slow machine
    threads = [
        threading.Thread(target=writer, args=(db_dsn, w, topics, 250, 1000 + w, stop_at, spells))
        for w in range(8)
    ]
    # Two more writers send 65-100 messages per transaction: more than the 64 subtransactions
    # a snapshot can list, had each send taken one.
    threads += [
        threading.Thread(target=writer, args=(db_dsn, w, topics, 12, 1000 + w, stop_at, spells, (65, 100)))
        for w in (8, 9)
    ]
    for t in threads:
        t.start()
    await asyncio.sleep(0.5)  # many reads happen while both long transactions stay open
    for t in threads:
        await asyncio.to_thread(t.join)
    long_commit.commit()
    long_rollback.rollback()
    long_commit.close()
    long_rollback.close()

    total = run_sql(db_dsn, "select count(*) from realtime.messages where topic like 'torture-%'")[0][0]
    assert total > 1000
    big = run_sql(
        db_dsn,
        "select count(*) from (select xid from realtime.messages where topic like 'torture-%'"
        " group by xid having count(*) > 64) as t",
    )[0][0]
    assert big >= 2
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if all(sum(len(v) for v in sub.received.values()) >= total for sub in subscribers):
            break
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)  # anything extra (a duplicate) would arrive now
    for sub in subscribers:
        assert sub.task is not None
        sub.task.cancel()
        await sub.ws.close()
    for sub in subscribers:
        assert check_subscriber(sub, db_dsn, topics) == total
        payloads = [p for rows in sub.received.values() for _, p in rows]
        assert {
            "long": "commit",
            "id": payloads[[p.get("long") for p in payloads].index("commit")]["id"],
        } in payloads
        assert not any(p.get("long") == "rollback" for p in payloads)
    stream = server.server.stream
    assert stream is not None
    if spells is not None:
        assert stream.waits + stream.probes > 0, "the silent spells never made the reader wait"


@pytest.mark.slow
async def test_postgres_restart_mid_stream_loses_and_repeats_nothing(make_server, fresh_cluster):
    cluster = fresh_cluster()
    dsn = cluster.dsn()
    run_sql(dsn, "create extension realtime")
    server = await make_server(dsn)
    subscribers = []
    for vsn in ("1.0.0", "2.0.0"):
        ws = await RawSocket.connect(server.url, server.token(), vsn=vsn)
        await ws.join("restart")
        sub = Subscriber(ws)
        sub.task = asyncio.create_task(sub.pump())
        subscribers.append(sub)

    stop = threading.Event()

    def keep_sending() -> None:
        n = 0
        while not stop.is_set():
            try:
                with psycopg.connect(dsn, autocommit=True, connect_timeout=2) as conn:
                    while not stop.is_set():
                        conn.execute(
                            "select realtime.send(jsonb_build_object('n', %s::int), 'e', 'restart', false)",
                            (n,),
                        )
                        n += 1
                        time.sleep(0.002)
            except psycopg.Error:
                time.sleep(0.05)  # the server is restarting; a commit that failed simply did not happen

    sender = threading.Thread(target=keep_sending)
    sender.start()
    await asyncio.sleep(0.7)
    await asyncio.to_thread(cluster.restart, "fast")
    await asyncio.sleep(0.2)
    assert server.server.stream is not None
    await server.wait_live(timeout=20)
    await asyncio.sleep(0.7)
    stop.set()
    await asyncio.to_thread(sender.join)

    committed = {r for (r,) in run_sql(dsn, "select id::text from realtime.messages where topic = 'restart'")}
    assert len(committed) > 50
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(
        len(s.received["restart"]) < len(committed) for s in subscribers
    ):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    for sub in subscribers:
        assert sub.task is not None
        sub.task.cancel()
        await sub.ws.close()
        got = [row_id for row_id, _ in sub.received["restart"]]
        assert len(got) == len(set(got))
        assert set(got) == committed
        numbers = [payload["n"] for _, payload in sub.received["restart"]]
        assert numbers == sorted(numbers)


async def test_healthz_follows_the_database(make_server, fresh_cluster):
    cluster = fresh_cluster()
    dsn = cluster.dsn()
    run_sql(dsn, "create extension realtime")
    server = await make_server(dsn)
    async with aiohttp.ClientSession() as http:
        assert (await http.get(f"{server.url}/healthz")).status == 200
        await asyncio.to_thread(cluster.stop, "fast")
        deadline = time.monotonic() + 10
        status = 200
        while time.monotonic() < deadline and status == 200:
            await asyncio.sleep(0.05)
            status = (await http.get(f"{server.url}/healthz")).status
        response = await http.get(f"{server.url}/healthz")
        assert response.status == 503
        assert (await response.json())["status"] == "unavailable"
        await asyncio.to_thread(cluster.start)
        await server.wait_live(timeout=20)
        assert (await http.get(f"{server.url}/healthz")).status == 200


async def wait_until(condition: Any, what: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.02)


def reader_waits_in_the_database(dsn: str) -> bool:
    return bool(
        run_sql(
            dsn,
            "select 1 from pg_stat_activity where application_name = 'pg-realtime stream'"
            " and state = 'active' and query like '%%realtime_wait%%'",
        )
    )


async def test_after_a_quiet_second_the_reader_waits_in_the_database_and_still_delivers(live_server, db_dsn):
    s = live_server
    async with await RawSocket.connect(s.url, s.token()) as ws:
        await ws.join("quiet")
        await wait_until(lambda: reader_waits_in_the_database(db_dsn), "the idle wait")
        for n in range(3):
            run_sql(
                db_dsn, "select realtime.send(jsonb_build_object('n', %s::int), 'e', 'quiet', false)", (n,)
            )
            assert decode_db_frame(await ws.recv())[2]["n"] == n
            await wait_until(lambda: reader_waits_in_the_database(db_dsn), "the idle wait again")


async def test_without_temporary_objects_the_reader_probes_from_the_sidecar(make_server, db_dsn, caplog):
    import logging
    import uuid

    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    caplog.set_level(logging.WARNING, logger="pg_realtime")
    role = f"reader_{uuid.uuid4().hex[:8]}"
    dbname = conninfo_to_dict(db_dsn)["dbname"]
    run_sql(
        db_dsn,
        f"""create role {role} login bypassrls;
            select realtime.grant_access('{role}');
            revoke temporary on database {dbname} from public;""",
    )
    params = conninfo_to_dict(db_dsn)
    params["user"] = role
    try:
        server = await make_server(make_conninfo("", **params))
        async with await RawSocket.connect(server.url, server.token()) as ws:
            await ws.join("quiet")
            await asyncio.sleep(1.3)  # past the quiet second
            run_sql(db_dsn, "select realtime.send('{\"n\": 1}'::jsonb, 'e', 'quiet', false)")
            assert decode_db_frame(await ws.recv())[2]["n"] == 1
            assert not reader_waits_in_the_database(db_dsn)
        assert any("no wait in the database" in r.getMessage() for r in caplog.records)
        await server.stop()
    finally:
        run_sql(
            db_dsn, f"grant temporary on database {dbname} to public; drop owned by {role}; drop role {role}"
        )


async def test_the_reader_pauses_without_channels_and_a_join_resumes_it_before_its_reply(make_server, db_dsn):
    # Diagnostics off: a topic they watch keeps the reader reading (test_diagnose_cli asks about one).
    server = await make_server(db_dsn, diagnostics=False)
    stream = server.server.stream
    assert stream is not None
    await wait_until(lambda: stream.paused, "the reader to pause with no channel joined")
    assert stream.live  # paused is not down: /healthz stays ok
    reads = stream.reads
    run_sql(db_dsn, "select realtime.send('{\"n\": 0}'::jsonb, 'e', 'room', false)")
    await asyncio.sleep(0.3)
    assert stream.reads == reads, "a paused reader read"
    for round_ in range(1, 4):
        async with await RawSocket.connect(server.url, server.token()) as ws:
            await ws.join("room")
            assert not stream.paused
            # Committed right after the join reply: it must arrive, however soon it commits.
            run_sql(
                db_dsn,
                "select realtime.send(jsonb_build_object('n', %s::int), 'e', 'room', false)",
                (round_,),
            )
            frame = await ws.recv()
            assert decode_db_frame(frame)[2]["n"] == round_
            # What committed while nobody was joined is history: not delivered now either.
            await ws.expect_silence()
        await wait_until(lambda: stream.paused, "the reader to pause after the last leave")
    assert stream.pauses >= 4
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/metrics") as response:
        assert "realtime_stream_paused 1.0" in await response.text()


async def test_a_paused_reader_checks_its_server_once_a_second_and_nothing_more(make_server, db_dsn):
    server = await make_server(db_dsn, diagnostics=False)
    stream = server.server.stream
    assert stream is not None
    await wait_until(lambda: stream.paused, "the reader to pause")
    activity = (
        "select query_start, query from pg_stat_activity"
        " where application_name = 'pg-realtime stream' and datname = current_database()"
    )
    [(first_start, _)] = run_sql(db_dsn, activity)
    await asyncio.sleep(2.5)
    [(last_start, last_query)] = run_sql(db_dsn, activity)
    # One check a second: the server's identity and recovery state, no read, no wait.
    assert 1.0 <= (last_start - first_start).total_seconds() <= 3.0
    assert "pg_is_in_recovery" in last_query
    assert stream.live and stream.paused


async def test_an_idle_reader_waits_without_reading_until_something_commits(make_server, db_dsn):
    """A channel joined and nothing committed: each wait in the database times out once a second
    and returns the old snapshot without the read, which could find nothing; the next commit is
    read and delivered as ever."""
    server = await make_server(db_dsn, diagnostics=False)
    stream = server.server.stream
    assert stream is not None and server.server.cluster is not None
    # The sidecar's lease renewal (every 3 s) is a commit: from its next round, once a minute.
    server.server.cluster.renew_s = 60.0
    # Index and sequential scans of the messages' partitions, which every read reads (and nothing
    # else of this sidecar while it has nothing to replay; presence and the cluster registry have
    # readers of their own).
    scans = (
        "select coalesce(sum(coalesce(idx_scan, 0) + seq_scan), 0)::bigint from pg_stat_user_tables"
        " where schemaname = 'realtime' and relname like 'messages%%'"
    )
    async with await RawSocket.connect(server.url, server.token()) as ws:
        await ws.join("room")
        # A window in which the reader read nothing at all, after a quiet lead long enough for
        # the statistics of everything before to reach the shared counters: a busy backend sends
        # its own at most every second, an idle one (the pool's, after the start's maintain() and
        # the join) 10 s after its last statement.
        for _attempt in range(3):
            reads_before = stream.reads
            await asyncio.sleep(11)
            [(scans_before,)] = run_sql(db_dsn, scans)
            probes_before = stream.probes
            await asyncio.sleep(3.5)
            [(scans_after,)] = run_sql(db_dsn, scans)
            if stream.reads == reads_before:
                break
        else:
            pytest.fail("the snapshot kept changing: no quiet window to look at")
        assert stream.probes - probes_before >= 2, "the waits did not time out once a second"
        assert scans_after == scans_before, "a wait that timed out unchanged read the tables"
        run_sql(db_dsn, "select realtime.send('{\"n\": 1}'::jsonb, 'e', 'room', false)")
        frame = await ws.recv()
        assert decode_db_frame(frame)[2]["n"] == 1
        assert stream.reads == reads_before + 1


async def test_the_pause_after_a_read_is_whole_only_after_a_full_one(make_server, db_dsn):
    """``--poll-interval-ms`` separates a read of 8 rows or more from the next one, so that under
    load rows that commit meanwhile are read together; after a smaller read the pause shrinks in
    proportion, and a commit that follows a one-row read is read as soon as it is seen."""
    interval = 4.0
    server = await make_server(db_dsn, poll_interval_ms=interval * 1000)
    assert server.server.cluster is not None
    # A read that finds nothing new is followed by the whole pause too: the sidecar's lease
    # renewal (a commit every 3 s) must not fall between the sends. From its next round (within
    # 3 s), once a minute.
    server.server.cluster.renew_s = 60.0
    await asyncio.sleep(3.5)
    send = (
        "select realtime.send(jsonb_build_object('n', n), 'e', 'pause', false)"
        " from generate_series(%s::int, %s::int) as n"
    )
    async with await RawSocket.connect(server.url, server.token()) as ws:
        await ws.join("pause")
        run_sql(db_dsn, send, (1, 1))
        assert decode_db_frame(await ws.recv())[2]["n"] == 1
        started = time.monotonic()
        run_sql(db_dsn, send, (2, 2))
        assert decode_db_frame(await ws.recv())[2]["n"] == 2
        assert time.monotonic() - started < interval / 2, "a one-row read was followed by the whole pause"
        run_sql(db_dsn, send, (3, 10))  # eight rows in one transaction: one full read
        assert [decode_db_frame(await ws.recv())[2]["n"] for _ in range(8)] == list(range(3, 11))
        started = time.monotonic()
        run_sql(db_dsn, send, (11, 11))
        assert decode_db_frame(await ws.recv(timeout=2 * interval))[2]["n"] == 11
        assert time.monotonic() - started > interval / 2, "a full read was not followed by the pause"
