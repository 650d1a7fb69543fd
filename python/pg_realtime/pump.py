"""The shell around one socket's :class:`~pg_realtime.session.Session`: it does the I/O.

Three things run per socket: the read loop (decode a frame, hand it to the session, perform
what the session asks for, one frame at a time), the writer (drain the session's outbox to
the WebSocket, then close it when the session says so) and one timer (the session's next
deadline). Everything the socket's channels do is decided in the session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import psycopg
from aiohttp import WSCloseCode, WSMsgType, web

from . import framing, phoenix
from .database import Database, DatabaseUnavailable
from .logs import first_line, printable
from .phoenix import Message, Vsn
from .policies import PolicyError
from .queries import (
    Answer,
    PolicyFailed,
    PresenceSync,
    PresenceTrack,
    ReadCheck,
    ReplayQuery,
    Request,
    StreamResume,
    Unavailable,
    WriteCheck,
)
from .session import SLOW_CONSUMER_CLOSE, Session, SessionContext
from .stream import MessageStream
from .tracker import PresenceTracker

log = logging.getLogger("pg_realtime")

#: After a slow-consumer close, a client that still reads nothing is dropped without the close frame.
SLOW_CONSUMER_GRACE_S = 2.0
#: How long the writer waits for the close handshake.
CLOSE_TIMEOUT_S = 2.0
SLOW_CONSUMER_MESSAGE = b"slow consumer: outgoing buffer limit exceeded"


async def perform(
    database: Database | None,
    request: Request,
    tracker: PresenceTracker | None = None,
    stream: MessageStream | None = None,
) -> Answer:
    """Carry out a session's request; failures come back as values, never as exceptions."""
    if isinstance(request, StreamResume):
        if stream is None or await stream.resume():
            return True
        return Unavailable(f"the reader is not reading: {stream.reason}")
    if database is None:
        return Unavailable("no database configured")
    try:
        if isinstance(request, ReadCheck):
            return await database.can_read(request.subtopic, request.claims, request.extension)
        if isinstance(request, WriteCheck):
            return await database.can_write(request.subtopic, request.claims, request.extension)
        if isinstance(request, PresenceTrack | PresenceSync):
            if tracker is None:
                return Unavailable("presence needs the database")
            if isinstance(request, PresenceTrack):
                return await tracker.track(request.channel, request.key, request.payload)
            return await tracker.snapshot(request.subtopic, request.private)
        if isinstance(request, ReplayQuery):
            return await database.replay(request.subtopic, request.since_ms, request.limit)
    except PolicyError as exc:
        return PolicyFailed(str(exc))
    except DatabaseUnavailable as exc:
        return Unavailable(str(exc))
    except psycopg.Error as exc:
        return PolicyFailed(first_line(exc))
    raise TypeError(f"unknown request {request!r}")


class Connection:
    """One WebSocket client: its session, read loop, writer task and timer."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        context: SessionContext,
        vsn: Vsn,
        token: str,
        claims: dict[str, Any],
        database: Database | None,
        transport: asyncio.Transport | None,
        idle_timeout_s: float,
        on_idle_timeout: Callable[[], None] | None = None,
        tracker: PresenceTracker | None = None,
        stream: MessageStream | None = None,
    ) -> None:
        self.ws = ws
        self.tracker = tracker
        self.stream = stream
        self.session = Session(context, vsn, token, claims, wakeup=self.wakeup)
        self.database = database
        self.transport = transport
        self.idle_timeout_s = idle_timeout_s
        self.on_idle_timeout = on_idle_timeout
        self.wake = asyncio.Event()
        #: Whether the writer task is between waking up and waiting again (it owns the socket then).
        self._writing = False
        self._flush_queued = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._abort_scheduled = False
        #: Held while a frame, or a rule the timer started, is in progress.
        self._busy = asyncio.Lock()
        self._tick_task: asyncio.Task[None] | None = None

    def wakeup(self) -> None:
        """The session's outbox has frames, overflowed, or the session is closing."""
        session = self.session
        if session.outbox.overflowed:
            self.wake.set()
            self._abort_later()
        elif self._writing or session.closing:
            self.wake.set()
        elif not self._flush_queued:
            # Frames for an idle socket are written by one callback for every socket a fan-out
            # touched, once it is done, instead of waking each socket's writer task.
            self._flush_queued = True
            _FLUSHER.add(self)

    def flush(self) -> None:
        """Write the outbox now, or leave it to the writer task where that must wait."""
        self._flush_queued = False
        session = self.session
        busy = self._writing or session.closing or session.outbox.overflowed
        if busy or not framing.write_now(self.ws, session.outbox):
            self.wake.set()

    def begin_close(self, code: int) -> None:
        self.session.begin_close(code)

    async def serve(self) -> None:
        writer = asyncio.create_task(self._writer())
        self._schedule_timer()  # the socket token's expiry and the no-channel timeout run from the start
        try:
            await self._read_loop()
        finally:
            self._cancel_timer()
            if self._tick_task is not None:
                self._tick_task.cancel()
            session = self.session
            session.leave_all()
            if not session.closing:
                session.begin_close(WSCloseCode.OK)
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(writer, CLOSE_TIMEOUT_S + 1)
            writer.cancel()

    # -- input ----------------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        ws, session = self.ws, self.session
        idle = self.idle_timeout_s
        while not session.closing:
            try:
                raw = await ws.receive(timeout=idle or None)
            except TimeoutError:
                if self.on_idle_timeout is not None:
                    self.on_idle_timeout()
                session.begin_close(WSCloseCode.OK)
                return
            if raw.type in (WSMsgType.TEXT, WSMsgType.BINARY):
                data = raw.data
            elif raw.type == WSMsgType.ERROR:
                # Frame too large and similar: aiohttp has already decided to close.
                log.info("websocket error: %s", ws.exception())
                return
            else:
                return
            try:
                msg = phoenix.decode(data, session.vsn)
            except phoenix.ProtocolError as exc:
                log.info("MalformedWebSocketMessage: %s", printable(exc))
                continue
            await self.handle(msg, len(data))

    async def handle(self, msg: Message, size: int) -> None:
        """One frame through the session, performing what it asks for until it is done."""
        session = self.session
        async with self._busy:
            # A rule the timer started (a periodic check) finishes first: frames keep their order.
            await self._drive()
            try:
                session.receive(msg, size)
                await self._drive()
            except Exception:
                # One bad frame must never take the socket (or the server) down.
                log.exception(
                    "UnknownErrorOnChannel while handling %s on %s",
                    printable(msg.event),
                    printable(msg.topic),
                )
                session.abandon()
        self._schedule_timer()

    async def _drive(self) -> None:
        session = self.session
        while session.pending is not None:
            answer = await perform(self.database, session.pending, self.tracker, self.stream)
            session.answer(answer)

    async def _drive_tick(self) -> None:
        async with self._busy:
            try:
                await self._drive()
            except Exception:
                log.exception("UnknownErrorOnChannel in a periodic check")
                self.session.abandon()
        self._schedule_timer()

    # -- timers ---------------------------------------------------------------------------------
    def _schedule_timer(self) -> None:
        deadline = self.session.next_deadline()
        if deadline == self._timer_at:
            return
        self._cancel_timer()
        if deadline is None:
            return
        self._timer_at = deadline
        # A millisecond late, so that the token has expired when the session looks.
        delay = max(0.0, deadline - time.time()) + 0.001
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = None
        self._timer_at = None

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._busy.locked():
            # A frame is being handled: its end re-arms the timer, and the tick runs then.
            return
        self.session.tick()
        if self.session.pending is not None:
            self._tick_task = asyncio.get_running_loop().create_task(self._drive_tick())
            return
        self._schedule_timer()

    # -- output ---------------------------------------------------------------------------------
    async def _writer(self) -> None:
        ws, session = self.ws, self.session
        outbox = session.outbox
        try:
            while True:
                self._writing = False
                await self.wake.wait()
                self._writing = True
                self.wake.clear()
                # What one read left queued goes out in one write, not one system call per frame.
                while frames := framing.take(outbox):
                    await framing.send(ws, frames)
                if session.closing:
                    code = session.close_code or WSCloseCode.OK
                    message = (
                        SLOW_CONSUMER_MESSAGE if code == SLOW_CONSUMER_CLOSE and outbox.overflowed else b""
                    )
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(ws.close(code=code, message=message), CLOSE_TIMEOUT_S)
                    return
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            session.closing = True
            session.outbox.closed = True
            return
        finally:
            self._writing = True  # nothing writes to this socket any more but the writer's end

    def _abort_later(self) -> None:
        # The writer waits for the client to read, which may never happen: drop the connection
        # if the close frame has not gone out by then (abort also wakes the reader and writer).
        if self._abort_scheduled or self.transport is None:
            return
        self._abort_scheduled = True
        asyncio.get_running_loop().call_later(SLOW_CONSUMER_GRACE_S, self.transport.abort)


class _Flusher:
    """Sockets with frames to write, flushed together by one callback of the event loop."""

    def __init__(self) -> None:
        #: Sockets to flush; while there are any, a call of ``_run`` is scheduled on ``_loop``.
        self._pending: list[Connection] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def add(self, connection: Connection) -> None:
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # Another event loop (a test's, or a restarted server's): what the old one left
            # pending belonged to sockets that loop took with it.
            self._loop, self._pending = loop, []
        if not self._pending:
            loop.call_soon(self._run)
        self._pending.append(connection)

    def _run(self) -> None:
        pending, self._pending = self._pending, []
        for connection in pending:
            try:
                connection.flush()
            except Exception:
                # One socket's failed write must not keep the others' frames back.
                log.exception("flushing a socket failed")
                connection.wake.set()


_FLUSHER = _Flusher()
