"""The commit-safe reader: every committed row of realtime.messages, once, no replication.

The same statement reads realtime.presence_events (presence changes, see ``tracker.py``) with
the same rule and snapshot, so messages and presence changes arrive in one commit order.

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

Waiting. On a primary, ``pg_current_snapshot()`` changes exactly when a transaction that had
an xid ends (PostgreSQL reuses the cached snapshot until then), so an unchanged snapshot means
nothing new can be visible. The reader's own backend watches it: one call of a temporary
plpgsql function looks every 1.1 ms (every 5 ms after a second without messages), makes the read as
soon as the snapshot moved, or returns unchanged after a second without reading. A commit is
seen within 1.1 ms with no round trip per look; looking costs the backend 2.3% of a
core while messages flow and under 1% while idle, where waking this process to ask would cost
several times that. After a read of 8 rows or more, or of nothing new, the next read starts a
poll interval later, so rows that commit together are read together; after a smaller read,
sooner. Where the role may not create temporary functions, the reader probes from here
every poll interval (both statements prepared, the read with a generic plan) and reads when
the probe saw the snapshot move.

Pausing. While nothing here wants messages (no channel joined, nothing the diagnostics watch)
every message would reach nobody, so the reader reads nothing: it drops its snapshot (what
commits while nobody listens is history, as with Supabase's replication that stops without
users) and checks once a second that the server is still a primary. A join resumes it before
the channel is answered: the reader takes a fresh snapshot, so whatever commits after the join
reply is read. The database then does no work for the sidecar at all, and writers keep every
core to themselves.

Where it must not run. On a hot standby ``pg_current_snapshot()`` has an empty in-progress
list (during recovery PostgreSQL keeps every running xid in the snapshot's subxip array), so
the rule above would skip the rows of a transaction that was open while a later one
committed. The reader refuses a server in recovery: it stays down, says why, reads nothing,
and checks again (a promoted standby is then read like any primary).

A different server behind the same URL. After a failover to an asynchronous standby,
transaction ids the old primary had issued can be issued again, so S from the old server
could hide new rows. On every connection the reader compares the server's identity (system
identifier, timeline, postmaster start) with the one it read before, and while connected it
watches for the snapshot going backwards. When the server changed (or restarted, which after
a crash with asynchronous commits can reuse xids too) it makes one catch-up read: the rows the
xid rule selects (same system only), plus every row inserted since shortly before the last
read of the old server, minus the ids it delivered in that span. Rows of the new server's
transactions cannot be older than that, since they began after the promotion.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import psycopg

from . import stream_queries
from .logs import first_line
from .presence import PresenceEvent
from .rows import Row
from .stream_queries import replay

log = logging.getLogger(__name__)

#: How far before the last read of the old server the catch-up read looks (clock skew between
#: the sidecar and the database, a brief overlap of old and new primary); delivered ids are
#: remembered for twice as long so that the catch-up never repeats one.
CATCH_UP_WINDOW_S = 5.0

#: How long the reader's backend sleeps between two looks at the snapshot while things happen.
#: pg_sleep() waits in whole milliseconds and waits again while its deadline is not reached; asked
#: for exactly 1 ms it wakes a hair early and sleeps a second millisecond (measured: 2.08 ms per
#: pg_sleep(0.001), 1.10 ms per pg_sleep(0.0009)). Just under a millisecond, a commit is seen
#: within 1.1 ms (0.55 ms on average); looking costs the backend 2.3% of a core (1.3% at 2.1 ms).
ACTIVE_STEP_S = 0.0009

#: After this long without a message (other commits do not count), the backend looks at its idle
#: step.
IDLE_AFTER_S = 1.0

#: How often it looks when nothing has changed for a while: the first message after a silence
#: waits half a step on average. Measured with a channel joined and nothing sent: the backend at
#: 0.8% of a core (0.65% at 10 ms, 0.9% at 3 ms), since a wait that times out unchanged skips
#: the read.
IDLE_STEP_S = 0.005

#: A read that returned this many rows or more is followed by the whole poll interval before the
#: next one, so that under load the rows that commit meanwhile are read together; after a smaller
#: read the pause shrinks in proportion, so that at moderate rates a commit is read as soon as it
#: is seen (a read that found nothing new is followed by the whole interval, see _read_pause()).
#: Measured at 1,000 msg/s to 1,000 subscribers: p50 2.2 -> 1.5 ms against a fixed 2 ms pause; at
#: the writers' full speed the reads stay full and the pause whole.
FULL_READ_ROWS = 8

#: The longest a wait in the database lasts before this process looks up again.
IDLE_WAIT_S = 1.0

#: How often a server in recovery is checked again.
STANDBY_RECHECK_S = 1.0

#: How long a join waits for a paused reader to take up reading before it is answered anyway.
RESUME_TIMEOUT_S = 2.0


class StreamState(StrEnum):
    STARTING = "starting"
    LIVE = "live"
    DOWN = "down"
    STOPPED = "stopped"


RowsHandler = Callable[[list[Row]], None]
PresenceHandler = Callable[[list[PresenceEvent]], None]


@dataclass(frozen=True, slots=True)
class ServerIdentity:
    """What tells one PostgreSQL server (and one run and history of it) from another."""

    system_identifier: str
    timeline: int
    started_at: float

    def change_from(self, previous: ServerIdentity) -> str | None:
        """Why ``previous`` and this are not the same server history (None: they are)."""
        if self.system_identifier != previous.system_identifier:
            return "system_identifier"
        if self.timeline != previous.timeline:
            return "timeline"
        return None


class StandbyRefused(Exception):
    """The server is in recovery: the commit-safe cursor would lose rows there."""


STANDBY_REASON = (
    "the database is a hot standby (in recovery): pg_current_snapshot() lists no in-progress "
    "transactions there, so rows would be lost; point the database URL at the primary"
)


def snapshot_xmax(snapshot: str) -> int:
    """xmax of a pg_snapshot in text form (``xmin:xmax:xip,...``)."""
    return int(snapshot.split(":", 2)[1])


class MessageStream:
    """Polls realtime.messages with the commit-safe cursor and hands batches to ``on_rows``."""

    def __init__(
        self,
        dsn: str,
        on_rows: RowsHandler,
        on_presence: PresenceHandler | None = None,
        poll_interval: float = 0.002,
        on_state: Callable[[StreamState, str], None] | None = None,
        max_backoff: float = 5.0,
        catch_up_window: float = CATCH_UP_WINDOW_S,
        idle_wait: float = IDLE_WAIT_S,
        idle_after: float = IDLE_AFTER_S,
        idle_step: float = IDLE_STEP_S,
        wanted: Callable[[], bool] | None = None,
    ) -> None:
        self.dsn = dsn
        self.on_rows = on_rows
        self.on_presence: PresenceHandler = on_presence or _ignore_presence
        self.poll_interval = poll_interval
        self.idle_wait = idle_wait
        self.idle_after = idle_after
        self.idle_step = idle_step
        self.on_state = on_state
        self.max_backoff = max_backoff
        self.catch_up_window = catch_up_window
        #: Whether anything wants messages now; while not, the reader pauses (see the module).
        self.wanted: Callable[[], bool] = wanted or _always
        #: Paused: no snapshot is kept, nothing is read; a join calls resume().
        self.paused = False
        self.pauses = 0
        self._demand = asyncio.Event()
        self._reading = asyncio.Event()
        self.state = StreamState.STARTING
        self.reason = "starting"
        self.snapshot: str | None = None
        self.identity: ServerIdentity | None = None
        #: Reads that found the snapshot changed, polls that found it unchanged (probes from here,
        #: or waits in the database that ended unchanged), and reads that waited in the database.
        self.reads = 0
        self.probes = 0
        self.waits = 0
        #: Rows and presence events the last read returned (0 when the snapshot had not moved).
        self.last_read_rows = 0
        #: Changes of the server behind the URL, by cause (system_identifier, timeline,
        #: snapshot_backwards), and catch-up reads made for any reason (these and restarts).
        self.failovers: dict[str, int] = {}
        self.catch_ups = 0
        self.refusals = 0
        #: Whether the reads include realtime.presence_events (the role may read them).
        self.reads_presence = False
        self._warned_presence = False
        self._warned_wait = False
        self._last_read_at = 0.0  # wall clock of the last successful read
        self._delivered: deque[tuple[float, Sequence[str]]] = deque()
        self._stopping = asyncio.Event()
        self._sleeper: asyncio.Future[None] | None = None

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
        self._demand.set()
        if self._sleeper is not None and not self._sleeper.done():
            self._sleeper.set_result(None)

    async def run(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.dsn,
                    autocommit=True,
                    application_name="pg-realtime stream",
                    # Prepare every statement at its first use: the probe and the read run hundreds
                    # of times a second on this connection of our own (never through a pooler).
                    prepare_threshold=0,
                    connect_timeout=5,
                )
            except (psycopg.OperationalError, OSError) as exc:
                self._set_state(StreamState.DOWN, f"database unreachable: {first_line(exc)}")
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            try:
                async with conn:
                    await self._start(conn)
                    backoff = 0.1
                    await self._poll(conn)
            except StandbyRefused:
                self.refusals += 1
                if self.reason != STANDBY_REASON:
                    log.error("ReadFromStandbyRefused: %s", STANDBY_REASON)
                self._set_state(StreamState.DOWN, STANDBY_REASON)
                await self._sleep(STANDBY_RECHECK_S)
            except (psycopg.OperationalError, psycopg.errors.AdminShutdown, OSError) as exc:
                self._set_state(StreamState.DOWN, f"database connection lost: {first_line(exc)}")
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
            except psycopg.Error as exc:
                # Not a connection problem (the extension missing, a permission): keep retrying
                # slowly, and say why on /healthz.
                self._set_state(StreamState.DOWN, f"cannot read realtime.messages: {first_line(exc)}")
                log.error("stream read failed: %s", exc)
                await self._sleep(self.max_backoff)
        self._set_state(StreamState.STOPPED, "stopped")

    async def _start(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Check who the server is; on a changed or restarted one, catch up before polling."""
        # A generic plan: the read's parameters never change its best plan (an xid index lookup per
        # partition), and a custom plan would be planned again at every read. Without the values the
        # planner guesses a third of the rows for `xid >= $1` and could pick a sequential scan of
        # each partition; the read is always an index lookup, so sequential scans are off here.
        await conn.execute("set plan_cache_mode = force_generic_plan")
        await conn.execute("set enable_seqscan = off")
        cur = await conn.execute(stream_queries.READS_PRESENCE)
        allowed = await cur.fetchone()
        self.reads_presence = bool(allowed and allowed[0])
        if not self.reads_presence and not self._warned_presence:
            self._warned_presence = True
            log.warning(
                "PresenceUnavailable: this role may not read realtime.presence_events, so presence "
                "is off; run realtime.grant_sidecar() for it"
            )
        identity = await self._identity(conn)
        previous, self.identity = self.identity, identity
        if self.snapshot is None:
            # The first snapshot (or the first after a pause) is where news starts: rows committed
            # before it are history.
            await self._fresh_snapshot(conn)
            return
        if previous is None:
            return
        change = identity.change_from(previous)
        if change is not None:
            self._count_failover(change)
            log.warning(
                "DatabaseChanged: the server behind the database URL changed (%s: %s -> %s); "
                "catching up from %.0f s before the last read",
                change,
                _describe(previous, change),
                _describe(identity, change),
                self.catch_up_window,
            )
            await self._catch_up(conn, same_system=change != "system_identifier")
        elif identity.started_at != previous.started_at:
            # A restart: after a crash, xids of asynchronously committed transactions can come again.
            log.info("database restarted; catching up from %.0f s before the last read", self.catch_up_window)
            await self._catch_up(conn, same_system=True)

    async def _identity(self, conn: psycopg.AsyncConnection[Any]) -> ServerIdentity:
        cur = await conn.execute(stream_queries.IDENTITY)
        row = await cur.fetchone()
        assert row is not None
        system_identifier, in_recovery, started_at, walfile = row
        if in_recovery:
            raise StandbyRefused()
        return ServerIdentity(str(system_identifier), int(str(walfile)[:8], 16), float(started_at))

    async def _fresh_snapshot(self, conn: psycopg.AsyncConnection[Any]) -> None:
        cur = await conn.execute(stream_queries.PROBE)
        first = await cur.fetchone()
        assert first is not None
        self.snapshot = str(first[0])
        self._last_read_at = time.time()
        self.paused = False
        self._reading.set()

    async def resume(self, timeout: float = RESUME_TIMEOUT_S) -> bool:
        """Have a paused reader take up reading; True once it reads from a fresh snapshot."""
        if not self.paused:
            return True
        if not self.wanted():
            return False  # nothing to read for: it stays paused
        self._demand.set()
        try:
            await asyncio.wait_for(self._reading.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def _pause(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Read nothing until something wants messages, then start from a fresh snapshot."""
        # Set in the same step as the check that nothing wants messages, so that a channel
        # registered from now on finds the reader paused and asks it to resume.
        self.paused = True
        self.pauses += 1
        self.snapshot = None
        self._reading.clear()
        self._set_state(StreamState.LIVE, "ok")
        log.debug("nothing wants messages: the reader pauses")
        while not self._stopping.is_set() and not self.wanted():
            self._demand.clear()
            try:
                await asyncio.wait_for(self._demand.wait(), self.idle_wait)
            except TimeoutError:
                # Still a primary, still the same server: a refusal must show on /healthz even
                # while nobody is joined.
                identity = await self._identity(conn)
                if self.identity is not None and (change := identity.change_from(self.identity)):
                    self._count_failover(change)
                    log.warning(
                        "DatabaseChanged: the server behind the database URL changed (%s) while the "
                        "reader was paused; it reads from a fresh snapshot when resumed",
                        change,
                    )
                self.identity = identity
                self._set_state(StreamState.LIVE, "ok")
        if not self._stopping.is_set():
            await self._fresh_snapshot(conn)
            log.debug("the reader resumes from %s", self.snapshot)

    def _count_failover(self, cause: str) -> None:
        self.failovers[cause] = self.failovers.get(cause, 0) + 1

    async def _catch_up(self, conn: psycopg.AsyncConnection[Any], same_system: bool) -> None:
        """One read of what the xid rule could miss on a changed server, without repeats."""
        assert self.snapshot is not None
        since = self._last_read_at - self.catch_up_window
        cur = await conn.execute(
            stream_queries.catch_up_statement(self.reads_presence),
            {"prev": self.snapshot, "same_system": same_system, "since": since},
        )
        records = await cur.fetchall()
        delivered = {row_id for _, ids in self._delivered for row_id in ids}
        found, found_events = stream_queries.split_records(records)
        rows = []
        for row in found:
            if row.id not in delivered:  # both halves of the read may return a row
                delivered.add(row.id)
                rows.append(row)
        events = []
        for event in found_events:
            if event.id not in delivered:
                delivered.add(event.id)
                events.append(event)
        self.catch_ups += 1
        self._deliver(rows, events)
        self.snapshot = records[0][0]
        self._last_read_at = time.time()

    def _deliver(self, rows: list[Row], events: list[PresenceEvent]) -> None:
        if rows:
            self.on_rows(rows)
        if events:
            self.on_presence(events)
        if rows or events:
            self._remember([row.id for row in rows] + [event.id for event in events])

    def _remember(self, ids: list[str]) -> None:
        """Keep the ids delivered lately, for the catch-up read to leave out."""
        now = time.time()
        delivered = self._delivered
        delivered.append((now, ids))
        horizon = now - 2 * self.catch_up_window
        while delivered and delivered[0][0] < horizon:
            delivered.popleft()

    async def _poll(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if await self._create_wait_read(conn):
            await self._poll_in_database(conn)
        else:
            await self._poll_from_here(conn)

    async def _poll_in_database(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Reads that wait in the database for something to finish: one round trip per read."""
        clock = time.monotonic
        cursor = conn.cursor()
        quiet_since = clock()
        while not self._stopping.is_set():
            if not self.wanted():
                await self._pause(conn)
                quiet_since = clock()
                continue
            started = clock()
            assert self.snapshot is not None
            # While messages flow the backend looks every 1.1 ms; after a second without any, at
            # the idle step, so that a database without messages costs next to nothing.
            step = ACTIVE_STEP_S if started - quiet_since < self.idle_after else self.idle_step
            await cursor.execute(stream_queries.WAIT_READ, (self.snapshot, self.idle_wait, step))
            records = await cursor.fetchall()
            if records[0][10]:
                self.waits += 1
            await self._take(records, conn)
            # Quiet means no messages: other transactions (this sidecar's lease renewals, the
            # application's own writes) move the snapshot too, and do not make the reader look
            # more often.
            if self.last_read_rows:
                quiet_since = clock()
            await self._sleep(self._read_pause() - (clock() - started))

    def _read_pause(self) -> float:
        """How long after the start of a read the next one may start.

        After a full read, or one that found nothing new (the snapshot moved for other
        transactions, which will keep moving it), the whole poll interval: rows arriving
        together are read together, and a busy database reads at most that often. After a
        smaller read, less in proportion, so that at moderate rates a commit is read as soon
        as it is seen (see FULL_READ_ROWS)."""
        if self.last_read_rows:
            return self.poll_interval * min(1.0, self.last_read_rows / FULL_READ_ROWS)
        return self.poll_interval

    async def _poll_from_here(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """Where the role may not create a temporary function: probe every poll interval."""
        # Not loop.time(): uvloop's is cached per loop iteration in whole milliseconds, which made
        # the pause miss the fan-out just done and stretched a 5 ms period to 6.5 ms (bench latency).
        clock = time.monotonic
        cursor = conn.cursor()
        changed = True  # read at once after (re)connecting
        read = stream_queries.read_statement(self.reads_presence)
        while not self._stopping.is_set():
            # Reads start every poll_interval: the time a read and its fan-out take comes out
            # of the pause, not on top of it (on top, it would stretch the wait for a new row
            # just when there is most to deliver).
            if not self.wanted():
                await self._pause(conn)
                changed = False
                continue
            started = clock()
            assert self.snapshot is not None
            if not changed:
                # While something changed at the last poll the probe would only cost a round trip.
                await cursor.execute(stream_queries.PROBE)
                probed = await cursor.fetchone()
                assert probed is not None
                changed = probed[0] != self.snapshot
                if not changed:
                    self._unchanged()
                    await self._sleep(self.poll_interval - (clock() - started))
                    continue
            await cursor.execute(read, {"prev": self.snapshot})
            changed = await self._take(await cursor.fetchall(), conn)
            await self._sleep(self.poll_interval - (clock() - started))

    async def _take(self, records: list[tuple[Any, ...]], conn: psycopg.AsyncConnection[Any]) -> bool:
        """Deliver a read's records and move the snapshot on; whether the snapshot changed."""
        assert self.snapshot is not None
        new_snapshot = records[0][0]
        if new_snapshot == self.snapshot:
            self.last_read_rows = 0
            self._unchanged()
            return False
        self.reads += 1
        self._set_state(StreamState.LIVE, "ok")
        rows, events = stream_queries.split_records(records)
        self.last_read_rows = len(rows) + len(events)
        # Deliver before advancing: if delivery raised, the same rows would come back.
        if rows or events:
            self._deliver(rows, events)
        if snapshot_xmax(new_snapshot) < snapshot_xmax(self.snapshot):
            # The same connection now reaches another server (a proxy in front of a failover).
            self._count_failover("snapshot_backwards")
            log.warning(
                "DatabaseChanged: the snapshot went backwards (%s -> %s); catching up",
                self.snapshot,
                new_snapshot,
            )
            await self._catch_up(conn, same_system=True)
            self.identity = await self._identity(conn)
        else:
            self.snapshot = new_snapshot
            self._last_read_at = time.time()
        return True

    def _unchanged(self) -> None:
        """A probe or a wait found the snapshot as it was: nothing new, and the reader is live."""
        self.probes += 1
        self._last_read_at = time.time()
        self._set_state(StreamState.LIVE, "ok")

    async def _create_wait_read(self, conn: psycopg.AsyncConnection[Any]) -> bool:
        """The wait-and-read function, where this role may create temporary objects."""
        try:
            await conn.execute("set statement_timeout = 0")
            await conn.execute(stream_queries.wait_read_function(self.reads_presence))
        except psycopg.errors.InsufficientPrivilege as exc:
            if not self._warned_wait:
                self._warned_wait = True
                log.warning(
                    "no wait in the database (%s): probing from here every poll interval", first_line(exc)
                )
            return False
        return True

    async def _sleep(self, seconds: float) -> None:
        """Pause, but end at once when the stream is stopped."""
        if self._stopping.is_set():
            return
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        loop = asyncio.get_running_loop()
        sleeper = self._sleeper = loop.create_future()
        handle = loop.call_later(seconds, _wake, sleeper)
        try:
            await sleeper
        finally:
            handle.cancel()
            self._sleeper = None


def _always() -> bool:
    return True


def _ignore_presence(events: list[PresenceEvent]) -> None:
    return None


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _describe(identity: ServerIdentity, change: str) -> str:
    return identity.system_identifier if change == "system_identifier" else f"timeline {identity.timeline}"


__all__ = ["MessageStream", "Row", "RowsHandler", "StreamState", "replay"]
