"""The sidecar registry: which sidecars serve this database, kept by leases in realtime.sidecars.

Each sidecar records itself at start (name, host:port, start time) and renews its lease every
``renew_s``; a renewal also removes the sidecars whose lease ran out, and their presences
with leaves, so one killed with ``kill -9`` is gone within ``lease_s``. A renewal that finds this
sidecar's own lease had lapsed (a long pause, a partition) says so (``on_rejoined``): its
presences were removed meanwhile and are written again. The same loop reads ``pg_notification_queue_usage()``
(the bus's queue, shared by the whole server) and empties the next partition of the bus
attachments. It uses the pool: these are a few short statements every few seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from .database import Database, DatabaseUnavailable
from .logs import RateLimitedLog

log = logging.getLogger("pg_realtime")

RENEW_S = 3.0
LEASE_S = 15.0
#: Past this share of the notification queue, warn: when it is full every NOTIFY of the server fails.
QUEUE_WARNING = 0.5


@dataclass(frozen=True)
class Member:
    id: str
    name: str
    address: str
    started_at: float
    renewed_at: float


class Cluster:
    """This sidecar's lease, and the cluster as the last renewal saw it."""

    def __init__(
        self,
        database: Database,
        address: Callable[[], str],
        *,
        renew_s: float = RENEW_S,
        lease_s: float = LEASE_S,
        on_queue_usage: Callable[[float], None] = lambda usage: None,
        on_rejoined: Callable[[], None] = lambda: None,
    ) -> None:
        self.database = database
        self.address = address
        self.renew_s = renew_s
        self.lease_s = lease_s
        self.on_queue_usage = on_queue_usage
        #: Called when a renewal finds this sidecar's lease had run out (its presences are gone).
        self.on_rejoined = on_rejoined
        self.registered = False
        self.id = str(uuid.uuid4())
        self.name = f"{socket.gethostname()}-{os.getpid()}"
        self.started_at = time.time()
        self.members: list[Member] = []
        self.queue_usage = 0.0
        self._warned = False
        self._stopping = asyncio.Event()
        self._poked = asyncio.Event()
        self._log = RateLimitedLog(log, period_s=60.0)

    async def renew(self) -> None:
        async with self.database.connection() as conn:
            cur = await conn.execute(
                "select id::text, name, address, extract(epoch from started_at)::float8, "
                "extract(epoch from renewed_at)::float8, renewed "
                "from realtime.sidecar_renew(%s::uuid, %s, %s, %s, %s)",
                (
                    self.id,
                    self.name,
                    self.address(),
                    datetime.fromtimestamp(self.started_at, UTC),
                    timedelta(seconds=self.lease_s),
                ),
            )
            rows = await cur.fetchall()
            self.members = [Member(*row[:5]) for row in rows]
            lapsed = any(row[0] == self.id and not row[5] for row in rows)
            cur = await conn.execute("select pg_notification_queue_usage()")
            row = await cur.fetchone()
            await conn.commit()
            try:
                await conn.execute("select realtime.bus_rotate()")
                await conn.commit()
            except psycopg.errors.LockNotAvailable:
                await conn.rollback()  # a reader holds the partition: the next renewal tries again
        if lapsed and self.registered:
            log.warning("sidecar registry: this sidecar's lease had run out; its presences are written again")
            self.on_rejoined()
        self.registered = True
        self._queue(float(row[0]) if row else 0.0)

    def _queue(self, usage: float) -> None:
        self.queue_usage = usage
        self.on_queue_usage(usage)
        if usage > QUEUE_WARNING and not self._warned:
            log.warning(
                "NotificationQueueFilling: pg_notification_queue_usage() is %.0f%%: a listener is "
                "not keeping up (a stalled sidecar, or a session that ran LISTEN and sits in a "
                "transaction); when the queue is full every NOTIFY on the server fails",
                usage * 100,
            )
        self._warned = usage > QUEUE_WARNING

    async def run(self) -> None:
        while not self._stopping.is_set():
            self._poked.clear()
            try:
                await self.renew()
            except (psycopg.Error, DatabaseUnavailable, OSError) as exc:
                self._log.log(logging.WARNING, "renewal", "sidecar registry: renewal failed: %s", exc)
            except Exception:
                # The lease must outlive any surprise: a sidecar that stops renewing is removed.
                log.exception("sidecar registry: renewal failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poked.wait(), self.renew_s)

    def poke(self) -> None:
        """Renew now (the address changed)."""
        self._poked.set()

    async def leave(self) -> None:
        """Remove this sidecar from the registry (it is stopping)."""
        self._stopping.set()
        self._poked.set()
        with contextlib.suppress(psycopg.Error, DatabaseUnavailable, OSError):
            async with self.database.connection() as conn:
                await conn.execute("select realtime.sidecar_leave(%s::uuid)", (self.id,))
                await conn.commit()


class ClusterCollector:
    """/metrics: the sidecars of the cluster, one ``realtime_cluster_sidecar`` series each."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    def collect(self) -> Iterator[Any]:
        members = self.cluster.members
        yield GaugeMetricFamily(
            "realtime_cluster_sidecars", "Sidecars serving this database (last renewal)", value=len(members)
        )
        info = GaugeMetricFamily(
            "realtime_cluster_sidecar_started_seconds",
            "Start time of each sidecar serving this database, by name and address",
            labels=["name", "address", "self"],
        )
        for m in members:
            info.add_metric([m.name, m.address, "true" if m.id == self.cluster.id else "false"], m.started_at)
        yield info


def register_collector(registry: CollectorRegistry, cluster: Cluster) -> None:
    registry.register(ClusterCollector(cluster))


__all__ = ["Cluster", "ClusterCollector", "Member", "register_collector"]
