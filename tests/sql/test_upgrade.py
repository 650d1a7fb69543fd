"""ALTER EXTENSION realtime UPDATE from the released 0.1.0 leaves what a fresh install makes."""

from __future__ import annotations

import datetime as dt
import difflib
import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator

import psycopg
import pytest
from pg_realtime.cli import ensure_supabase_roles
from pg_realtime.embedded import pg_bindir
from pg_realtime.stream import replay

from tests.harness.database import with_dbname
from tests.sql.conftest import drop_partition, partition_name, utc_today

DAY_MS = 86_400_000

# Privileges given after the install: by grant_access() to a role made later, and by hand (an
# administrator's UPDATE, the Supabase way, with nothing on the sequence). Neither may become one
# of the extension's initial privileges, which pg_dump leaves to CREATE EXTENSION.
LATER_GRANTS = """
do $$ begin
    if not exists (select from pg_roles where rolname = 'realtime_hand_updater') then
        create role realtime_hand_updater nologin;
    end if;
    if not exists (select from pg_roles where rolname = 'realtime_later') then
        create role realtime_later nologin;
    end if;
end $$;
grant select, insert, update on realtime.messages to realtime_hand_updater;
select realtime.grant_access('realtime_later');
"""

# (pattern, replacement) for what differs between two databases' dumps and is no schema.
NORMALISE = [
    (r"^(SELECT pg_catalog\.binary_upgrade_set_next_|\\(un)?restrict |-- Dumped (from|by) ).*$", ""),
    (r"relfrozenxid = '\d+', relminmxid = '\d+'", "relfrozenxid = N, relminmxid = N"),
    (r"^WHERE oid = '\d+';$", "WHERE oid = N;"),
    # A sequence's value is data (binary upgrade dumps it even with --schema-only).
    (r"^SELECT pg_catalog\.setval\((.*), \d+, (true|false)\);$", r"SELECT pg_catalog.setval(\1, N);"),
]


@pytest.fixture
def make_database(pg_server: str) -> Iterator[Callable[[str], str]]:
    """Create empty databases (named after ``label``) on the suite's server; drop them after."""
    made: list[str] = []

    def make(label: str) -> str:
        name = f"t_{label}_{os.getpid()}_{len(made)}"
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(f"create database {name}")
        made.append(name)
        return with_dbname(pg_server, name)

    yield make
    with psycopg.connect(pg_server, autocommit=True) as admin:
        for name in made:
            admin.execute(f"drop database if exists {name} with (force)")


def schema_dump(dsn: str) -> str:
    """The schema of a database, the extension's members included, normalised for comparison.

    A plain pg_dump leaves an extension's members to CREATE EXTENSION; --binary-upgrade (what
    pg_upgrade uses) writes every member out, with its privileges and its membership. What varies
    between two databases and is no part of a schema (object ids, frozen xids, sequence values,
    the dump's own header and restrict key) is taken out.
    """
    out = subprocess.run(
        [str(pg_bindir() / "pg_dump"), "--schema-only", "--binary-upgrade", "--no-comments", "--dbname", dsn],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    for pattern, replacement in NORMALISE:
        out = re.sub(pattern, replacement, out, flags=re.MULTILINE)
    return re.sub(r"\n{3,}", "\n\n", out)


def comments(dsn: str) -> list[tuple[str, str]]:
    """Every comment on an object of the realtime schema (pg_dump --binary-upgrade drops them)."""
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            """select pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description
               from pg_description d
               join pg_depend e on e.classid = d.classoid and e.objid = d.objoid and e.deptype = 'e'
               join pg_extension x on x.oid = e.refobjid and x.extname = 'realtime'
               union all
               select pg_describe_object(d.classoid, d.objoid, d.objsubid), d.description
               from pg_description d
               where d.classoid = 'pg_class'::regclass and d.objsubid > 0
                 and d.objoid = 'realtime.messages'::regclass
               order by 1"""
        ).fetchall()


def assert_same_schema(upgraded: str, fresh: str) -> None:
    before, after = schema_dump(fresh), schema_dump(upgraded)
    diff = "\n".join(
        difflib.unified_diff(
            before.splitlines(),
            after.splitlines(),
            "fresh install of the current version",
            "0.1.0 + ALTER EXTENSION UPDATE",
            n=2,
            lineterm="",
        )
    )
    assert not diff, (
        "the upgrade script (sql/realtime--0.1.0--0.2.0.sql) leaves a schema that differs from a"
        " fresh install; lines with '-' are missing after the upgrade, '+' are left over:\n" + diff
    )
    missing = sorted(set(comments(fresh)) - set(comments(upgraded)))
    extra = sorted(set(comments(upgraded)) - set(comments(fresh)))
    assert (missing, extra) == ([], []), f"comments the upgrade misses: {missing}; left over: {extra}"


def version(dsn: str) -> str:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("select extversion from pg_extension where extname = 'realtime'").fetchone()
    assert row is not None
    return str(row[0])


async def test_upgrade_from_0_1_0_matches_a_fresh_install_and_keeps_messages(
    make_database: Callable[[str], str],
) -> None:
    make = make_database
    upgraded, fresh = make("upgraded"), make("fresh")

    with psycopg.connect(upgraded, autocommit=True) as conn:
        # Present at install, they get 0.1.0's grants (UPDATE, and the sequence), which the upgrade
        # takes back; with grant_access() after the install, as the sidecar does.
        ensure_supabase_roles(conn)
        conn.execute("create extension realtime version '0.1.0'")
        for role in ("anon", "authenticated", "service_role"):
            conn.execute("select realtime.grant_access(%s)", (role,))
        conn.execute(LATER_GRANTS)
        # A partition that 0.1.0's maintain() made at run time, not its install script.
        latest = partition_name(utc_today(conn) + dt.timedelta(days=3))
        drop_partition(conn, latest)
        assert [r[0] for r in conn.execute("select realtime.maintain()")] == [f"created {latest}"]
        since = conn.execute("select (extract(epoch from now()) * 1000)::bigint").fetchone()
        with conn.transaction():
            conn.execute("""select realtime.send('{"n": 1}', 'before', 'room')""")
            conn.execute("""select realtime.send('{"n": 2}', 'before', 'room')""")
            conn.execute("select realtime.send_binary('\\x0102', 'before', 'room')")
    assert version(upgraded) == "0.1.0"

    with psycopg.connect(upgraded, autocommit=True) as conn:
        conn.execute("alter extension realtime update")
        conn.execute("""select realtime.send('{"n": 3}', 'after', 'room')""")
    assert version(upgraded) == "0.2.0"

    with psycopg.connect(fresh, autocommit=True) as conn:
        conn.execute("create extension realtime")
        for role in ("anon", "authenticated", "service_role"):
            conn.execute("select realtime.grant_access(%s)", (role,))
        conn.execute(LATER_GRANTS)
        # The same run-time partition, so that both databases have made the same ones.
        drop_partition(conn, latest)
        conn.execute("select realtime.maintain()")

    assert_same_schema(upgraded, fresh)
    with psycopg.connect(upgraded) as conn:
        granted = conn.execute(
            """select has_table_privilege('authenticated', 'realtime.messages', 'update'),
                      has_sequence_privilege('authenticated', 'realtime.messages_seq', 'usage'),
                      has_table_privilege('realtime_later', 'realtime.messages', 'update'),
                      has_table_privilege('realtime_hand_updater', 'realtime.messages', 'update')"""
        ).fetchone()
    assert granted == (False, False, False, True)

    assert since is not None
    async with await psycopg.AsyncConnection.connect(upgraded) as conn:
        rows = await replay(conn, "room", int(since[0]) - DAY_MS, 10)
    # Stored before the upgrade, in their order, then one sent after it.
    got = [
        (r.event, json.loads(r.payload) if r.payload is not None else None, r.binary_payload) for r in rows
    ]
    assert got == [
        ("before", {"n": 1, "id": str(rows[0].id)}, None),
        ("before", {"n": 2, "id": str(rows[1].id)}, None),
        ("before", None, b"\x01\x02"),
        ("after", {"n": 3, "id": str(rows[3].id)}, None),
    ]
