"""The commit-safe reader: every committed row of realtime.messages, once, no replication.

Each read is one statement that returns the statement's own snapshot S' together with
the rows whose writing transaction finished between the previous snapshot S and S':

* its xid is at or above xmax(S), or was in progress in S (xip(S)), and
* it is visible in S' (committed before S' was taken).

Visibility is decided by the statement's snapshot, so a row comes back exactly when its
transaction has committed, never when it rolled back, and a long transaction delays only
its own rows. Every xid finishes exactly once, so the sets of rows of successive reads are
disjoint: nothing is read twice even if a writer stored a forged xid. S lives in memory;
after a lost connection the next read resumes from it, so what committed meanwhile still
arrives. Within one read, rows are ordered by (xid, seq): a transaction that began after
another committed has the larger xid, and seq orders the rows of one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import psycopg

from .rows import Row

log = logging.getLogger(__name__)

_CURRENT_SNAPSHOT = "select pg_current_snapshot()::text"

_READ = """
with cur as materialized (select pg_current_snapshot() as snap)
select cur.snap::text, m.id::text, m.topic, m.event, m.private, m.payload::text, m.binary_payload,
       extract(epoch from m.inserted_at)::float8
from cur
left join lateral (
    select msg.id, msg.topic, msg.event, msg.private, msg.payload, msg.binary_payload,
           msg.inserted_at, msg.xid, msg.seq
    from realtime.messages as msg
    where (msg.xid >= pg_snapshot_xmax(%(prev)s::pg_snapshot)
           or msg.xid = any(array(select pg_snapshot_xip(%(prev)s::pg_snapshot))))
      and pg_visible_in_snapshot(msg.xid, cur.snap)
) as m on true
order by m.xid, m.seq
"""


# The replay of a private channel's join: the newest messages of one topic since a time, in
# the order the reader would have delivered them. It reads history, not news, so it does not
# touch the reader's snapshot; it runs on a pool connection, in a transaction rolled back.
_REPLAY = """
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


def _row(r: Any, at: int = 0) -> Row:
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
    cur = await conn.execute(_REPLAY, {"topic": subtopic, "since": since_ms, "limit": limit})
    return [_row(r) for r in await cur.fetchall()]


class StreamState(StrEnum):
    STARTING = "starting"
    LIVE = "live"
    DOWN = "down"
    STOPPED = "stopped"


RowsHandler = Callable[[list[Row]], None]


class MessageStream:
    """Polls realtime.messages with the commit-safe cursor and hands batches to ``on_rows``."""

    def __init__(
        self,
        dsn: str,
        on_rows: RowsHandler,
        poll_interval: float = 0.005,
        on_state: Callable[[StreamState, str], None] | None = None,
        max_backoff: float = 5.0,
    ) -> None:
        self.dsn = dsn
        self.on_rows = on_rows
        self.poll_interval = poll_interval
        self.on_state = on_state
        self.max_backoff = max_backoff
        self.state = StreamState.STARTING
        self.reason = "starting"
        self.snapshot: str | None = None
        self.reads = 0
        self._stopping = asyncio.Event()

    def _set_state(self, state: StreamState, reason: str) -> None:
        if state != self.state or reason != self.reason:
            self.state, self.reason = state, reason
            if self.on_state is not None:
                self.on_state(state, reason)

    @property
    def live(self) -> bool:
        return self.state is StreamState.LIVE

    def stop(self) -> None:
        self._stopping.set()

    async def run(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.dsn,
                    autocommit=True,
                    application_name="pg-realtime stream",
                    prepare_threshold=None,
                    connect_timeout=5,
                )
            except (psycopg.OperationalError, OSError) as exc:
                self._set_state(StreamState.DOWN, f"database unreachable: {_first_line(exc)}")
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            try:
                async with conn:
                    # The first snapshot is where news starts: rows committed before it are history.
                    if self.snapshot is None:
                        cur = await conn.execute(_CURRENT_SNAPSHOT)
                        first = await cur.fetchone()
                        assert first is not None
                        self.snapshot = str(first[0])
                    backoff = 0.1
                    await self._poll(conn)
            except (psycopg.OperationalError, psycopg.errors.AdminShutdown, OSError) as exc:
                self._set_state(StreamState.DOWN, f"database connection lost: {_first_line(exc)}")
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
            except psycopg.Error as exc:
                # Not a connection problem (the extension missing, a permission): keep retrying
                # slowly, and say why on /healthz.
                self._set_state(StreamState.DOWN, f"cannot read realtime.messages: {_first_line(exc)}")
                log.error("stream read failed: %s", exc)
                await self._sleep(self.max_backoff)
        self._set_state(StreamState.STOPPED, "stopped")

    async def _poll(self, conn: psycopg.AsyncConnection[Any]) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            # Reads start every poll_interval: the time a read and its fan-out take comes out
            # of the pause, not on top of it (on top, it would stretch the wait for a new row
            # just when there is most to deliver).
            started = loop.time()
            cur = await conn.execute(_READ, {"prev": self.snapshot})
            records = await cur.fetchall()
            self.reads += 1
            self._set_state(StreamState.LIVE, "ok")
            new_snapshot = records[0][0]
            rows = [_row(r, 1) for r in records if r[1] is not None]
            # Deliver before advancing: if delivery raised, the same rows would come back.
            if rows:
                self.on_rows(rows)
            self.snapshot = new_snapshot
            await self._sleep(self.poll_interval - (loop.time() - started))

    async def _sleep(self, seconds: float) -> None:
        """Pause, but end at once when the stream is stopped."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


__all__ = ["MessageStream", "Row", "RowsHandler", "StreamState", "replay"]
