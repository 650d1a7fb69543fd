"""The extension's objects, privileges and documentation; installing where Supabase's roles do not exist."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from collections.abc import Callable

import psycopg
import pytest
from pg_realtime.embedded import EmbeddedPostgres, pg_bindir
from psycopg.conninfo import make_conninfo

from tests.harness import scalar

from .conftest import Notices, count, drop_partition, partition_name, partitions, utc_today

DAY = dt.timedelta(days=1)

# Supabase's columns, in Supabase's order, then the two the commit-safe reader needs.
EXPECTED_COLUMNS = [
    ("topic", "text", True, None),
    ("extension", "text", True, None),
    ("payload", "jsonb", False, None),
    ("event", "text", False, None),
    ("private", "boolean", False, "false"),
    ("updated_at", "timestamp without time zone", True, "timezone('utc'::text, now())"),
    ("inserted_at", "timestamp without time zone", True, "timezone('utc'::text, now())"),
    ("id", "uuid", True, "gen_random_uuid()"),
    ("binary_payload", "bytea", False, None),
    ("xid", "xid8", True, "pg_current_xact_id()"),
    ("seq", "bigint", True, None),  # an identity, by default (see test_messages_table)
]

EXPECTED_FUNCTIONS = {
    "send": "payload jsonb, event text, topic text, private boolean DEFAULT true",
    "send_binary": "payload bytea, event text, topic text, private boolean DEFAULT true",
    "broadcast_changes": (
        "topic_name text, event_name text, operation text, table_name text, table_schema text,"
        " new record, old record, level text DEFAULT 'ROW'::text"
    ),
    "broadcast_changes_statement": "",
    "topic": "",
    "message_id": "",
    "insert_needs_guard": "topic text, private boolean, payload_size integer",
    "insert_refusal": "topic text",
    "topic_mistake": "topic text",
    "send_goes_straight": "payload jsonb, topic text, private boolean",
    "topic_set": "topic text",
    "maintain": "retention interval DEFAULT '3 days'::interval, premake integer DEFAULT 3",
    "grant_access": "role_name name",
    "messages_partitions": "",
    "bus_slot": "",
    "bus_rotate": "",
    "sidecar_renew": (
        "p_id uuid, p_name text, p_address text, p_started_at timestamp with time zone, p_lease interval"
    ),
    "sidecar_leave": "p_id uuid",
    "grant_sidecar": "role_name name",
    "presence_record": "p_sidecar uuid, p_left jsonb, p_joined jsonb",
    "presence_write": "p_sidecar uuid, p_untrack text[], p_track jsonb, p_replace boolean",
    "presence_reap": "p_sidecars uuid[]",
}


def maintain_actions(conn: psycopg.Connection) -> list[str]:
    return [r[0] for r in conn.execute("select realtime.maintain()")]


def test_messages_columns(db: psycopg.Connection) -> None:
    columns = db.execute(
        """select a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                  pg_get_expr(d.adbin, d.adrelid)
           from pg_attribute a left join pg_attrdef d on d.adrelid = a.attrelid and d.adnum = a.attnum
           where a.attrelid = 'realtime.messages'::regclass and a.attnum > 0 and not a.attisdropped
           order by a.attnum"""
    ).fetchall()
    assert columns == EXPECTED_COLUMNS


def test_messages_table(db: psycopg.Connection) -> None:
    relation = db.execute(
        """select c.relkind, c.relrowsecurity, c.relforcerowsecurity, pg_get_partkeydef(c.oid)
           from pg_class c where c.oid = 'realtime.messages'::regclass"""
    ).fetchone()
    assert relation == ("p", True, False, "RANGE (inserted_at)")
    # The extension's own policies are restrictive guards of what a writer under row-level
    # security may choose; who may read and write is left to the database's owner.
    policies = db.execute(
        "select polname::text, polpermissive, polcmd, pg_get_expr(polwithcheck, polrelid) from pg_policy"
        " where polrelid = 'realtime.messages'::regclass order by polname"
    ).fetchall()
    assert policies == [
        ("messages_inserted_at_is_now", False, "a", "(inserted_at = timezone('utc'::text, now()))"),
        (
            "messages_topic_is_realtime_topic",
            False,
            "a",
            "((realtime.topic() IS NULL) OR (topic = realtime.topic()))",
        ),
        ("messages_xid_is_the_writers", False, "a", "(xid = pg_current_xact_id())"),
    ]
    constraints: dict[str, str] = dict(
        db.execute(
            "select conname, pg_get_constraintdef(oid) from pg_constraint"
            " where conrelid = 'realtime.messages'::regclass and contype in ('p', 'c')"
        ).fetchall()
    )
    assert constraints == {
        "messages_pkey": "PRIMARY KEY (xid, seq, inserted_at)",
        "messages_payload_exclusive": "CHECK (((payload IS NULL) OR (binary_payload IS NULL)))",
    }
    indexes: dict[str, str] = dict(
        db.execute(
            "select c.relname, pg_get_indexdef(i.indexrelid) from pg_index i"
            " join pg_class c on c.oid = i.indexrelid where i.indrelid = 'realtime.messages'::regclass"
        ).fetchall()
    )
    assert indexes == {
        "messages_pkey": (
            "CREATE UNIQUE INDEX messages_pkey ON ONLY realtime.messages USING btree (xid, seq, inserted_at)"
        ),
        "messages_inserted_at_topic_index": (
            "CREATE INDEX messages_inserted_at_topic_index ON ONLY realtime.messages"
            " USING btree (inserted_at DESC, topic)"
            " WHERE ((extension = 'broadcast'::text) AND (private IS TRUE))"
        ),
    }
    default = db.execute(
        "select pg_get_expr(c.relpartbound, c.oid) from pg_class c"
        " where c.oid = 'realtime.messages_default'::regclass"
    ).fetchone()
    assert default == ("DEFAULT",)
    sequence = db.execute(
        "select s.seqtypid::regtype::text, s.seqcache, pg_get_serial_sequence('realtime.messages', 'seq')"
        " from pg_sequence s where s.seqrelid = 'realtime.messages_seq'::regclass"
    ).fetchone()
    assert sequence == ("bigint", 100, "realtime.messages_seq")
    # An identity, whose draws take no privilege on the sequence; BY DEFAULT. The partitions have
    # none of their own: rows are inserted through the parent.
    identities = db.execute(
        "select a.attrelid::regclass::text, a.attidentity from pg_attribute a"
        " where a.attname = 'seq' and a.attidentity <> ''"
        " and a.attrelid in (select oid from pg_class where relnamespace = 'realtime'::regnamespace)"
        " order by 1"
    ).fetchall()
    # The presence events' own seq is drawn by the sidecar alone: ALWAYS.
    assert identities == [("realtime.messages", "d"), ("realtime.presence_events", "a")]


def test_function_signatures(db: psycopg.Connection) -> None:
    functions = {
        name: (args, result, definer, language, volatility)
        for name, args, result, definer, language, volatility in db.execute(
            """select p.proname, pg_get_function_arguments(p.oid), pg_get_function_result(p.oid),
                      p.prosecdef, l.lanname, p.provolatile
               from pg_proc p join pg_language l on l.oid = p.prolang
               where p.pronamespace = 'realtime'::regnamespace"""
        )
    }
    assert {name: f[0] for name, f in functions.items()} == EXPECTED_FUNCTIONS
    assert functions["send"][1:] == ("void", False, "plpgsql", "v")
    assert functions["send_binary"][1:] == ("void", False, "plpgsql", "v")
    assert functions["broadcast_changes"][1:] == ("void", False, "plpgsql", "v")
    assert functions["broadcast_changes_statement"][1:] == ("trigger", False, "plpgsql", "v")
    assert functions["topic"][1:] == ("text", False, "sql", "s")
    # The helpers of the send path are LANGUAGE sql, so that the planner inlines them.
    assert functions["message_id"][1:] == ("uuid", False, "sql", "v")
    assert functions["insert_needs_guard"][1:] == ("boolean", False, "sql", "s")
    assert functions["insert_refusal"][1:] == ("text", False, "sql", "s")
    assert functions["topic_mistake"][1:] == ("text", False, "sql", "s")
    assert functions["send_goes_straight"][1:] == ("boolean", False, "sql", "s")
    assert functions["topic_set"][1:] == ("text", False, "sql", "v")
    assert functions["maintain"][1:] == ("SETOF text", True, "plpgsql", "v")
    config = scalar(
        db, "select proconfig from pg_proc where oid = 'realtime.maintain(interval, integer)'::regprocedure"
    )
    assert "search_path=pg_catalog, pg_temp" in config


@pytest.mark.parametrize(
    "call",
    [
        "realtime.message_id()",
        "realtime.insert_needs_guard(t, true, 10)",
        "realtime.insert_refusal(t)",
        "realtime.topic_mistake(t)",
        "realtime.send_goes_straight('{}', t, true)",
        "realtime.topic_set(t)",
    ],
)
def test_send_path_helpers_are_inlined(db: psycopg.Connection, call: str) -> None:
    # A LANGUAGE sql function that PostgreSQL does not inline is parsed and planned again in
    # every transaction that calls it from send(): a third of a one-send transaction's time.
    # Not a constant argument, which the planner would fold away inlined or not.
    rows = db.execute(
        f"explain (verbose, costs off) select {call}"
        " from generate_series(1, 2) as g, lateral (select 'room' || g as t) as v"
    )
    plan = "\n".join(r[0] for r in rows)
    assert call.split("(", 1)[0] not in plan, plan


def test_privileges(db: psycopg.Connection) -> None:
    for role in ("anon", "authenticated", "service_role"):
        granted = db.execute(
            """select has_table_privilege(%(r)s, 'realtime.messages', 'select'),
                      has_table_privilege(%(r)s, 'realtime.messages', 'insert'),
                      has_table_privilege(%(r)s, 'realtime.messages', 'update'),
                      has_table_privilege(%(r)s, 'realtime.messages', 'delete'),
                      has_sequence_privilege(%(r)s, 'realtime.messages_seq', 'usage'),
                      has_table_privilege(%(r)s, 'realtime.messages_default', 'select'),
                      has_table_privilege(%(r)s, %(today)s, 'select')""",
            {"r": role, "today": partition_name(utc_today(db))},
        ).fetchone()
        assert granted == (True, True, False, False, False, False, False)
    db.execute("create role someone")
    executable: dict[str, bool] = dict(
        db.execute(
            "select p.proname, has_function_privilege('someone', p.oid, 'execute')"
            " from pg_proc p where p.pronamespace = 'realtime'::regnamespace"
        ).fetchall()
    )
    assert executable == {
        "send": True,
        "send_binary": True,
        "broadcast_changes": True,
        "broadcast_changes_statement": True,
        "topic": True,
        "message_id": True,
        "insert_needs_guard": True,
        "insert_refusal": True,
        "topic_mistake": True,
        "send_goes_straight": True,
        "topic_set": True,
        "messages_partitions": True,
        "maintain": False,
        "grant_access": False,
        "bus_slot": True,
        "bus_rotate": False,
        "sidecar_renew": False,
        "sidecar_leave": False,
        "grant_sidecar": False,
        "presence_record": False,
        "presence_write": False,
        "presence_reap": False,
    }
    assert db.execute("select has_schema_privilege('someone', 'realtime', 'usage')").fetchone() == (True,)
    for table in ("realtime.presences", "realtime.presence_events"):
        # Only the sidecars see presence: a client's role could otherwise read private topics' members.
        assert db.execute(
            "select has_table_privilege('someone', %s, 'select'), has_table_privilege('anon', %s, 'select')",
            (table, table),
        ).fetchone() == (False, False)
    assert db.execute("select has_table_privilege('someone', 'realtime.messages', 'select')").fetchone() == (
        False,
    )


def test_every_object_has_a_comment(db: psycopg.Connection) -> None:
    members = db.execute(
        """select pg_describe_object(d.classid, d.objid, 0),
                  obj_description(d.objid, d.classid::regclass::name)
           from pg_depend d
           where d.refclassid = 'pg_extension'::regclass and d.deptype = 'e'
             and d.refobjid = (select oid from pg_extension where extname = 'realtime')"""
    ).fetchall()
    names = {name for name, _ in members}
    # The schema, 14 functions, the statement helper's payload type, the table, its default
    # partition, its sequence, and the daily partitions; the cluster's 5 functions, the bus
    # attachments and their 3 partitions, the sidecar registry; presence's 3 functions, 2 tables
    # and the events' sequence.
    assert len(members) == 19 + 10 + 6 + len(partitions(db))
    assert {
        "schema realtime",
        "table realtime.messages",
        "table realtime.messages_default",
        "sequence realtime.messages_seq",
        "type realtime.change_payload",
    } <= names
    assert [name for name, comment in members if not comment] == []
    assert scalar(db, "select obj_description('realtime'::regnamespace, 'pg_namespace')")
    uncommented = db.execute(
        "select attname from pg_attribute where attrelid = 'realtime.messages'::regclass"
        " and attnum > 0 and not attisdropped and col_description(attrelid, attnum) is null"
    ).fetchall()
    assert uncommented == []


def test_dump_and_restore_is_clean(db: psycopg.Connection, db_dsn: str, pg_server: str) -> None:
    """pg_dump output restores with ON_ERROR_STOP: the partitions are left to CREATE EXTENSION."""
    today = utc_today(db)
    drop_partition(db, partition_name(today + 3 * DAY))
    assert maintain_actions(db) == [f"created {partition_name(today + 3 * DAY)}"]  # made after install
    db.execute("create table public.notes (id int primary key, body text)")
    db.execute("insert into public.notes values (1, 'kept')")
    db.execute("select realtime.send('{}', 'e', 'room')")
    bindir = pg_bindir()
    dump = subprocess.run(
        [str(bindir / "pg_dump"), "--dbname", db_dsn], check=True, capture_output=True, text=True
    ).stdout

    target = "t_restore_" + str(os.getpid())
    with psycopg.connect(pg_server, autocommit=True) as admin:
        admin.execute(f"create database {target}")
    try:
        target_dsn = make_conninfo(pg_server, dbname=target)
        restore = subprocess.run(
            [str(bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "--dbname", target_dsn],
            input=dump,
            check=False,
            capture_output=True,
            text=True,
        )
        assert restore.returncode == 0, restore.stderr
        assert "ERROR" not in restore.stderr
        with psycopg.connect(target_dsn, autocommit=True) as conn:
            assert conn.execute("select body from public.notes").fetchall() == [("kept",)]
            assert partitions(conn) == partitions(db)
            conn.execute("select realtime.send('{}', 'e', 'after-restore')")
            assert count(conn, "select count(*) from realtime.messages") == 1
    finally:
        with psycopg.connect(pg_server, autocommit=True) as admin:
            admin.execute(f"drop database {target}")


def test_install_without_supabase_roles_then_drop_and_recreate(
    fresh_cluster: Callable[[], EmbeddedPostgres],
) -> None:
    cluster = fresh_cluster()
    with psycopg.connect(cluster.dsn(), autocommit=True) as conn:
        assert count(conn, "select count(*) from pg_roles where rolname in ('anon', 'authenticated')") == 0
        conn.execute("create extension realtime")
        today = utc_today(conn)
        assert partition_name(today) in partitions(conn)
        acl = conn.execute("select relacl from pg_class where oid = 'realtime.messages'::regclass").fetchone()
        assert acl == (None,)  # only the owner's implicit rights

        # A role created after the install gets access from grant_access(); policies still decide.
        conn.execute("create role authenticated nologin")
        conn.execute("select realtime.grant_access('authenticated')")
        conn.execute(
            "create policy writers on realtime.messages for insert to authenticated"
            " with check (realtime.topic() like 'topic:%')"
        )
        notices = Notices(conn)
        conn.execute("set role authenticated")
        conn.execute("select realtime.send('{}', 'e', 'topic:1')")
        conn.execute("select realtime.send('{}', 'e', 'elsewhere')")
        conn.execute("reset role")
        assert conn.execute("select topic from realtime.messages").fetchall() == [("topic:1",)]
        assert len(notices.warnings) == 1

        conn.execute("drop extension realtime")
        leftovers = count(
            conn,
            "select (select count(*) from pg_class c join pg_namespace n on n.oid = c.relnamespace"
            "        where n.nspname = 'realtime')"
            " + (select count(*) from pg_proc p join pg_namespace n on n.oid = p.pronamespace"
            "    where n.nspname = 'realtime')",
        )
        assert leftovers == 0
        assert count(conn, "select count(*) from pg_policy where polname = 'writers'") == 0

        conn.execute("create extension realtime")
        assert partition_name(today) in partitions(conn)
        conn.execute("select realtime.send('{}', 'e', 'again')")
        assert conn.execute("select topic from realtime.messages").fetchall() == [("again",)]
        # The schema is a member, and the extension sits in pg_catalog (realtime.control names
        # it): PostgreSQL cannot make the schema that holds the extension one of its members.
        placement = conn.execute(
            """select e.extnamespace = 'realtime'::regnamespace,
                      exists (select from pg_depend d where d.classid = 'pg_namespace'::regclass
                              and d.objid = 'realtime'::regnamespace and d.refobjid = e.oid
                              and d.deptype = 'e')
               from pg_extension e where e.extname = 'realtime'"""
        ).fetchone()
        assert placement == (False, True)
