"""realtime.maintain(): daily partitions ahead, expired ones dropped, default-partition rows moved."""

from __future__ import annotations

import datetime as dt
import threading
import time

import psycopg
import pytest

from tests.harness import scalar

from .conftest import Notices, count, drop_partition, partition_name, partitions, utc_today

DAY = dt.timedelta(days=1)
ALL_COLUMNS = (
    "topic, extension, payload, event, private, updated_at, inserted_at, id, binary_payload, xid, seq"
)


def maintain(conn: psycopg.Connection, args: str = "") -> list[str]:
    return [r[0] for r in conn.execute(f"select realtime.maintain({args})")]


def days(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + n * DAY for n in range((last - first).days + 1)]


def all_rows(conn: psycopg.Connection) -> list[tuple[object, ...]]:
    return conn.execute(f"select {ALL_COLUMNS} from realtime.messages order by id").fetchall()


def insert_at(conn: psycopg.Connection, when: dt.datetime, topic: str = "room") -> None:
    conn.execute(
        "insert into realtime.messages (topic, extension, payload, event, inserted_at)"
        " values (%s, 'broadcast', '{}', 'e', %s)",
        (topic, when),
    )


def create_partition(conn: psycopg.Connection, day: dt.date) -> None:
    conn.execute(
        f"create table {partition_name(day)} partition of realtime.messages"
        f" for values from ('{day}') to ('{day + DAY}')"
    )


def test_install_creates_yesterday_to_today_plus_three(db: psycopg.Connection) -> None:
    today = utc_today(db)
    assert partitions(db) == [partition_name(d) for d in days(today - DAY, today + 3 * DAY)]
    bounds = db.execute("select range_start, range_end from realtime.messages_partitions()").fetchall()
    assert bounds[0] == (dt.datetime.combine(today - DAY, dt.time()), dt.datetime.combine(today, dt.time()))
    # Partitions belong to the extension: pg_dump leaves them to CREATE EXTENSION.
    members = db.execute(
        "select p.partition_name::text from realtime.messages_partitions() p join pg_depend d"
        " on d.classid = 'pg_class'::regclass and d.objid = p.partition_name and d.deptype = 'e'"
    ).fetchall()
    assert [m[0] for m in members] == partitions(db)


def test_idempotent(db: psycopg.Connection) -> None:
    before = partitions(db)
    assert maintain(db) == []
    assert maintain(db) == []
    assert partitions(db) == before


def test_premake_and_retention(db: psycopg.Connection) -> None:
    today = utc_today(db)
    assert maintain(db, "premake => 5") == [
        f"created {partition_name(today + 4 * DAY)}",
        f"created {partition_name(today + 5 * DAY)}",
    ]
    # Retention zero: yesterday's partition (made by CREATE EXTENSION) is wholly expired.
    assert maintain(db, "retention => interval '0'") == [f"dropped {partition_name(today - DAY)}"]
    assert partitions(db) == [partition_name(d) for d in days(today, today + 5 * DAY)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ("retention => interval '-1 day'", "retention must be a non-negative interval"),
        ("retention => null", "retention must be a non-negative interval"),
        ("premake => -1", "premake must be a non-negative number of days"),
    ],
)
def test_rejects_bad_arguments(db: psycopg.Connection, args: str, message: str) -> None:
    with pytest.raises(psycopg.errors.RaiseException, match=message):
        maintain(db, args)


def test_requires_read_committed(db: psycopg.Connection) -> None:
    with pytest.raises(psycopg.errors.RaiseException, match="READ COMMITTED"), db.transaction():
        db.execute("set transaction isolation level repeatable read")
        maintain(db)


def test_drops_expired_partitions_and_keeps_the_window(db: psycopg.Connection) -> None:
    today = utc_today(db)
    noon = dt.time(12)
    # The default retention is 3 days, so the cutoff lies within day today-3.
    for day in (today - 10 * DAY, today - 4 * DAY, today - 3 * DAY):
        create_partition(db, day)
        insert_at(db, dt.datetime.combine(day, noon), topic=f"old:{day}")
    insert_at(db, dt.datetime.combine(today - 5 * DAY, noon), topic="expired-in-default")
    insert_at(db, dt.datetime.combine(today - 2 * DAY, noon), topic="kept-in-default")
    db.execute("select realtime.send('{}', 'e', 'today')")
    assert count(db, "select count(*) from realtime.messages_default") == 2
    kept_before = [r for r in all_rows(db) if not str(r[0]).startswith(("old:", "expired"))]
    kept_before += [r for r in all_rows(db) if r[0] == f"old:{today - 3 * DAY}"]

    actions = maintain(db)
    assert actions == [
        f"dropped {partition_name(today - 10 * DAY)}",
        f"dropped {partition_name(today - 4 * DAY)}",
        "deleted 1 expired rows from realtime.messages_default",
        f"created {partition_name(today - 2 * DAY)}",
        f"moved 1 rows from realtime.messages_default to {partition_name(today - 2 * DAY)}",
    ]
    assert partitions(db) == [partition_name(d) for d in days(today - 3 * DAY, today + 3 * DAY)]
    assert sorted(all_rows(db), key=lambda r: str(r[7])) == sorted(kept_before, key=lambda r: str(r[7]))
    assert count(db, "select count(*) from realtime.messages_default") == 0
    assert maintain(db) == []


def test_moves_default_rows_into_a_new_partition(db: psycopg.Connection, notices: Notices) -> None:
    today = utc_today(db)
    drop_partition(db, partition_name(today))
    with db.transaction():
        for n in range(3):
            db.execute("select realtime.send(jsonb_build_object('n', %s), 'e', 'room')", (n,))
        db.execute("select realtime.send_binary('\\xff', 'e', 'room', false)")
    before = all_rows(db)
    assert count(db, "select count(*) from realtime.messages_default") == 4

    assert maintain(db) == [
        f"created {partition_name(today)}",
        f"moved 4 rows from realtime.messages_default to {partition_name(today)}",
    ]
    # Every column as it was, xid and seq included: the reader sees the same rows.
    assert all_rows(db) == before
    assert count(db, "select count(*) from realtime.messages_default") == 0
    assert db.execute("select distinct tableoid::regclass::text from realtime.messages").fetchall() == [
        (partition_name(today),)
    ]
    # The moved partition has the parent's indexes (attached, so the parent's index covers it).
    indexes = count(
        db, "select count(*) from pg_index where indrelid = %s::regclass", (partition_name(today),)
    )
    assert indexes == 2  # the primary key and the replay index
    assert notices.warnings == []


def test_stray_table_with_a_partition_name_is_reported(db: psycopg.Connection) -> None:
    today = utc_today(db)
    db.execute(f"alter table realtime.messages detach partition {partition_name(today + 3 * DAY)}")
    with pytest.raises(psycopg.errors.RaiseException, match="exists but is not a partition"):
        maintain(db)


def test_not_executable_by_api_roles(db: psycopg.Connection) -> None:
    for role in ("anon", "authenticated", "service_role"):
        allowed = scalar(
            db,
            "select has_function_privilege(%s, 'realtime.maintain(interval, integer)', 'execute')",
            (role,),
        )
        assert allowed is False
    db.execute("set role authenticated")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        maintain(db)


def test_concurrent_runs(db: psycopg.Connection, db_dsn: str) -> None:
    today = utc_today(db)
    future = [partition_name(today + n * DAY) for n in (1, 2, 3)]

    def run(
        conn: psycopg.Connection,
        barrier: threading.Barrier,
        results: list[list[str]],
        errors: list[BaseException],
    ) -> None:
        try:
            barrier.wait()
            results.append(maintain(conn))
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    with psycopg.connect(db_dsn, autocommit=True) as a, psycopg.connect(db_dsn, autocommit=True) as b:
        for _ in range(15):
            for name in future:
                drop_partition(db, name)
            barrier = threading.Barrier(2)
            results: list[list[str]] = []
            errors: list[BaseException] = []
            threads = [threading.Thread(target=run, args=(c, barrier, results, errors)) for c in (a, b)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert errors == []
            # One run did the work, the other found nothing left to do.
            assert sorted(results) == [[], [f"created {name}" for name in future]]
            assert partitions(db) == [partition_name(d) for d in days(today - DAY, today + 3 * DAY)]


def test_sends_during_moves_are_never_lost(db: psycopg.Connection, db_dsn: str) -> None:
    """Senders keep writing while today's partition disappears and maintain() brings it back."""
    today = utc_today(db)
    stop = threading.Event()
    sent = [0] * 4
    warnings: list[str] = []
    errors: list[BaseException] = []

    def send(n: int) -> None:
        try:
            with psycopg.connect(db_dsn, autocommit=True) as conn:
                notices = Notices(conn)
                while not stop.is_set():
                    conn.execute("select realtime.send('{}', 'e', %s)", (f"writer:{n}",))
                    sent[n] += 1
                warnings.extend(notices.warnings)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(len(sent))]
    for thread in threads:
        thread.start()
    try:
        for cycle in range(4):
            time.sleep(0.15)
            # Take today's partition away (its rows kept aside): sends now land in the default one.
            db.execute(f"alter table realtime.messages detach partition {partition_name(today)}")
            db.execute(f"alter table {partition_name(today)} rename to held_{cycle}")
            time.sleep(0.15)
            actions = maintain(db)
            assert actions[0] == f"created {partition_name(today)}"
            assert actions[1].startswith("moved ")
    finally:
        time.sleep(0.1)
        stop.set()
        for thread in threads:
            thread.join()
    assert errors == []
    assert warnings == []
    held = sum(count(db, f"select count(*) from realtime.held_{cycle}") for cycle in range(4))
    assert count(db, "select count(*) from realtime.messages") + held == sum(sent)
    assert count(db, "select count(*) from realtime.messages_default") == 0


def test_busy_table_postpones_drops(db: psycopg.Connection, db_dsn: str) -> None:
    today = utc_today(db)
    with psycopg.connect(db_dsn) as writer:  # an open transaction that has written a message
        writer.execute("select realtime.send('{}', 'e', 'room')")
        started = time.monotonic()
        assert maintain(db, "retention => interval '0'") == [
            "skipped dropping expired partitions: realtime.messages is busy"
        ]
        assert time.monotonic() - started < 5  # waited about a second, not for the writer
        writer.commit()
    assert maintain(db, "retention => interval '0'") == [f"dropped {partition_name(today - DAY)}"]
    assert count(db, "select count(*) from realtime.messages") == 1


def test_busy_table_postpones_moves(db: psycopg.Connection, db_dsn: str) -> None:
    today = utc_today(db)
    drop_partition(db, partition_name(today))
    with psycopg.connect(db_dsn) as writer:  # its row sits in the default partition, uncommitted
        writer.execute("select realtime.send('{}', 'e', 'room')")
        # Today's partition is not created unguarded: a send routed to the default partition
        # after the attach would be lost.
        assert maintain(db) == [
            "skipped moving rows out of realtime.messages_default: realtime.messages is busy"
        ]
        assert partition_name(today) not in partitions(db)
        writer.commit()
    assert maintain(db) == [
        f"created {partition_name(today)}",
        f"moved 1 rows from realtime.messages_default to {partition_name(today)}",
    ]


def test_busy_default_partition_postpones_creation(db: psycopg.Connection, db_dsn: str) -> None:
    today = utc_today(db)
    for n in (2, 3):
        drop_partition(db, partition_name(today + n * DAY))
    with psycopg.connect(db_dsn) as reader:  # a long read (pg_dump does this) locks every partition
        reader.execute("select count(*) from realtime.messages")
        assert maintain(db) == [
            f"skipped creating {partition_name(today + 2 * DAY)} and later days: realtime.messages is busy"
        ]
        exists = scalar(db, "select to_regclass(%s)", (partition_name(today + 2 * DAY),))
        assert exists is None  # the half-made table went with the failed step
        reader.commit()
    assert maintain(db) == [f"created {partition_name(today + n * DAY)}" for n in (2, 3)]


def test_a_run_stuck_behind_another_gives_way(db: psycopg.Connection, db_dsn: str) -> None:
    with psycopg.connect(db_dsn) as other:  # holds the key maintain() serializes on
        other.execute("select pg_advisory_xact_lock(8243121312956329317)")
        assert maintain(db) == ["skipped: another realtime.maintain() is still running"]
    assert maintain(db) == []
