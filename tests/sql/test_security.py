"""What a role under row-level security cannot forge: the topic of a row, the columns the reader
and realtime.maintain() rely on. Each test performs the attack as ``authenticated``."""

from __future__ import annotations

import re
from pathlib import Path

import psycopg
import pytest

from .conftest import count, partitions

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_policies() -> list[str]:
    """The README's policies, statement by statement."""
    text = README.read_text()
    block = next(b for b in re.findall(r"```sql\n(.*?)```", text, re.S) if "create policy" in b)
    return [s.strip() for s in block.split(";") if s.strip()]


@pytest.fixture
def readme_policy(db: psycopg.Connection) -> None:
    for statement in readme_policies():
        db.execute(statement)


@pytest.fixture
def supabase_policy(db: psycopg.Connection) -> None:
    """Policies as Supabase's docs write them: they test realtime.topic() only."""
    db.execute(
        "create policy read_room1 on realtime.messages for select to authenticated"
        " using ((select realtime.topic()) = 'room-1')"
    )
    db.execute(
        "create policy send_room1 on realtime.messages for insert to authenticated"
        " with check ((select realtime.topic()) = 'room-1')"
    )


def private_row(db: psycopg.Connection, topic: str) -> None:
    db.execute(
        "insert into realtime.messages (topic, extension, payload, event, private)"
        " values (%s, 'broadcast', '{\"secret\": true}', 'e', true)",
        (topic,),
    )


def forge_insert(db: psycopg.Connection, sql: str, params: tuple[object, ...] = ()) -> None:
    """Run ``sql`` as authenticated with realtime.topic forged to 'room-1', in a transaction."""
    with db.transaction():
        db.execute("set local role authenticated")
        db.execute("select set_config('realtime.topic', 'room-1', true)")
        db.execute(sql, params)


# -- the topic ------------------------------------------------------------------------------------


@pytest.mark.usefixtures("readme_policy")
def test_readme_policy_forged_topic_reads_nothing_else(db: psycopg.Connection) -> None:
    private_row(db, "room-1")
    private_row(db, "room-2")
    with db.transaction():
        db.execute("set local role authenticated")
        db.execute("select set_config('realtime.topic', 'room-1', true)")
        seen = [r[0] for r in db.execute("select topic from realtime.messages")]
    assert seen == ["room-1"]


@pytest.mark.parametrize("policy", ["readme_policy", "supabase_policy"])
def test_forged_topic_cannot_insert(
    db: psycopg.Connection, policy: str, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue(policy)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        forge_insert(
            db,
            "insert into realtime.messages (topic, extension, private) values ('room-2', 'broadcast', true)",
        )
    assert count(db, "select count(*) from realtime.messages where topic = 'room-2'") == 0


@pytest.mark.parametrize("policy", ["readme_policy", "supabase_policy"])
def test_allowed_topic_still_works(
    db: psycopg.Connection, policy: str, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue(policy)
    with db.transaction():
        db.execute("set local role authenticated")
        db.execute("select realtime.send('{\"a\": 1}', 'e', 'room-1')")
        db.execute("select realtime.send('{\"a\": 2}', 'e', 'room-2')")  # denied: a warning
        # The sidecar's write probe: realtime.topic set, a row of that topic, the defaults.
        db.execute("select set_config('realtime.topic', 'room-1', true)")
        db.execute("insert into realtime.messages (topic, extension) values ('room-1', 'broadcast')")
    assert [r[0] for r in db.execute("select topic from realtime.messages")] == ["room-1", "room-1"]
    # The sidecar's read probe: inserted while privileged (id and timestamps given), read as the role.
    with db.transaction():
        db.execute(
            "insert into realtime.messages (id, topic, extension, inserted_at, updated_at) values"
            " ('00000000-0000-7000-8000-000000000001', 'room-1', 'broadcast',"
            " timezone('utc', now()), timezone('utc', now()))"
        )
        db.execute("set local role authenticated")
        db.execute("select set_config('realtime.topic', 'room-1', true)")
        assert (
            count(
                db,
                "select count(*) from realtime.messages where id = '00000000-0000-7000-8000-000000000001'"
                " and inserted_at = timezone('utc', now())",
            )
            == 1
        )


# -- the columns the reader and maintain() rely on ---------------------------------------------------


@pytest.mark.usefixtures("readme_policy")
@pytest.mark.parametrize("xid", ["'1'::xid8", "pg_current_xact_id()::text::bigint + 1000"])
def test_forged_xid_is_refused(db: psycopg.Connection, xid: str) -> None:
    # The reader selects a transaction's rows by xid: a row claiming another's could be hidden.
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="messages_xid_is_the_writers"):
        forge_insert(
            db,
            "insert into realtime.messages (topic, extension, xid)"
            f" values ('room-1', 'broadcast', ({xid})::text::xid8)",
        )
    assert count(db, "select count(*) from realtime.messages") == 0


@pytest.mark.usefixtures("readme_policy")
def test_a_given_seq_orders_only_the_writers_own_rows(db: psycopg.Connection) -> None:
    with db.transaction():
        db.execute("set local role authenticated")
        db.execute("select set_config('realtime.topic', 'room-1', true)")
        insert = "insert into realtime.messages (topic, extension, event{})"
        insert += " values ('room-1', 'broadcast', {})"
        db.execute(insert.format(", seq", "'b', -1"))
        db.execute(insert.format("", "'a'"))
        current = db.execute("select pg_current_xact_id()").fetchone()
    rows = db.execute("select xid, event from realtime.messages order by xid, seq").fetchall()
    assert current is not None
    assert rows == [(current[0], "b"), (current[0], "a")]


@pytest.mark.usefixtures("readme_policy")
@pytest.mark.parametrize(
    "when", ["'infinity'", "'-infinity'", "timezone('utc', now()) + interval '100 days'"]
)
def test_forged_inserted_at_is_refused(db: psycopg.Connection, when: str) -> None:
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="inserted_at"):
        forge_insert(
            db,
            "insert into realtime.messages (topic, extension, inserted_at)"
            f" values ('room-1', 'broadcast', {when})",
        )
    assert count(db, "select count(*) from realtime.messages") == 0


@pytest.mark.usefixtures("readme_policy")
def test_forged_future_days_make_no_partitions(db: psycopg.Connection) -> None:
    before = partitions(db)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        forge_insert(
            db,
            "insert into realtime.messages (topic, extension, inserted_at)"
            " select 'room-1', 'broadcast', timezone('utc', now()) + g * interval '1 day'"
            " from generate_series(10, 2009) as g",
        )
    # Even rows written so by a trusted role (which may set every column) make no partition
    # outside the window.
    db.execute(
        "insert into realtime.messages (topic, extension, inserted_at)"
        " select 'room-1', 'broadcast', timezone('utc', now()) + g * interval '1 day'"
        " from generate_series(10, 2009) as g"
    )
    db.execute("select realtime.maintain()").fetchall()
    assert partitions(db) == before
    assert count(db, "select count(*) from realtime.messages_default") == 2000


def test_infinite_rows_do_not_stop_maintain(db: psycopg.Connection) -> None:
    # Written by a trusted role: a role under row-level security cannot (see above).
    for when in ("infinity", "-infinity"):
        db.execute(
            "insert into realtime.messages (topic, extension, inserted_at)"
            " values ('room-1', 'broadcast', %s)",
            (when,),
        )
    # A row of today in the default partition: its day's partition must still be made.
    today = partitions(db)[1]
    db.execute(f"alter extension realtime drop table {today}")
    db.execute(f"drop table {today}")
    db.execute("select realtime.send('{}', 'e', 'room-1')")
    actions = [r[0] for r in db.execute("select realtime.maintain()")]
    assert f"created {today}" in actions
    assert "deleted 1 expired rows from realtime.messages_default" in actions
    assert count(db, f"select count(*) from {today}") == 1
    assert count(db, "select count(*) from realtime.messages_default where inserted_at = 'infinity'") == 1
    assert [r[0] for r in db.execute("select realtime.maintain()")] == []


def test_no_update_privilege(db: psycopg.Connection) -> None:
    db.execute("create policy all_rows on realtime.messages for all to authenticated using (true)")
    private_row(db, "room-1")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), db.transaction():
        db.execute("set local role authenticated")
        db.execute("update realtime.messages set topic = 'room-2', xid = '1'::xid8")
