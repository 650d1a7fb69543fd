"""realtime.send(), realtime.send_binary() and realtime.topic(): what lands, and that nothing raises."""

from __future__ import annotations

import json
import random
import threading
import uuid
from typing import Any

import psycopg
import pytest
from psycopg.rows import dict_row

from tests.harness import scalar

from .conftest import WARN_PREFIX, Notices, count, drop_partition, partition_name, utc_today, xids_taken

COLUMNS = "topic, extension, payload, event, private, updated_at, inserted_at, id, binary_payload, xid, seq"


def messages(conn: psycopg.Connection) -> list[dict[str, Any]]:
    """Every message, in delivery order: by transaction, then by send."""
    with conn.cursor(row_factory=dict_row) as cur:
        return cur.execute(f"select {COLUMNS} from realtime.messages order by xid, seq").fetchall()


def test_send_row_shape(db: psycopg.Connection, notices: Notices) -> None:
    with db.transaction():
        xid = scalar(db, "select pg_current_xact_id()::text")
        now_utc = scalar(db, "select timezone('utc', now())")
        db.execute("""select realtime.send('{"body": "hi"}', 'greet', 'room')""")
        db.execute("""select realtime.send('{"n": 2}', 'greet', 'room', private => false)""")
        db.execute("""select realtime.send('{"n": 3}', 'greet', 'room', false)""")

    rows = messages(db)
    assert len(rows) == 3
    first = rows[0]
    assert first["topic"] == "room"
    assert first["extension"] == "broadcast"
    assert first["event"] == "greet"
    assert first["private"] is True  # send() defaults to private
    assert first["binary_payload"] is None
    assert isinstance(first["id"], uuid.UUID)
    assert first["payload"] == {"body": "hi", "id": str(first["id"])}
    assert first["inserted_at"] == now_utc
    assert first["updated_at"] == now_utc
    assert [r["private"] for r in rows] == [True, False, False]
    # Every row carries the writing transaction's id, and seq follows insertion order.
    assert {str(r["xid"]) for r in rows} == {xid}
    seqs = [r["seq"] for r in rows]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 3
    assert [r["payload"]["n"] for r in rows[1:]] == [2, 3]
    assert notices.warnings == []


def test_xid_is_the_top_level_transaction_inside_savepoints(db: psycopg.Connection) -> None:
    with db.transaction():
        xid = scalar(db, "select pg_current_xact_id()::text")
        with db.transaction():  # a savepoint, around send()'s own subtransaction
            db.execute("select realtime.send('{}', 'e', 'room')")
            db.execute("select realtime.send_binary('\\x00', 'e', 'room')")
    assert [str(r["xid"]) for r in messages(db)] == [xid, xid]


def test_send_keeps_the_callers_id(db: psycopg.Connection) -> None:
    db.execute("""select realtime.send('{"id": "mine", "x": 1}', 'e', 'room')""")
    (row,) = messages(db)
    assert row["payload"] == {"id": "mine", "x": 1}
    assert isinstance(row["id"], uuid.UUID)  # the row still gets its own id


def test_timestamps_are_utc_whatever_the_session_time_zone(db: psycopg.Connection) -> None:
    db.execute("set timezone = 'Pacific/Kiritimati'")  # UTC+14: usually another calendar day
    with db.transaction():
        db.execute("select realtime.send('{}', 'e', 'room')")
        expected = scalar(db, "select timezone('utc', now())")
    (row,) = messages(db)
    assert row["inserted_at"] == expected
    assert scalar(db, "select tableoid::regclass::text from realtime.messages") == (
        partition_name(expected.date())
    )


def test_send_binary_row_shape(db: psycopg.Connection, notices: Notices) -> None:
    db.execute("select realtime.send_binary('\\x00ff10'::bytea, 'blob', 'room')")
    db.execute("select realtime.send_binary('\\x01'::bytea, 'blob', 'room', private => false)")
    rows = messages(db)
    assert len(rows) == 2
    assert rows[0]["binary_payload"] == b"\x00\xff\x10"
    assert rows[0]["payload"] is None
    assert rows[0]["extension"] == "broadcast"
    assert rows[0]["event"] == "blob"
    assert rows[0]["topic"] == "room"
    assert [r["private"] for r in rows] == [True, False]
    assert notices.warnings == []


def test_payload_and_binary_payload_are_exclusive(db: psycopg.Connection) -> None:
    with pytest.raises(psycopg.errors.CheckViolation, match="messages_payload_exclusive"):
        db.execute(
            "insert into realtime.messages (topic, extension, payload, binary_payload)"
            " values ('room', 'broadcast', '{}', '\\x00')"
        )


def test_topic_is_set_for_the_rest_of_the_transaction(db: psycopg.Connection) -> None:
    assert scalar(db, "select realtime.topic()") is None
    with db.transaction():
        db.execute("select realtime.send('{}', 'e', 'room-1')")
        assert scalar(db, "select realtime.topic()") == "room-1"
    assert scalar(db, "select realtime.topic()") is None


@pytest.fixture
def room_policy(db: psycopg.Connection) -> None:
    """authenticated may write to topic 'room' only (an INSERT policy, as Supabase's docs write it)."""
    db.execute(
        "create policy room_writers on realtime.messages for insert to authenticated"
        " with check (realtime.topic() = 'room' and realtime.messages.extension = 'broadcast')"
    )


@pytest.mark.usefixtures("room_policy")
def test_insert_policy_sees_the_topic(db: psycopg.Connection, notices: Notices) -> None:
    db.execute("set role authenticated")
    db.execute("select realtime.send('{\"a\": 1}', 'e', 'room')")
    db.execute("select realtime.send('{\"a\": 2}', 'e', 'other')")
    db.execute("select realtime.send_binary('\\x02', 'e', 'room')")
    db.execute("select realtime.send_binary('\\x03', 'e', 'other')")
    db.execute("reset role")

    rows = messages(db)
    assert [r["topic"] for r in rows] == ["room", "room"]
    assert rows[0]["payload"]["a"] == 1
    assert rows[1]["binary_payload"] == b"\x02"
    assert len(notices.warnings) == 2
    for warning in notices.warnings:
        assert warning.startswith(WARN_PREFIX)
        assert "row-level security" in warning


@pytest.mark.usefixtures("room_policy")
def test_denied_send_does_not_abort_the_callers_work(db: psycopg.Connection, notices: Notices) -> None:
    db.execute("create table public.orders (id int primary key)")
    db.execute("grant insert, select on public.orders to authenticated")
    with db.transaction():
        db.execute("set local role authenticated")
        db.execute("insert into public.orders values (1)")
        db.execute("select realtime.send('{}', 'e', 'forbidden')")  # denied by RLS: a warning only
        db.execute("insert into public.orders values (2)")
        db.execute("select realtime.send('{}', 'e', 'room')")
    assert count(db, "select count(*) from public.orders") == 2
    assert [r["topic"] for r in messages(db)] == ["room"]
    assert len(notices.warnings) == 1
    assert notices.warnings[0].startswith(WARN_PREFIX)


def test_role_without_table_privileges_gets_a_warning(db: psycopg.Connection, notices: Notices) -> None:
    db.execute("create role nobody_special")
    db.execute("set role nobody_special")
    db.execute("select realtime.send('{}', 'e', 'room')")  # EXECUTE and schema USAGE are PUBLIC's
    db.execute("reset role")
    assert messages(db) == []
    assert len(notices.warnings) == 1
    assert notices.warnings[0].startswith(WARN_PREFIX + "permission denied")


def test_null_topic_is_a_warning(db: psycopg.Connection, notices: Notices) -> None:
    with db.transaction():
        db.execute("create table public.audit (n int)")
        db.execute("select realtime.send('{}', 'e', null)")
        db.execute("select realtime.send_binary('\\x00', 'e', null)")
        db.execute("insert into public.audit values (1)")
    assert count(db, "select count(*) from public.audit") == 1
    assert messages(db) == []
    assert len(notices.warnings) == 2
    assert all(w.startswith(WARN_PREFIX) and '"topic"' in w for w in notices.warnings)


def test_missing_partition_lands_in_the_default_partition(db: psycopg.Connection, notices: Notices) -> None:
    drop_partition(db, partition_name(utc_today(db)))
    db.execute("select realtime.send('{}', 'e', 'room')")
    db.execute("select realtime.send_binary('\\x00', 'e', 'room')")
    assert notices.warnings == []
    assert count(db, "select count(*) from realtime.messages_default") == 2
    assert len(messages(db)) == 2


def test_rolled_back_transaction_leaves_no_message(db: psycopg.Connection) -> None:
    with db.transaction(force_rollback=True):
        db.execute("select realtime.send('{}', 'e', 'room')")
        db.execute("select realtime.send_binary('\\x00', 'e', 'room')")
        assert len(messages(db)) == 2
    assert messages(db) == []


def test_concurrent_transactions_all_land(db: psycopg.Connection, db_dsn: str) -> None:
    writers, transactions = 8, 40
    errors: list[BaseException] = []
    expected: list[int] = [0] * writers
    start = threading.Barrier(writers)

    def write(n: int) -> None:
        rng = random.Random(n)
        try:
            with psycopg.connect(db_dsn, autocommit=True) as conn:
                notices = Notices(conn)
                start.wait()
                for t in range(transactions):
                    sends = rng.randint(1, 3)
                    rollback = rng.random() < 0.1
                    with conn.transaction(force_rollback=rollback):
                        for s in range(sends):
                            payload = json.dumps({"writer": n, "t": t, "s": s})
                            conn.execute("select realtime.send(%s::jsonb, 'e', 'load')", (payload,))
                    if not rollback:
                        expected[n] += sends
                assert notices.warnings == []
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []

    rows = messages(db)
    assert len(rows) == sum(expected)
    for n in range(writers):
        assert sum(1 for r in rows if r["payload"]["writer"] == n) == expected[n]
    # Within each transaction, seq follows the order of the sends.
    by_xid: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_xid.setdefault(str(row["xid"]), []).append(row)
    for group in by_xid.values():
        assert [r["payload"]["s"] for r in group] == list(range(len(group)))
        assert len({(r["payload"]["writer"], r["payload"]["t"]) for r in group}) == 1


def test_write_path_has_no_notify(db: psycopg.Connection) -> None:
    # No pg_notify(): NOTIFY takes a commit-time lock that serializes writers. No trigger either,
    # on the table or its partitions: what roles under row-level security may write is guarded by
    # restrictive policies, which cost privileged writers nothing per row.
    triggers = db.execute(
        "select distinct tgname::text from pg_trigger"
        " where tgrelid = 'realtime.messages'::regclass"
        " or tgrelid in (select inhrelid from pg_inherits where inhparent = 'realtime.messages'::regclass)",
    ).fetchall()
    assert triggers == []
    sources = db.execute(
        "select prosrc from pg_proc where pronamespace = 'realtime'::regnamespace"
        " and proname in ('send', 'send_binary', 'broadcast_changes', 'broadcast_changes_statement')"
    ).fetchall()
    assert len(sources) == 4
    assert not any("notify" in source.lower() for (source,) in sources)


# -- no subtransactions on the common path ------------------------------------------------------


def test_a_hundred_sends_take_one_transaction_id(db: psycopg.Connection, notices: Notices) -> None:
    def hundred_sends() -> None:
        for n in range(100):
            db.execute("select realtime.send(jsonb_build_object('n', %s::int), 'e', 'room')", (n,))

    # More than 64 subtransactions would overflow every snapshot taken while this one runs.
    assert xids_taken(db, hundred_sends) == 1
    assert len(messages(db)) == 100
    assert notices.warnings == []


def test_a_hundred_binary_sends_take_one_transaction_id(db: psycopg.Connection) -> None:
    def hundred_sends() -> None:
        for _ in range(100):
            db.execute("select realtime.send_binary('\\x00ff'::bytea, 'e', 'room', false)")

    assert xids_taken(db, hundred_sends) == 1
    assert len(messages(db)) == 100


def test_refused_sends_take_no_transaction_id(db: psycopg.Connection, notices: Notices) -> None:
    def refused() -> None:
        db.execute("select realtime.send('{}', 'e', null)")
        db.execute("select realtime.send_binary('\\x00', 'e', null)")

    assert xids_taken(db, refused) == 0
    assert len(notices.warnings) == 2


@pytest.mark.usefixtures("room_policy")
def test_a_caller_under_row_level_security_takes_the_guarded_path(db: psycopg.Connection) -> None:
    # Its INSERT policies must run inside the insert: each send is a subtransaction, as on Supabase.
    def hundred_sends() -> None:
        db.execute("set local role authenticated")
        for _ in range(100):
            db.execute("select realtime.send('{}', 'e', 'room')")

    assert xids_taken(db, hundred_sends) == 101
    assert len(messages(db)) == 100


def test_message_ids_are_time_ordered_version_7_uuids(db: psycopg.Connection) -> None:
    with db.transaction():
        db.execute("select realtime.send('{}', 'e', 'room')")
        db.execute("select pg_sleep(0.002)")
        db.execute("select realtime.send('{}', 'e', 'room')")
        started = scalar(db, "select extract(epoch from clock_timestamp())")
    first, second = (r["id"] for r in messages(db))
    assert first.version == second.version == 7
    assert first.variant == uuid.RFC_4122
    assert first < second
    # The first 48 bits are the Unix time in milliseconds.
    assert abs(int(first.hex[:12], 16) / 1000 - float(started)) < 5


# -- what send() refuses without raising, checked before it inserts ------------------------------


def test_payloads_that_cannot_take_an_id_are_warnings(db: psycopg.Connection, notices: Notices) -> None:
    db.execute("select realtime.send('[1, 2]', 'e', 'room')")
    db.execute("select realtime.send('\"text\"', 'e', 'room')")
    db.execute("select realtime.send('[\"id\"]', 'e', 'room')")  # has "id" (as jsonb's ? sees it): kept
    db.execute("select realtime.send(null, 'e', 'room')")  # stored without a payload, as on Supabase
    assert notices.warnings == [
        WARN_PREFIX + 'path element at position 1 is not an integer: "id"',
        WARN_PREFIX + "cannot set path in scalar",
    ]
    assert [r["payload"] for r in messages(db)] == [["id"], None]


def test_read_only_transaction_is_a_warning(db: psycopg.Connection, notices: Notices) -> None:
    with db.transaction():
        db.execute("set transaction read only")
        db.execute("select realtime.send('{}', 'e', 'room')")
        db.execute("select realtime.send_binary('\\x00', 'e', 'room')")
        assert scalar(db, "select realtime.topic()") is None
    assert messages(db) == []
    assert notices.warnings == [WARN_PREFIX + "cannot execute INSERT in a read-only transaction"] * 2


def test_insert_privilege_is_enough(db: psycopg.Connection, notices: Notices) -> None:
    # BYPASSRLS: the unguarded path, whose refusals are checked beforehand. No sequence privilege:
    # seq is an identity, whose draws are not privilege-checked.
    db.execute("create role inserter bypassrls")
    db.execute("grant insert on realtime.messages to inserter")
    db.execute("set role inserter")
    db.execute("select realtime.send('{}', 'e', 'room')")
    db.execute("select realtime.send_binary('\\x00', 'e', 'room')")
    db.execute("reset role")
    assert len(messages(db)) == 2
    assert notices.warnings == []


def test_column_privileges_are_enough(db: psycopg.Connection, notices: Notices) -> None:
    db.execute("create role column_inserter")
    db.execute(
        "grant insert (id, payload, binary_payload, event, topic, private, extension)"
        " on realtime.messages to column_inserter"
    )
    db.execute("create policy anything on realtime.messages for insert to column_inserter with check (true)")
    db.execute("set role column_inserter")
    db.execute("select realtime.send('{}', 'e', 'room')")
    db.execute("select realtime.send_binary('\\x00', 'e', 'room')")
    db.execute("reset role")
    assert len(messages(db)) == 2
    assert notices.warnings == []


def test_topic_too_long_for_the_replay_index_is_a_warning(db: psycopg.Connection, notices: Notices) -> None:
    # The replay index holds the topic of private messages; an entry that does not fit a btree
    # page (an incompressible topic of 3,000 bytes) fails the insert, and only the message is lost.
    long_topic = scalar(db, "select string_agg(md5(g::text), '') from generate_series(1, 94) as g")
    db.execute("create table public.audit (n int)")
    with db.transaction():
        db.execute("insert into public.audit values (1)")
        db.execute("select realtime.send('{}', 'e', %s)", (long_topic,))
        db.execute("select realtime.send_binary('\\x00', 'e', %s)", (long_topic,))
        db.execute("select realtime.send('{}', 'e', %s, false)", (long_topic,))  # public: not indexed
        db.execute("insert into public.audit values (2)")
    assert count(db, "select count(*) from public.audit") == 2
    assert [(r["topic"], r["private"]) for r in messages(db)] == [(long_topic, False)]
    assert len(notices.warnings) == 2
    assert all(w.startswith(WARN_PREFIX + "index row size") for w in notices.warnings)


def test_large_payload_is_stored_with_its_id(db: psycopg.Connection, notices: Notices) -> None:
    db.execute("select realtime.send(jsonb_build_object('blob', repeat('x', 2000000)), 'e', 'room')")
    (row,) = messages(db)
    assert row["payload"]["id"] == str(row["id"])
    assert len(row["payload"]["blob"]) == 2_000_000
    assert notices.warnings == []


def test_policy_that_denies_is_a_warning_and_nothing_is_stored(
    db: psycopg.Connection, notices: Notices
) -> None:
    db.execute(
        "create policy nobody_writes on realtime.messages for insert to authenticated with check (false)"
    )
    db.execute("create table public.orders (id int primary key)")
    db.execute("grant insert on public.orders to authenticated")
    with db.transaction():
        db.execute("set local role authenticated")
        db.execute("select realtime.send('{}', 'e', 'room')")
        db.execute("select realtime.send_binary('\\x00', 'e', 'room')")
        db.execute("insert into public.orders values (1)")
        # The guarded insert failed and was rolled back, with its realtime.topic setting.
        assert scalar(db, "select realtime.topic()") is None
    assert count(db, "select count(*) from public.orders") == 1
    assert messages(db) == []
    assert len(notices.warnings) == 2
    assert all(w.startswith(WARN_PREFIX) and "row-level security" in w for w in notices.warnings)


@pytest.mark.parametrize(
    ("topic", "notice"),
    [
        ("", "SuspiciousBroadcastTopic: the topic is empty: no channel can join it"),
        (
            "realtime:room:1",
            'SuspiciousBroadcastTopic: topic "realtime:room:1" starts with "realtime:": clients add it to '
            'the channel name themselves, so a channel named "room:1" receives what is sent to "room:1"',
        ),
        (
            "room:1 ",
            'SuspiciousBroadcastTopic: topic "room:1 " has leading or trailing spaces: a channel named '
            '"room:1" does not receive it',
        ),
    ],
)
def test_send_gives_a_notice_for_a_topic_that_looks_wrong_and_sends_anyway(
    db: psycopg.Connection, notices: Notices, topic: str, notice: str
) -> None:
    db.execute("select realtime.send('{}'::jsonb, 'e', %s, false)", (topic,))
    assert notices.received == [("NOTICE", notice)]
    assert count(db, "select count(*) from realtime.messages where topic = %s", (topic,)) == 1


def test_send_gives_no_notice_for_a_plain_topic(db: psycopg.Connection, notices: Notices) -> None:
    db.execute(
        "select realtime.send('{}'::jsonb, 'e', 'Room:1', false), realtime.send('{}'::jsonb, 'e', null)"
    )
    assert [severity for severity, _message in notices.received] == ["WARNING"]  # the null topic's
