"""realtime.broadcast_changes() called from real triggers."""

from __future__ import annotations

import psycopg
import pytest

from .conftest import Notices, count

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
