"""DROP EXTENSION realtime leaves nothing behind, whether installed fresh or upgraded from 0.1.0."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Iterator

import psycopg
import pytest

from tests.harness.database import with_dbname
from tests.sql.conftest import partition_name, partitions, utc_today

# Everything a database (or, for roles, the cluster) holds that the extension could have made.
CATALOG = {
    "pg_namespace": "select nspname from pg_namespace",
    "pg_class": "select c.relnamespace::regnamespace || '.' || c.relname || ' ' || c.relkind::text"
    " from pg_class c",
    "pg_proc": "select p.oid::regprocedure::text from pg_proc p",
    "pg_type": "select t.oid::regtype::text from pg_type t",
    "pg_roles": "select rolname from pg_roles",
    "pg_trigger": "select tgrelid::regclass || '.' || tgname from pg_trigger",
    "pg_policy": "select polname from pg_policy",
    "pg_init_privs": "select classoid::regclass || ' ' || objoid || ' ' || objsubid from pg_init_privs",
    "pg_event_trigger": "select evtname from pg_event_trigger",
}


def catalog(conn: psycopg.Connection) -> dict[str, set[str]]:
    return {name: {str(r[0]) for r in conn.execute(sql)} for name, sql in CATALOG.items()}


@pytest.fixture
def empty_db(pg_server: str) -> Iterator[str]:
    name = f"t_drop_{os.getpid()}"
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f"drop database if exists {name}")
        admin.execute(f"create database {name}")
    yield with_dbname(pg_server, name)
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f"drop database if exists {name} with (force)")


@pytest.mark.parametrize("install", ["fresh", "upgraded from 0.1.0"])
def test_drop_extension_leaves_nothing_behind(empty_db: str, install: str) -> None:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        before = catalog(conn)
        if install == "fresh":
            conn.execute("create extension realtime")
        else:
            conn.execute("create extension realtime version '0.1.0'")
            conn.execute("alter extension realtime update")
        today = utc_today(conn)
        conn.execute("""select realtime.send('{}', 'e', 'room')""")
        # Rows for a day without a partition, in the default partition until maintain() moves them.
        conn.execute(
            "insert into realtime.messages (topic, extension, inserted_at)"
            " values ('room', 'broadcast', %s), ('room', 'broadcast', 'infinity')",
            (dt.datetime.combine(today + dt.timedelta(days=5), dt.time(12)),),
        )
        # Partitions made at run time (today + 4 and + 5, the latter with the moved row) and
        # expired ones dropped (retention 0 expires yesterday's).
        actions = [r[0] for r in conn.execute("select realtime.maintain(interval '0', 5)")]
        assert f"dropped {partition_name(today - dt.timedelta(days=1))}" in actions
        assert f"created {partition_name(today + dt.timedelta(days=5))}" in actions
        # A partition detached by hand stays a table of the schema, and of the extension.
        conn.execute(
            f"alter table realtime.messages detach partition {partition_name(today + dt.timedelta(days=5))}"
        )
        assert partition_name(today + dt.timedelta(days=4)) in partitions(conn)
        conn.execute("drop extension realtime")
        after = catalog(conn)
    left = {name: sorted(after[name] - before[name]) for name in CATALOG if after[name] - before[name]}
    gone = {name: sorted(before[name] - after[name]) for name in CATALOG if before[name] - after[name]}
    assert left == {}, f"DROP EXTENSION realtime left behind: {left}"
    assert gone == {}


def test_recreate_after_drop(empty_db: str) -> None:
    with psycopg.connect(empty_db, autocommit=True) as conn:
        conn.execute("create extension realtime")
        conn.execute("drop extension realtime")
        conn.execute("create extension realtime")
        conn.execute("""select realtime.send('{}', 'e', 'room')""")
        assert conn.execute("select count(*) from realtime.messages").fetchone() == (1,)
