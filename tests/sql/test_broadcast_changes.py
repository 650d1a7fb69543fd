"""realtime.broadcast_changes() called from real triggers."""

from __future__ import annotations

import psycopg
import pytest

from tests.harness import scalar

from .conftest import WARN_PREFIX, Notices, count, xids_taken

PAYLOAD_KEYS = {"id", "schema", "table", "operation", "record", "old_record"}


@pytest.fixture
def items(db: psycopg.Connection) -> None:
    """public.items with the canonical row trigger (as Supabase's tests and docs write it)."""
    db.execute("create table public.items (id int primary key, details text)")
    db.execute(
        """create function public.items_changes() returns trigger language plpgsql as $$
           begin
             perform realtime.broadcast_changes(
               'topic:' || coalesce(new.id, old.id)::text, TG_OP, TG_OP,
               TG_TABLE_NAME, TG_TABLE_SCHEMA, NEW, OLD, TG_LEVEL);
             return null;
           end $$"""
    )
    db.execute(
        "create trigger items_broadcast after insert or update or delete on public.items"
        " for each row execute function public.items_changes()"
    )


def broadcasts(db: psycopg.Connection) -> list[tuple[str, str, dict[str, object], bool, object]]:
    return db.execute(
        "select topic, event, payload, private, id from realtime.messages order by xid, seq"
    ).fetchall()


@pytest.mark.usefixtures("items")
def test_insert_update_delete_payloads(db: psycopg.Connection, notices: Notices) -> None:
    db.execute("insert into public.items values (1, 'first')")
    db.execute("update public.items set details = 'second' where id = 1")
    db.execute("delete from public.items where id = 1")

    rows = broadcasts(db)
    assert [(topic, event) for topic, event, *_ in rows] == [
        ("topic:1", "INSERT"),
        ("topic:1", "UPDATE"),
        ("topic:1", "DELETE"),
    ]
    for _topic, _event, payload, private, row_id in rows:
        assert set(payload) == PAYLOAD_KEYS
        assert payload["id"] == str(row_id)
        assert payload["schema"] == "public"
        assert payload["table"] == "items"
        assert private is True
    inserted, updated, deleted = (r[2] for r in rows)
    assert inserted["operation"] == "INSERT"
    assert inserted["record"] == {"id": 1, "details": "first"}
    assert inserted["old_record"] is None
    assert updated["operation"] == "UPDATE"
    assert updated["record"] == {"id": 1, "details": "second"}
    assert updated["old_record"] == {"id": 1, "details": "first"}
    assert deleted["operation"] == "DELETE"
    assert deleted["record"] is None
    assert deleted["old_record"] == {"id": 1, "details": "second"}
    assert notices.warnings == []


@pytest.mark.usefixtures("items")
def test_one_message_per_row(db: psycopg.Connection) -> None:
    db.execute("insert into public.items select g, 'x' from generate_series(1, 5) as g")
    assert sorted(topic for topic, *_ in broadcasts(db)) == [f"topic:{n}" for n in range(1, 6)]


@pytest.mark.usefixtures("items")
def test_a_rolled_back_change_broadcasts_nothing(db: psycopg.Connection) -> None:
    with db.transaction(force_rollback=True):
        db.execute("insert into public.items values (1, 'gone')")
    assert broadcasts(db) == []


def test_statement_level_trigger_is_rejected(db: psycopg.Connection) -> None:
    db.execute("create table public.items (id int primary key)")
    db.execute(
        """create function public.items_statement() returns trigger language plpgsql as $$
           begin
             perform realtime.broadcast_changes('items', TG_OP, TG_OP, TG_TABLE_NAME,
                                                TG_TABLE_SCHEMA, NEW, OLD, TG_LEVEL);
             return null;
           end $$"""
    )
    db.execute(
        "create trigger items_broadcast after insert on public.items"
        " for each statement execute function public.items_statement()"
    )
    with pytest.raises(psycopg.errors.RaiseException) as excinfo:
        db.execute("insert into public.items values (1)")
    assert excinfo.value.diag.message_primary == (
        "Failed to process the row: function can only be triggered for each row, not for each statement"
    )
    assert count(db, "select count(*) from public.items") == 0
    assert broadcasts(db) == []


def test_truncate_is_rejected(db: psycopg.Connection) -> None:
    db.execute("create table public.items (id int primary key)")
    db.execute("insert into public.items values (1), (2)")
    db.execute(
        """create function public.items_truncate() returns trigger language plpgsql as $$
           begin
             perform realtime.broadcast_changes('items', TG_OP, TG_OP, TG_TABLE_NAME,
                                                TG_TABLE_SCHEMA, NULL, NULL);
             return null;
           end $$"""
    )
    db.execute(
        "create trigger items_truncate after truncate on public.items"
        " for each statement execute function public.items_truncate()"
    )
    with pytest.raises(psycopg.errors.RaiseException) as excinfo:
        db.execute("truncate public.items")
    assert (
        excinfo.value.diag.message_primary == "Failed to process the row: Unexpected operation type: TRUNCATE"
    )
    assert count(db, "select count(*) from public.items") == 2
    assert broadcasts(db) == []


@pytest.mark.usefixtures("items")
def test_a_failing_send_does_not_abort_the_change(db: psycopg.Connection, notices: Notices) -> None:
    # broadcast_changes() raises only for its own misuse; send()'s failures stay warnings.
    db.execute("grant select, insert on public.items to authenticated")
    db.execute("set role authenticated")  # no INSERT policy on realtime.messages: every send is denied
    db.execute("insert into public.items values (7, 'kept')")
    db.execute("reset role")
    assert count(db, "select count(*) from public.items") == 1
    assert broadcasts(db) == []
    assert len(notices.warnings) == 1
    assert "row-level security" in notices.warnings[0]


@pytest.mark.usefixtures("items")
def test_a_hundred_row_update_takes_one_transaction_id(db: psycopg.Connection, notices: Notices) -> None:
    db.execute("insert into public.items select g, 'x' from generate_series(1, 100) as g")
    assert xids_taken(db, lambda: db.execute("update public.items set details = 'y'")) == 1
    assert count(db, "select count(*) from realtime.messages where event = 'UPDATE'") == 100
    assert notices.warnings == []


# -- the statement-level helper -----------------------------------------------------------------


def statement_triggers(db: psycopg.Connection, table: str, *args: str) -> None:
    """The three statement-level triggers of realtime.broadcast_changes_statement() on ``table``."""
    arguments = ", ".join(f"'{a}'" for a in args)
    function = f"realtime.broadcast_changes_statement({arguments})"
    db.execute(
        f"create trigger {table}_insert after insert on public.{table}"
        f" referencing new table as new_rows for each statement execute function {function}"
    )
    db.execute(
        f"create trigger {table}_update after update on public.{table}"
        " referencing old table as old_rows new table as new_rows"
        f" for each statement execute function {function}"
    )
    db.execute(
        f"create trigger {table}_delete after delete on public.{table}"
        f" referencing old table as old_rows for each statement execute function {function}"
    )


@pytest.fixture
def bulk(db: psycopg.Connection) -> None:
    """public.bulk with the statement-level helper, topic 'topic:<id>' as the row trigger's."""
    db.execute("create table public.bulk (id int primary key, details text)")
    statement_triggers(db, "bulk", "topic:", "id")


@pytest.mark.usefixtures("items", "bulk")
def test_statement_helper_sends_what_the_row_trigger_sends(db: psycopg.Connection, notices: Notices) -> None:
    # The same statements on a table with the row trigger and on one with the statement helper.
    for table in ("items", "bulk"):
        db.execute(f"insert into public.{table} select g, 'first ' || g from generate_series(1, 5) as g")
        db.execute(f"update public.{table} set details = 'second ' || id where id in (2, 4)")
        db.execute(f"delete from public.{table} where id > 3")
    by_table: dict[str, list[tuple[object, ...]]] = {"items": [], "bulk": []}
    for topic, event, payload, private, row_id in broadcasts(db):
        assert payload.pop("id") == str(row_id)
        by_table[str(payload.pop("table"))].append((topic, event, payload, private))
    assert by_table["bulk"] == by_table["items"]
    assert [(topic, event) for topic, event, *_ in by_table["bulk"]] == [
        *((f"topic:{n}", "INSERT") for n in range(1, 6)),
        ("topic:2", "UPDATE"),
        ("topic:4", "UPDATE"),
        ("topic:4", "DELETE"),
        ("topic:5", "DELETE"),
    ]
    assert notices.warnings == []


@pytest.mark.usefixtures("bulk")
def test_statement_helper_keeps_the_order_of_the_changes(db: psycopg.Connection) -> None:
    db.execute("insert into public.bulk select g, 'x' from generate_series(1, 300) as g order by g desc")
    db.execute("update public.bulk set details = 'y' where id % 3 = 0")
    topics = [topic for topic, *_ in broadcasts(db)]
    inserted = [f"topic:{n}" for n in range(300, 0, -1)]
    assert topics[:300] == inserted
    # An UPDATE's messages pair each new row with its own old one, in the order they changed.
    changed = db.execute(
        "select payload from realtime.messages where event = 'UPDATE' order by xid, seq"
    ).fetchall()
    assert len(changed) == 100
    for (payload,) in changed:
        assert payload["old_record"] == {"id": payload["record"]["id"], "details": "x"}
        assert payload["record"]["details"] == "y"


@pytest.mark.usefixtures("bulk")
def test_statement_helper_sends_nothing_when_the_statement_rolls_back(db: psycopg.Connection) -> None:
    db.execute("insert into public.bulk values (1, 'kept')")
    with db.transaction(force_rollback=True):
        db.execute("insert into public.bulk select g, 'x' from generate_series(2, 50) as g")
        db.execute("update public.bulk set details = 'y'")
        db.execute("delete from public.bulk")
        assert count(db, "select count(*) from realtime.messages") == 1 + 49 + 50 + 50
    with pytest.raises(psycopg.errors.UniqueViolation), db.transaction():
        db.execute("insert into public.bulk select g, 'x' from generate_series(1, 10) as g")  # 1 exists
    assert [event for _topic, event, *_ in broadcasts(db)] == ["INSERT"]


@pytest.mark.usefixtures("bulk")
def test_statement_helper_takes_one_transaction_id(db: psycopg.Connection) -> None:
    db.execute("insert into public.bulk select g, 'x' from generate_series(1, 1000) as g")
    assert xids_taken(db, lambda: db.execute("update public.bulk set details = 'y'")) == 1
    assert count(db, "select count(*) from realtime.messages where event = 'UPDATE'") == 1000


def test_statement_helper_with_a_fixed_topic(db: psycopg.Connection) -> None:
    db.execute("create table public.feed (id int, body text)")
    statement_triggers(db, "feed", "feed")
    db.execute("insert into public.feed values (1, 'a'), (2, 'b')")
    assert [(topic, event) for topic, event, *_ in broadcasts(db)] == [("feed", "INSERT"), ("feed", "INSERT")]


def test_statement_helper_null_topic_is_a_warning_per_row(db: psycopg.Connection, notices: Notices) -> None:
    db.execute("create table public.rooms (id int, room text)")
    statement_triggers(db, "rooms", "room:", "room")
    db.execute("insert into public.rooms values (1, 'a'), (2, null), (3, 'b'), (4, null)")
    assert [topic for topic, *_ in broadcasts(db)] == ["room:a", "room:b"]
    assert count(db, "select count(*) from public.rooms") == 4
    assert len(notices.warnings) == 2
    assert all(w.startswith(WARN_PREFIX) and '"topic"' in w for w in notices.warnings)


def test_statement_helper_with_a_topic_too_long_for_the_replay_index(
    db: psycopg.Connection, notices: Notices
) -> None:
    # A topic of over 2,000 bytes anywhere in the statement (here an old row's, the new row's
    # being null) sends each row through send(), whose guarded insert loses only the message
    # that does not fit the replay index (an incompressible topic of 3,000 bytes); the others,
    # and the statement, stand.
    db.execute("create table public.rooms (id int, room text)")
    statement_triggers(db, "rooms", "room:", "room")
    long_room = scalar(db, "select string_agg(md5(g::text), '') from generate_series(1, 94) as g")
    with db.transaction():
        db.execute("insert into public.rooms values (1, 'a'), (2, %s), (3, 'b')", (long_room,))
        db.execute("update public.rooms set room = null where id = 2")
        db.execute("update public.rooms set room = 'c' where id = 2")
    assert count(db, "select count(*) from public.rooms where room is not null") == 3
    assert [(topic, event) for topic, event, *_ in broadcasts(db)] == [
        ("room:a", "INSERT"),
        ("room:b", "INSERT"),
        ("room:c", "UPDATE"),
    ]
    assert len(notices.warnings) == 2  # the long topic's INSERT, and its UPDATE to a null room
    assert all(w.startswith(WARN_PREFIX + "index row size") for w in notices.warnings)


@pytest.mark.usefixtures("bulk")
def test_statement_helper_without_privileges_warns_per_row(db: psycopg.Connection, notices: Notices) -> None:
    db.execute("create role bulk_writer bypassrls")  # no INSERT on realtime.messages
    db.execute("grant insert on public.bulk to bulk_writer")
    db.execute("set role bulk_writer")
    db.execute("insert into public.bulk values (1, 'a'), (2, 'b')")
    db.execute("reset role")
    assert count(db, "select count(*) from public.bulk") == 2
    assert broadcasts(db) == []
    assert notices.warnings == [WARN_PREFIX + "permission denied for table messages"] * 2


@pytest.mark.usefixtures("bulk")
def test_statement_helper_under_row_level_security_checks_each_topic(
    db: psycopg.Connection, notices: Notices
) -> None:
    # Policies see each message's own topic in realtime.topic(), as with the row trigger.
    db.execute(
        "create policy odd_topics on realtime.messages for insert to authenticated"
        " with check (realtime.topic() in ('topic:1', 'topic:3'))"
    )
    db.execute("grant insert on public.bulk to authenticated")
    db.execute("set role authenticated")
    db.execute("insert into public.bulk select g, 'x' from generate_series(1, 4) as g")
    db.execute("reset role")
    assert [topic for topic, *_ in broadcasts(db)] == ["topic:1", "topic:3"]
    assert count(db, "select count(*) from public.bulk") == 4
    assert len(notices.warnings) == 2
    assert all("row-level security" in w for w in notices.warnings)


def test_statement_helper_in_a_row_trigger_is_rejected(db: psycopg.Connection) -> None:
    db.execute("create table public.bulk (id int)")
    db.execute(
        "create trigger bulk_rows after insert on public.bulk"
        " for each row execute function realtime.broadcast_changes_statement('bulk')"
    )
    with pytest.raises(psycopg.errors.RaiseException, match="FOR EACH STATEMENT"):
        db.execute("insert into public.bulk values (1)")
    assert count(db, "select count(*) from public.bulk") == 0


def test_statement_helper_with_columns_named_like_its_aliases(db: psycopg.Connection) -> None:
    db.execute("create table public.odd (n int primary key, o text, t text, ord int, j int)")
    statement_triggers(db, "odd", "odd:", "n")
    db.execute("insert into public.odd values (1, 'a', 'b', 7, 8)")
    db.execute("update public.odd set o = 'c'")
    db.execute("delete from public.odd")
    rows = broadcasts(db)
    assert [(topic, event) for topic, event, *_ in rows] == [
        ("odd:1", "INSERT"),
        ("odd:1", "UPDATE"),
        ("odd:1", "DELETE"),
    ]
    assert rows[1][2]["record"] == {"n": 1, "o": "c", "t": "b", "ord": 7, "j": 8}
    assert rows[1][2]["old_record"] == {"n": 1, "o": "a", "t": "b", "ord": 7, "j": 8}
