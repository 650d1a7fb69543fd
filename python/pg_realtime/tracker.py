"""Presence across sidecars, kept in PostgreSQL: this sidecar's writes, and every sidecar's diffs.

Writes. A channel's track or untrack changes this sidecar's own list of presences at once and
queues the change; one writer sends what has queued as one batch, one transaction
(``realtime.presence_write()``), while the previous batch is in flight, so the batches grow with
the load and a lone track goes out at once. A track is answered once its batch has committed.
A batch that finds this sidecar no longer registered (its lease ran out and its presences were
removed, with leaves) registers again and writes every presence it holds anew, under new refs;
so does a renewal that finds the lease had lapsed.

Diffs. No presence is sent from here directly: every sidecar, this one included, learns of a
change by reading its event (``realtime.presence_events``) with the commit-safe read, in commit
order, and sends it to its subscribers as a ``presence_diff``. So every client sees the same
changes in the same order, and a client's state is the table's.

State. For a channel's ``presence_state`` the tracker loads the topic's presences once, with
the snapshot it read them in, and from then on folds each event into them while the topic has
subscribers here (see :mod:`pg_realtime.presence`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
import psycopg
from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import phoenix
from .channels import Channel, Frame, Registry
from .database import Database, DatabaseUnavailable
from .logs import RateLimitedLog, first_line
from .phoenix import Vsn
from .presence import PresenceEvent, PresenceSnapshot, TopicPresence, meta, new_ref
from .queries import Answer, PolicyFailed, Unavailable

log = logging.getLogger("pg_realtime")

_LOAD = """
select pg_current_snapshot()::text, p.ref, p.key, p.meta::text
from (select 1) as one
left join realtime.presences as p on p.topic = %s and p.private = %s
"""
_WRITE = "select realtime.presence_write(%s::uuid, %s::text[], %s::jsonb, %s)"

#: After a failed batch, the writer waits this long (doubling up to the maximum) to try again.
RETRY_S = 0.2
MAX_RETRY_S = 5.0


@dataclass(slots=True)
class LocalPresence:
    """A presence a channel on this sidecar tracks."""

    ref: str
    subtopic: str
    private: bool
    key: str
    meta: dict[str, Any]

    def row(self) -> dict[str, Any]:
        return {
            "ref": self.ref,
            "topic": self.subtopic,
            "private": self.private,
            "key": self.key,
            "meta": self.meta,
        }


class PresenceTracker:
    """This sidecar's presences and the presence state of the topics its clients are on."""

    def __init__(
        self,
        registry: Registry,
        database: Database,
        sidecar_id: str,
        register: Callable[[], Awaitable[None]],
    ) -> None:
        self.registry = registry
        self.database = database
        self.sidecar_id = sidecar_id
        #: Registers this sidecar (a renewal of its lease); called when a batch found it gone.
        self.register = register
        self.topics: dict[tuple[str, bool], TopicPresence] = {}
        self.local: dict[Channel, LocalPresence] = {}
        self._untrack: list[str] = []
        self._track: dict[str, LocalPresence] = {}
        self._waiters: list[asyncio.Future[Answer]] = []
        self._replace = False
        self._wake = asyncio.Event()
        self._stopping = False
        self._log = RateLimitedLog(log, period_s=30.0)
        #: Batches written, diffs sent, and re-registrations (for /metrics).
        self.batches = 0
        self.rewrites = 0
        registry.attach(self)

    # -- what the sessions ask ------------------------------------------------------------------
    async def track(self, channel: Channel, key: str, payload: dict[str, Any]) -> Answer:
        """Track ``payload`` for ``channel`` (an update if it tracks already); True once stored."""
        previous = self.local.get(channel)
        ref = new_ref()
        presence = LocalPresence(
            ref,
            channel.subtopic,
            channel.private,
            key,
            meta(payload, ref, previous.ref if previous else None),
        )
        if previous is not None:
            self._forget(previous.ref)
        self.local[channel] = presence
        self._track[ref] = presence
        waiter: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        self._wake.set()
        return await waiter

    def untrack(self, channel: Channel) -> None:
        """Stop tracking ``channel``'s presence (untrack, leave, close); written with the next batch."""
        presence = self.local.pop(channel, None)
        if presence is not None:
            self._forget(presence.ref)
            self._wake.set()

    def _forget(self, ref: str) -> None:
        # A track not yet sent is simply not sent; one sent is removed by the next batch.
        if self._track.pop(ref, None) is None:
            self._untrack.append(ref)

    def rejoined(self) -> None:
        """This sidecar's lease had run out (its presences are gone): write them all again."""
        self._replace = True
        self._wake.set()

    async def snapshot(self, subtopic: str, private: bool) -> Answer:
        """The presences of (subtopic, private) and the number of the last event they hold."""
        topic = self.topics.setdefault((subtopic, private), TopicPresence())
        if topic.refs is None:
            waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            topic.waiters.append(waiter)
            if topic.pending is None:
                topic.pending = []
                asyncio.get_running_loop().create_task(self._load(subtopic, private, topic))
            if not await waiter:
                return Unavailable("the presence state could not be read")
        return PresenceSnapshot(topic.state(), topic.seen)

    async def _load(self, subtopic: str, private: bool, topic: TopicPresence) -> None:
        try:
            # While the reader says the database is away, a join is answered now, not after the
            # pool's timeout.
            self.database.fail_fast()
            async with self.database.connection() as conn:
                cur = await conn.execute(_LOAD, (subtopic, private))
                records = await cur.fetchall()
                await conn.rollback()
        except (psycopg.Error, DatabaseUnavailable, OSError) as exc:
            self._log.log(
                logging.WARNING, "load", "presence state of %s not read: %s", subtopic, first_line(exc)
            )
            topic.pending = None
            waiters, topic.waiters = topic.waiters, []
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(False)
            return
        snapshot = records[0][0]
        topic.load(
            snapshot, ((ref, key, orjson.loads(value)) for _, ref, key, value in records if ref is not None)
        )
        if self.registry.count(subtopic, private) == 0 and self.topics.get((subtopic, private)) is topic:
            del self.topics[(subtopic, private)]
        waiters, topic.waiters = topic.waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(True)

    # -- the registry's key index: a topic's state is kept while it has subscribers here --------
    def added(self, subtopic: str, private: bool) -> None:
        return None

    def removed(self, subtopic: str, private: bool) -> None:
        topic = self.topics.get((subtopic, private))
        if topic is not None and topic.pending is None:
            del self.topics[(subtopic, private)]

    # -- what the reader found ------------------------------------------------------------------
    def events(self, events: list[PresenceEvent]) -> int:
        """Committed presence changes, in commit order: fold them in, send them as diffs."""
        delivered = 0
        registry = self.registry
        for event in events:
            key = (event.topic, event.private)
            topic = self.topics.get(key)
            if topic is None:
                if not registry.count(event.topic, event.private):
                    continue
                topic = self.topics[key] = TopicPresence()
            topic.seen += 1
            diff: dict[str, Any] | None = None
            if topic.pending is not None or topic.refs is not None:
                diff = orjson.loads(event.payload)
                if topic.pending is not None:
                    topic.pending.append((event.xid, diff))
                else:
                    topic.apply(diff)
            delivered += registry.presence_out(
                event.topic, event.private, _diff_encoder(event.topic, event.payload), topic.seen
            )
        return delivered

    # -- the writer ---------------------------------------------------------------------------
    async def run(self) -> None:
        delay = RETRY_S
        while not self._stopping:
            await self._wake.wait()
            self._wake.clear()
            while not self._stopping and (self._replace or self._untrack or self._track or self._waiters):
                replace = self._replace
                untrack, self._untrack = self._untrack, []
                if replace:
                    self._reref()
                    track = list(self.local.values())
                    self._track = {}
                else:
                    track = list(self._track.values())
                    self._track = {}
                waiters, self._waiters = self._waiters, []
                self._replace = False
                try:
                    written = await self._write(untrack, track, replace)
                except psycopg.Error as exc:
                    if isinstance(exc, psycopg.OperationalError) or replace:
                        written = None
                        error: Exception = exc
                    else:
                        self._refuse(untrack, track, waiters, exc)
                        continue
                except (DatabaseUnavailable, OSError) as exc:
                    written, error = None, exc
                if written is False:
                    # The lease ran out and the presences are gone: register, write them all again.
                    try:
                        await self.register()
                    except (psycopg.Error, DatabaseUnavailable, OSError) as exc:
                        written, error = None, exc
                    else:
                        self.rewrites += 1
                        self._replace = True
                        self._waiters[:0] = waiters
                        continue
                if written is None:
                    self._log.log(
                        logging.WARNING, "write", "presence batch not written: %s", first_line(error)
                    )
                    # Kept for the next try (writing a batch twice changes nothing the second time);
                    # the tracks waiting are answered now, so no client waits for the database.
                    self._untrack[:0] = untrack
                    if replace:
                        self._replace = True
                    else:
                        current = {presence.ref for presence in self.local.values()}
                        for presence in track:
                            if presence.ref in current:  # not untracked meanwhile
                                self._track.setdefault(presence.ref, presence)
                    for waiter in waiters:
                        if not waiter.done():
                            waiter.set_result(Unavailable(first_line(error)))
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, MAX_RETRY_S)
                    continue
                delay = RETRY_S
                self.batches += 1
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(True)

    def _refuse(
        self,
        untrack: list[str],
        track: list[LocalPresence],
        waiters: list[asyncio.Future[Answer]],
        exc: psycopg.Error,
    ) -> None:
        """The database refused what a batch holds (not the connection): a retry would fail again
        and hold every later change back. Its tracks are dropped and refused; its untracks go again."""
        self._log.log(
            logging.ERROR,
            "refused",
            "presence batch refused, its %d tracks dropped: %s",
            len(track),
            first_line(exc),
        )
        self._untrack[:0] = untrack
        dropped = {presence.ref for presence in track}
        for channel, presence in list(self.local.items()):
            if presence.ref in dropped:
                del self.local[channel]
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(PolicyFailed(first_line(exc)))

    def _reref(self) -> None:
        """New refs for every presence held here: others saw the old ones leave."""
        for channel, presence in list(self.local.items()):
            ref = new_ref()
            value = {k: v for k, v in presence.meta.items() if k != "phx_ref_prev"}
            value["phx_ref"] = ref
            self.local[channel] = LocalPresence(ref, presence.subtopic, presence.private, presence.key, value)

    async def _write(self, untrack: list[str], track: list[LocalPresence], replace: bool) -> bool:
        rows = orjson.dumps([presence.row() for presence in track]).decode()
        self.database.fail_fast()
        async with self.database.connection() as conn:
            cur = await conn.execute(_WRITE, (self.sidecar_id, untrack, rows, replace))
            row = await cur.fetchone()
            await conn.commit()
        return bool(row and row[0])

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(Unavailable("stopping"))
        self._waiters = []

    # -- for /metrics and the inspector ---------------------------------------------------------
    def counts(self) -> dict[tuple[str, bool], int]:
        """Presences per loaded (topic, private)."""
        return {key: topic.count() for key, topic in self.topics.items() if topic.loaded}


def _diff_encoder(subtopic: str, payload: str) -> Callable[[Vsn], Frame | None]:
    topic = orjson.dumps(phoenix.SUBTOPIC_PREFIX + subtopic).decode()

    def encode(vsn: Vsn) -> Frame | None:
        # The event's JSON goes out as stored: no parse and no encode per wire format.
        if vsn == Vsn.V2:
            return f'[null,null,{topic},"presence_diff",{payload}]'
        return f'{{"topic":{topic},"event":"presence_diff","payload":{payload},"ref":null}}'

    return encode


class PresenceCollector:
    """/metrics: presences per topic this sidecar has subscribers on, and its own."""

    def __init__(self, tracker: PresenceTracker) -> None:
        self.tracker = tracker

    def collect(self) -> Iterator[Any]:
        family = GaugeMetricFamily(
            "realtime_presences",
            "Presences of the topics this sidecar's clients are on, by topic and visibility",
            labels=["topic", "private"],
        )
        for (subtopic, private), count in sorted(self.tracker.counts().items()):
            family.add_metric([subtopic, "true" if private else "false"], count)
        yield family
        yield GaugeMetricFamily(
            "realtime_presences_tracked",
            "Presences tracked by this sidecar's clients",
            value=len(self.tracker.local),
        )
        yield CounterMetricFamily(
            "realtime_presence_batches", "Presence batches this sidecar wrote", value=self.tracker.batches
        )
        yield CounterMetricFamily(
            "realtime_presence_rewrites",
            "Times this sidecar wrote all its presences again after its lease had run out",
            value=self.tracker.rewrites,
        )


def register_collector(registry: CollectorRegistry, tracker: PresenceTracker) -> None:
    registry.register(PresenceCollector(tracker))


__all__ = ["LocalPresence", "PresenceCollector", "PresenceTracker", "register_collector"]
