"""The cluster bus over PostgreSQL: client broadcasts as ``NOTIFY realtime_bus`` payloads.

:class:`PostgresBus` is the :class:`~pg_realtime.bus.Bus` the server uses; the payloads are
built and read by :mod:`pg_realtime.bus_frames`. It carries the messages:

* batched: at most one transaction per ``batch_interval`` (2 ms) carries everything published
  meanwhile, in as many notifications as the 8000-byte payload limit needs, on a connection of
  its own;
* a message too large for a notification is written to ``realtime.bus_attachments`` (UNLOGGED,
  emptied by partition TRUNCATE) in the same transaction, and the notification names it;
* each sidecar LISTENs on one dedicated connection (application_name "pg-realtime bus") that
  runs nothing else, and skips its own notifications by the sidecar id in each batch;
* at-most-once, as Supabase's broadcasts: while a connection is down the sidecar reconnects with
  backoff, and what its clients send meanwhile reaches its own subscribers only (counted, logged);
* a URL through a transaction-mode pooler cannot LISTEN: the first connection proves it can (a
  probe notification must come back) or the sidecar refuses to start (:class:`BusRefused`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
import psycopg

from .broadcast import Broadcast
from .bus_frames import (
    BusMessage,
    Incoming,
    Interested,
    Outgoing,
    Packer,
    decode_message,
    encode_message,
    parse_notification,
)
from .database import Database
from .logs import RateLimitedLog, first_line
from .metrics import BusMetrics

log = logging.getLogger("pg_realtime")

CHANNEL = "realtime_bus"
LISTEN_APPLICATION_NAME = "pg-realtime bus"
PUBLISH_APPLICATION_NAME = "pg-realtime bus publish"
#: Messages waiting for a flush beyond this are delivered locally only (the database is too slow).
MAX_PENDING = 100_000
PROBE_TIMEOUT_S = 10.0

POOLER_HINT = (
    "pg-realtime needs a connection that can LISTEN: a direct one, or a pooler in session mode. "
    "Transaction-mode poolers (PgBouncer pool_mode=transaction, RDS Proxy, Supavisor on port "
    "6543) cannot deliver notifications; point the database URL past them."
)


class BusRefused(Exception):
    """The database URL cannot carry the bus (a transaction-mode pooler): do not start."""


class InRecovery(Exception):
    """The server is a hot standby, where LISTEN is refused: not the URL's fault, wait for a primary."""

    def __str__(self) -> str:
        return "the database is a hot standby (in recovery): LISTEN needs the primary"


Deliver = Callable[[list[BusMessage]], object]
#: Fetches attachments (origin, numbers) -> {n: body}; runs on a pool connection, not the listener.
FetchAttachments = Callable[[str, list[int]], Any]

_CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.errors.AdminShutdown, OSError)


class PostgresBus:
    """The bus over LISTEN/NOTIFY on ``realtime_bus`` (see the module's docstring)."""

    def __init__(
        self,
        dsn: str,
        deliver: Deliver,
        fetch_attachments: FetchAttachments,
        metrics: BusMetrics,
        *,
        interested: Interested = lambda subtopic, private: True,
        batch_interval: float = 0.002,
        max_backoff: float = 5.0,
        on_state: Callable[[str | None], None] | None = None,
    ) -> None:
        self.dsn = dsn
        self.deliver = deliver
        self.fetch_attachments = fetch_attachments
        self.metrics = metrics
        self.interested = interested
        self.batch_interval = batch_interval
        self.max_backoff = max_backoff
        self.on_state = on_state
        self.origin = uuid.uuid4().hex
        self.packer = Packer(self.origin)
        self.listening = False
        self.publishing = False
        self.listen_reason = "starting"
        self.publish_reason = "starting"
        self.down_reason: str | None = "starting"
        self._pending: list[tuple[float, str, bool, bytes]] = []
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._incoming: asyncio.Queue[Incoming] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._probe: str | None = None
        self._probe_seen = asyncio.Event()
        self._listen_conn: psycopg.AsyncConnection[Any] | None = None
        self._publish_conn: psycopg.AsyncConnection[Any] | None = None
        self._warn = RateLimitedLog(log, period_s=10.0)
        #: pg_backend_pid() of the LISTEN connection (for the DBA, and the tests).
        self.listen_pid: int | None = None

    # -- state ------------------------------------------------------------------------------
    def _update(self) -> None:
        reason = None
        if not self.listening:
            reason = f"cluster bus: not listening: {self.listen_reason}"
        elif not self.publishing:
            reason = f"cluster bus: cannot publish: {self.publish_reason}"
        if reason != self.down_reason:
            was_down = self.down_reason
            self.down_reason = reason
            self.metrics.up.set(0 if reason else 1)
            if reason is None:
                log.info("cluster bus up")
            elif was_down is None:
                log.warning("%s; client broadcasts reach this sidecar's subscribers only", reason)
            if self.on_state is not None:
                self.on_state(reason)

    # -- publishing -------------------------------------------------------------------------
    def publish(self, subtopic: str, private: bool, message: Broadcast) -> bool:
        if not self.publishing or len(self._pending) >= MAX_PENDING:
            self.metrics.local_only.inc()
            self._warn.log(
                logging.WARNING,
                "local-only",
                "client broadcast on %s delivered on this sidecar only: %s",
                subtopic,
                self.down_reason or "too many messages waiting for the bus",
            )
            return False
        self._pending.append((time.time(), subtopic, private, encode_message(subtopic, private, message)))
        self._wake.set()
        return True

    async def _connect(self, application_name: str) -> psycopg.AsyncConnection[Any]:
        return await psycopg.AsyncConnection.connect(
            self.dsn,
            autocommit=True,
            application_name=application_name,
            prepare_threshold=None,
            connect_timeout=5,
        )

    async def _publish_loop(self) -> None:
        backoff = 0.1
        while not self._stopping.is_set():
            try:
                conn = self._publish_conn or await self._connect(PUBLISH_APPLICATION_NAME)
            except _CONNECTION_ERRORS as exc:
                self.publishing, self.publish_reason = False, first_line(exc)
                self._update()
                await self._sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                continue
            self._publish_conn = None
            if self.publish_reason != "starting":
                self.metrics.reconnects.inc()
            backoff = 0.1
            try:
                async with conn:
                    self.publishing, self.publish_reason = True, "ok"
                    self._update()
                    await self._flush_forever(conn)
            except _CONNECTION_ERRORS as exc:
                self.publishing, self.publish_reason = False, f"connection lost: {first_line(exc)}"
                self._update()
            except psycopg.Error as exc:
                # Not the connection (attachments missing or refused): keep trying, slowly.
                self.publishing, self.publish_reason = False, first_line(exc)
                self._update()
                log.error("cluster bus: publishing failed: %s", exc)
                await self._sleep(self.max_backoff)

    async def _flush_forever(self, conn: psycopg.AsyncConnection[Any]) -> None:
        loop = asyncio.get_running_loop()
        last_flush = 0.0
        while not self._stopping.is_set():
            if not self._pending:
                self._wake.clear()
                waiter = asyncio.ensure_future(self._wake.wait())
                stopper = asyncio.ensure_future(self._stopping.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                continue
            # At most one transaction per batch_interval (each costs a transaction id and the
            # server's notify lock): a message after a quiet spell goes at once, the ones that
            # follow it within the interval go together at its end.
            wait = last_flush + self.batch_interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            last_flush = loop.time()
            pending, self._pending = self._pending, []
            try:
                await self._send(conn, self.packer.pack(pending))
            except BaseException:
                self.metrics.local_only.inc(len(pending))
                log.warning("cluster bus: %d client broadcasts not sent to the other sidecars", len(pending))
                raise
            self.metrics.messages.labels("out").inc(len(pending))
            self.metrics.batch_size.observe(len(pending))

    async def _send(self, conn: psycopg.AsyncConnection[Any], out: Outgoing) -> None:
        if not out.attachments:
            await conn.execute(
                "select pg_notify(%s, p) from unnest(%s::text[]) with ordinality as t(p, i) order by i",
                (CHANNEL, out.payloads),
            )
            return
        # Attachments first, in the same transaction: visible when the notification arrives.
        async with conn.transaction():
            await conn.execute(
                "insert into realtime.bus_attachments (origin, n, body) "
                "select %s::uuid, a.n, a.body from unnest(%s::bigint[], %s::bytea[]) as a(n, body)",
                (self.origin, [n for n, _ in out.attachments], [body for _, body in out.attachments]),
            )
            await conn.execute(
                "select pg_notify(%s, p) from unnest(%s::text[]) with ordinality as t(p, i) order by i",
                (CHANNEL, out.payloads),
            )

    # -- listening --------------------------------------------------------------------------
    async def _listen_once(self, conn: psycopg.AsyncConnection[Any]) -> None:
        """LISTEN; a refusal by the server (not a lost connection) is a pooler's doing."""
        try:
            await conn.execute(f"listen {CHANNEL}")
        except _CONNECTION_ERRORS:
            raise
        except psycopg.errors.ReadOnlySqlTransaction:
            raise InRecovery() from None
        except psycopg.Error as exc:
            raise BusRefused(
                f"LISTEN is refused on the database URL ({first_line(exc)}). {POOLER_HINT}"
            ) from None
        cur = await conn.execute("select pg_backend_pid()")
        row = await cur.fetchone()
        self.listen_pid = int(row[0]) if row else None

    async def _listen_loop(self, first: psycopg.AsyncConnection[Any] | None) -> None:
        backoff = 0.1
        conn = first
        while not self._stopping.is_set():
            if conn is None:
                try:
                    conn = await self._connect(LISTEN_APPLICATION_NAME)
                    await self._listen_once(conn)
                except (BusRefused, InRecovery) as exc:
                    self.listening, self.listen_reason = False, str(exc)
                    self._update()
                    log.error("%s", exc)
                    await self._close(conn)
                    conn = None
                    await self._sleep(self.max_backoff)
                    continue
                except _CONNECTION_ERRORS as exc:
                    self.listening, self.listen_reason = False, first_line(exc)
                    self._update()
                    await self._close(conn)
                    conn = None
                    await self._sleep(backoff)
                    backoff = min(backoff * 2, self.max_backoff)
                    continue
                self.metrics.reconnects.inc()
            backoff = 0.1
            self._listen_conn = conn
            self.listening, self.listen_reason = True, "ok"
            self._update()
            try:
                async with conn:
                    # Nothing else ever runs on this connection: a listener that stalls or sits in
                    # a transaction holds back the notification queue of the whole server.
                    async for notify in conn.notifies():
                        self._received(notify.payload)
            except _CONNECTION_ERRORS as exc:
                self.listening, self.listen_reason = False, f"connection lost: {first_line(exc)}"
                self._update()
                log.warning("cluster bus: LISTEN connection lost, reconnecting: %s", first_line(exc))
            finally:
                self._listen_conn = None
            conn = None

    def _received(self, payload: str) -> None:
        if self._probe is not None and payload == self._probe:
            self._probe_seen.set()
            return
        try:
            incoming = parse_notification(payload, self.interested)
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            self.metrics.lost.inc()
            self._warn.log(
                logging.WARNING, "malformed", "cluster bus: malformed notification skipped: %s", exc
            )
            return
        if incoming is None or incoming.origin == self.origin:
            return
        self._incoming.put_nowait(incoming)

    async def _deliver_loop(self) -> None:
        # One batch at a time, in the order of the queue: attachments are awaited in line.
        while True:
            incoming = await self._incoming.get()
            try:
                await self._deliver(incoming)
            except Exception:
                log.exception("cluster bus: delivering a batch failed")

    async def _deliver(self, incoming: Incoming) -> None:
        # Interest was checked at parsing; a channel joined since gets what comes next.
        wanted = [m[2] for m in incoming.messages if isinstance(m[2], int)]
        bodies: dict[int, bytes] = {}
        if wanted:
            try:
                bodies = await self.fetch_attachments(incoming.origin, wanted)
            except Exception as exc:  # the database away: these are lost, as at-most-once allows
                self._warn.log(logging.WARNING, "attachments", "cluster bus: attachments not read: %s", exc)
        messages: list[BusMessage] = []
        for m in incoming.messages:
            subtopic, private, body = m
            if not isinstance(body, int):
                messages.append((subtopic, private, body))
                continue
            raw = bodies.get(body)
            if raw is None:
                self.metrics.lost.inc()
                continue
            try:
                messages.append(decode_message(orjson.loads(raw)))
            except (ValueError, TypeError, KeyError, IndexError):
                self.metrics.lost.inc()
        self.metrics.messages.labels("in").inc(incoming.total)
        self.metrics.latency.observe(max(0.0, time.time() - incoming.sent_at))
        if messages:
            self.deliver(messages)

    # -- lifecycle --------------------------------------------------------------------------
    async def start(self) -> None:
        """Connect both ways and prove a notification comes back; then run in the background.

        The database being unreachable is not a refusal: the bus keeps trying, like the reader.
        """
        self._tasks.append(asyncio.create_task(self._deliver_loop(), name="bus-deliver"))
        listen: psycopg.AsyncConnection[Any] | None = None
        try:
            listen = await self._connect(LISTEN_APPLICATION_NAME)
            await self._listen_once(listen)
            publish = await self._connect(PUBLISH_APPLICATION_NAME)
        except BusRefused:
            await self._close(listen)
            await self.stop()
            raise
        except (*_CONNECTION_ERRORS, InRecovery) as exc:
            log.warning("cluster bus: not started, retrying: %s", first_line(exc))
            await self._close(listen)
            listen = None
        else:
            try:
                await self._prove(listen, publish)
                self._publish_conn = publish
            except _CONNECTION_ERRORS as exc:
                log.warning("cluster bus: connection lost at start, retrying: %s", first_line(exc))
                await self._close(listen)
                await self._close(publish)
                listen = None
            except BaseException:
                await self._close(listen)
                await self._close(publish)
                await self.stop()
                raise
        self._tasks.append(asyncio.create_task(self._listen_loop(listen), name="bus-listen"))
        self._tasks.append(asyncio.create_task(self._publish_loop(), name="bus-publish"))

    async def _prove(
        self, listen: psycopg.AsyncConnection[Any], publish: psycopg.AsyncConnection[Any]
    ) -> None:
        """A probe sent on one connection must reach the other: through a transaction-mode
        pooler, the LISTEN was made on a server connection that has since gone to someone else."""
        self._probe = orjson.dumps({"probe": uuid.uuid4().hex}).decode()
        await publish.execute("select pg_notify(%s, %s)", (CHANNEL, self._probe))
        gen = listen.notifies(timeout=PROBE_TIMEOUT_S)
        try:
            async for notify in gen:
                if notify.payload == self._probe:
                    self._probe_seen.set()
                    break
        finally:
            await gen.aclose()
        if not self._probe_seen.is_set():
            raise BusRefused(
                f"a notification sent on the database URL did not come back within {PROBE_TIMEOUT_S:g} s. "
                + POOLER_HINT
            )
        self._probe = None

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        await self._close(self._listen_conn)
        await self._close(self._publish_conn)

    @staticmethod
    async def _close(conn: psycopg.AsyncConnection[Any] | None) -> None:
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.close()

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)


async def read_attachments(database: Database, origin: str, numbers: list[int]) -> dict[int, bytes]:
    """The bodies of ``origin``'s attachments ``numbers`` (on a pool connection: never the listener's)."""
    async with database.connection() as conn:
        cur = await conn.execute(
            "select n, body from realtime.bus_attachments where origin = %s::uuid and n = any(%s::bigint[])",
            (origin, numbers),
        )
        rows = await cur.fetchall()
        await conn.rollback()
    return {int(n): bytes(body) for n, body in rows}


__all__ = [
    "CHANNEL",
    "BusRefused",
    "InRecovery",
    "PostgresBus",
    "read_attachments",
]
