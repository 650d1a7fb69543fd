"""The reader's statements, and how their records become rows (see ``stream.py`` for the rules).

Each read is one statement: the statement's own snapshot, and the rows of every part in (xid,
seq) order. A part selects one table's rows by the xid rule against the previous snapshot; the
messages and, where the reader's role may read them, the presence events are read together.
"""

from __future__ import annotations

from typing import Any

import psycopg

from .presence import PresenceEvent
from .rows import Row

PROBE = "select pg_current_snapshot()::text"


# Who the server is. pg_walfile_name() names the current timeline, but only outside recovery.
IDENTITY = """
select (select system_identifier from pg_control_system())::text,
       pg_is_in_recovery(),
       extract(epoch from pg_postmaster_start_time())::float8,
       case when pg_is_in_recovery() then null else pg_walfile_name(pg_current_wal_lsn()) end
"""

_COLUMNS = """cur.snap::text, m.id::text, m.topic, m.event, m.private, m.payload::text, m.binary_payload,
       extract(epoch from m.inserted_at)::float8, m.presence, m.xid::text"""
_ROW = """msg.id, msg.topic, msg.event, msg.private, msg.payload, msg.binary_payload,
           msg.inserted_at, msg.xid, msg.seq, false as presence"""
# A presence event in a message's columns: its diff as the payload, ``presence`` true.
_PRESENCE_ROW = """pe.id, pe.topic, null::text, pe.private,
           pg_catalog.jsonb_build_object('joins', pe.joins, 'leaves', pe.leaves), null::bytea,
           pe.inserted_at, pe.xid, pe.seq, true"""


def _statement(parts: list[str], extra: str = "") -> str:
    """One read: the statement's snapshot, and the rows of every part in (xid, seq) order."""
    union = "\n    union all\n".join(f"({part})" for part in parts)
    return f"""
with cur as materialized (select pg_current_snapshot() as snap)
select {_COLUMNS}{extra}
from cur
left join lateral (
    {union}
) as m on true
order by m.xid, m.seq
"""


# Two halves (xid >= xmax(S); xid in xip(S)), disjoint since every xid in xip(S) is below xmax(S):
# each is an index range or lookup by itself, which a generic plan keeps (an OR of the two may not).
_AFTER_XMAX = """select {row}
     from realtime.{table} as {alias}
     where {alias}.xid >= pg_snapshot_xmax({prev})
       and pg_visible_in_snapshot({alias}.xid, cur.snap)"""
_IN_XIP = """select {row}
     from realtime.{table} as {alias}
     where {alias}.xid = any(array(select pg_snapshot_xip({prev})))
       and pg_visible_in_snapshot({alias}.xid, cur.snap)"""
# After the server changed: the xid rule against the old snapshot where xids still mean the same
# transactions (same system), and every row inserted since ``since`` (a scan of the partitions
# from then on, once per failover); the caller drops repeats and the ids it has delivered already.
_SAME_SYSTEM = """select {row}
     from realtime.{table} as {alias}
     where %(same_system)s
       and ({alias}.xid >= pg_snapshot_xmax({prev})
            or {alias}.xid = any(array(select pg_snapshot_xip({prev}))))
       and pg_visible_in_snapshot({alias}.xid, cur.snap)"""
_SINCE = """select {row}
     from realtime.{table} as {alias}
     where {alias}.inserted_at >= to_timestamp(%(since)s) at time zone 'utc'
       and pg_visible_in_snapshot({alias}.xid, cur.snap)"""

#: The previous snapshot S, as the statement's parameter (the wait-and-read gives its variable).
_PREV_PARAMETER = "%(prev)s::pg_snapshot"

_MESSAGES = {"row": _ROW, "table": "messages", "alias": "msg"}
_PRESENCE = {"row": _PRESENCE_ROW, "table": "presence_events", "alias": "pe"}


def read_statement(presence: bool, prev: str = _PREV_PARAMETER, extra: str = "") -> str:
    sources = [_MESSAGES, _PRESENCE] if presence else [_MESSAGES]
    halves = (_AFTER_XMAX, _IN_XIP)
    return _statement([half.format(prev=prev, **source) for source in sources for half in halves], extra)


# The wait and the read in the reader's own backend, one statement: it looks at the snapshot every
# ``step`` seconds until it differs from the one given, then makes the read and returns its
# records; after ``timeout`` seconds unchanged it returns the given snapshot and no row. A backend
# looking at its snapshot in C costs a small fraction of this process waking up in Python to ask
# (measured: 2.3% of a core for a look every 1.1 ms), so the reader learns of a commit within a
# step without a round trip per look. Each statement of a volatile function takes a fresh
# snapshot, so every look sees what committed meanwhile, and the read is one statement as it is
# from here: its records carry the snapshot it was made in. The read keeps its plan across calls
# (PL/pgSQL caches it; the connection asks for generic plans). Each record also says whether the
# call waited (looked more than once): the reader counts those.
_WAIT_READ_FUNCTION = """
create function pg_temp.realtime_wait_read(prev text, timeout float8, step float8)
returns table (
    o_snap text, o_id text, o_topic text, o_event text, o_private boolean, o_payload text,
    o_binary_payload bytea, o_inserted_at float8, o_presence boolean, o_xid text, o_waited boolean
)
language plpgsql volatile as $$
declare
    v_prev pg_catalog.pg_snapshot := prev::pg_catalog.pg_snapshot;
    v_deadline timestamptz := pg_catalog.clock_timestamp() + pg_catalog.make_interval(secs => timeout);
    v_waited boolean := false;
    v_changed boolean;
begin
    loop
        v_changed := pg_catalog.pg_current_snapshot()::text <> prev;
        exit when v_changed or pg_catalog.clock_timestamp() >= v_deadline;
        -- An assignment, not PERFORM: PL/pgSQL evaluates it as a simple expression, where PERFORM
        -- would start and end an executor at every look.
        v_waited := pg_catalog.pg_sleep(step) is not null;
    end loop;
    if not v_changed then
        -- Timed out with the snapshot as it was: no transaction has ended, so the read could
        -- find nothing. The previous snapshot alone is the answer, in the record the read gives
        -- when it finds no row (the other columns null), and the read over every partition is
        -- spared once a second.
        o_snap := prev;
        o_waited := v_waited;
        return next;
        return;
    end if;
    return query {read};
end;
$$
"""
WAIT_READ = "select * from pg_temp.realtime_wait_read(%s, %s, %s)"


def wait_read_function(presence: bool) -> str:
    """The CREATE FUNCTION of the wait-and-read (see ``WAIT_READ``)."""
    read = read_statement(presence, prev="v_prev", extra=", v_waited")
    return _WAIT_READ_FUNCTION.replace("{read}", read.strip())


def catch_up_statement(presence: bool) -> str:
    sources = [_MESSAGES, _PRESENCE] if presence else [_MESSAGES]
    halves = (_SAME_SYSTEM, _SINCE)
    return _statement([half.format(prev=_PREV_PARAMETER, **source) for source in sources for half in halves])


# The reader's role may read the presence events (the owner's, or one given realtime.grant_sidecar()):
# without, it reads the messages alone, and presence is off.
READS_PRESENCE = "select has_table_privilege('realtime.presence_events', 'select')"

# The replay of a private channel's join: the newest messages of one topic since a time, in
# the order the reader would have delivered them. It reads history, not news, so it does not
# touch the reader's snapshot; it runs on a pool connection, in a transaction rolled back.
REPLAY = """
select id::text, topic, event, private, payload::text, binary_payload,
       extract(epoch from inserted_at)::float8
from (
    select id, topic, event, private, payload, binary_payload, inserted_at, xid, seq
    from realtime.messages
    where topic = %(topic)s and private is true and extension = 'broadcast'
      and inserted_at >= to_timestamp(%(since)s / 1000.0) at time zone 'utc'
      and inserted_at < timezone('utc', now()) + interval '1 minute'
    order by inserted_at desc, xid desc, seq desc
    limit %(limit)s
) as newest
order by inserted_at, xid, seq
"""


def row_of(r: Any, at: int = 0) -> Row:
    """A Row from the seven columns of a record that start at ``at``."""
    binary = r[at + 5]
    return Row(
        id=r[at],
        topic=r[at + 1],
        event=r[at + 2],
        private=r[at + 3],
        payload=r[at + 4],
        binary_payload=bytes(binary) if binary is not None else None,
        inserted_at=r[at + 6],
    )


async def replay(conn: psycopg.AsyncConnection[Any], subtopic: str, since_ms: int, limit: int) -> list[Row]:
    """The newest ``limit`` private messages of ``subtopic`` inserted since ``since_ms`` (epoch ms)."""
    cur = await conn.execute(REPLAY, {"topic": subtopic, "since": since_ms, "limit": limit})
    return [row_of(r) for r in await cur.fetchall()]


def split_records(records: list[tuple[Any, ...]]) -> tuple[list[Row], list[PresenceEvent]]:
    """The messages and the presence events of a read's records."""
    rows = [row_of(r, 1) for r in records if r[1] is not None and not r[8]]
    # Most reads hold messages only, or nothing (one record, of the snapshot alone): no second pass.
    if len(rows) == len(records) or (len(records) == 1 and records[0][1] is None):
        return rows, []
    events = [
        PresenceEvent(r[1], r[2], r[4], r[5], int(r[9]), r[7]) for r in records if r[1] is not None and r[8]
    ]
    return rows, events
