"""The aiohttp application: WebSocket pump, REST broadcast API, health and metrics.

This module does the I/O; the rules live in the pure modules it calls: ``phoenix``
(frames), ``session`` (join payloads, reasons, rate windows), ``channels`` (registry and
fan-out), ``auth`` (tokens). Each socket reads and handles its frames one at a time, in
order, and writes through a bounded outbox drained by its own task, so one slow reader
never holds back the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import orjson
import psycopg
from aiohttp import WSCloseCode, WSMsgType, web
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from . import phoenix, session
from .auth import AuthError, Verifier
from .channels import Channel, Frame, Outbox, Registry
from .config import Settings
from .metrics import Metrics
from .phoenix import Message, PayloadEncoding, UserBroadcast, Vsn
from .policies import Authorizer, PolicyError
from .stream import MessageStream, Row, StreamState

log = logging.getLogger("pg_realtime")

WEBSOCKET_PATHS = ("/realtime/v1/websocket", "/socket/websocket")
API_PREFIXES = ("/realtime/v1/api", "/api")
SLOW_CONSUMER_CLOSE = 1008  # policy violation: the client stopped reading
SLOW_CONSUMER_GRACE_S = 2.0  # then a client that still reads nothing is dropped without the close frame
GOING_AWAY = 1001
REPLAY_HARD_LIMIT = 25

_REPLAY_SQL = """
select id::text, event, payload::text, binary_payload
from (
    select id, event, payload, binary_payload, inserted_at, xid, seq
    from realtime.messages
    where topic = %(topic)s and private is true and extension = 'broadcast'
      and inserted_at >= to_timestamp(%(since)s / 1000.0) at time zone 'utc'
      and inserted_at < timezone('utc', now()) + interval '1 minute'
    order by inserted_at desc, xid desc, seq desc
    limit %(limit)s
) as newest
order by inserted_at, xid, seq
"""

SERVER_KEY: web.AppKey[RealtimeServer] = web.AppKey("realtime_server")


def _json_response(status: int, body: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


class Socket:
    """One WebSocket client: its channels, its outbox and its writer task."""

    def __init__(
        self, server: RealtimeServer, ws: web.WebSocketResponse, vsn: Vsn, token: str, claims: dict[str, Any]
    ) -> None:
        self.server = server
        self.ws = ws
        self.vsn = vsn
        self.token = token
        self.claims = claims
        self.channels: dict[str, Channel] = {}
        self._wake = asyncio.Event()
        self.outbox = Outbox(server.settings.outbox_limit_bytes, self._wake.set)
        self.events = session.RateWindow(server.settings.max_client_events_per_second)
        self.closing = False
        self.close_code: int | None = None
        self.transport: asyncio.Transport | None = None

    # -- output -----------------------------------------------------------------------------
    def send(self, frame: Frame) -> None:
        if not self.outbox.push(frame) and self.outbox.overflowed and not self.closing:
            self.server.metrics.slow_consumers.inc()
            self.begin_close(SLOW_CONSUMER_CLOSE)
            if self.transport is not None:
                # The writer waits for the client to read, which may never happen: drop the connection
                # if the close frame has not gone out by then (abort also wakes the reader and writer).
                asyncio.get_running_loop().call_later(SLOW_CONSUMER_GRACE_S, self.transport.abort)

    def begin_close(self, code: int) -> None:
        """Stop delivering to this socket now; the writer task closes it."""
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        self.outbox.closed = True
        self.leave_all()
        self._wake.set()

    async def writer(self) -> None:
        ws = self.ws
        outbox = self.outbox
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while outbox.frames and not outbox.overflowed:
                    frame = outbox.frames.popleft()
                    outbox.size -= len(frame)
                    if isinstance(frame, bytes):
                        await ws.send_bytes(frame)
                    else:
                        await ws.send_str(frame)
                if self.closing:
                    message = b"slow consumer: outgoing buffer limit exceeded" if outbox.overflowed else b""
                    code = self.close_code or WSCloseCode.OK
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(ws.close(code=code, message=message), 2)
                    return
        except (ConnectionError, RuntimeError, asyncio.CancelledError):
            self.closing = True
            self.outbox.closed = True
            return

    def reply(self, msg: Message, status: str, response: Any) -> None:
        self.send(phoenix.encode_reply(self.vsn, msg.join_ref, msg.ref, msg.topic, status, response))

    def push(self, channel: Channel, event: str, payload: Any) -> None:
        self.send(phoenix.encode_push(self.vsn, channel.join_ref, channel.topic, event, payload))

    def close_channel(self, channel: Channel) -> None:
        """phx_close for a channel the server ends (reference: ref = join_ref)."""
        self.send(
            phoenix.encode_push(
                self.vsn, channel.join_ref, channel.topic, "phx_close", {}, ref=channel.join_ref
            )
        )

    # -- channel bookkeeping ----------------------------------------------------------------
    def leave(self, channel: Channel) -> None:
        if self.channels.get(channel.topic) is channel:
            del self.channels[channel.topic]
        if channel.expiry_handle is not None:
            channel.expiry_handle.cancel()
            channel.expiry_handle = None
        self.server.registry.remove(channel)
        self.server.metrics.channels.set(self.server.registry.channel_count)

    def leave_all(self) -> None:
        for channel in list(self.channels.values()):
            self.leave(channel)

    def shutdown_channel(self, channel: Channel, message: str) -> None:
        """The reference server's channel shutdown: a system error, then phx_close."""
        self.push(
            channel,
            "system",
            {"extension": "system", "status": "error", "message": message, "channel": channel.subtopic},
        )
        self.close_channel(channel)
        self.leave(channel)

    def schedule_expiry(self, channel: Channel) -> None:
        if channel.expiry_handle is not None:
            channel.expiry_handle.cancel()
        exp = channel.claims.get("exp")
        if not isinstance(exp, int | float):
            return
        delay = max(0.0, float(exp) - time.time())
        loop = asyncio.get_running_loop()
        channel.expiry_handle = loop.call_later(delay + 0.001, self._expire, channel)

    def _expire(self, channel: Channel) -> None:
        channel.expiry_handle = None
        if self.channels.get(channel.topic) is not channel:
            return
        seconds = max(0, int(time.time() - float(channel.claims["exp"])))
        self.server.metrics.refusals.labels("token_expired").inc()
        self.shutdown_channel(channel, f"Token has expired {seconds} seconds ago")

    # -- input ------------------------------------------------------------------------------
    async def handle(self, msg: Message, size: int) -> None:
        if msg.topic == "phoenix":
            if msg.event == "heartbeat":
                self.reply(msg, "ok", {})
            return
        if msg.event == "phx_join":
            await self.join(msg)
            return
        channel = self.channels.get(msg.topic)
        if msg.event == "phx_leave":
            self.reply(msg, "ok", {})
            if channel is not None:
                self.close_channel(channel)
                self.leave(channel)
            return
        if channel is None:
            self.reply(msg, "error", {"reason": session.UNMATCHED_TOPIC})
            return
        if msg.event == "broadcast":
            await self.client_broadcast(channel, msg, size)
        elif msg.event == "access_token":
            await self.refresh_token(channel, msg.payload)
        elif msg.event == "presence":
            self.reply(msg, "error", {"reason": session.PRESENCE_UNSUPPORTED})
        # Other events are ignored, as the reference server does.

    async def join(self, msg: Message) -> None:
        server = self.server
        subtopic = phoenix.subtopic(msg.topic)
        if subtopic is None:
            self.reply(msg, "error", {"reason": session.UNMATCHED_TOPIC})
            return
        if not subtopic:
            self.reply(msg, "error", {"reason": session.TOPIC_NAME_REQUIRED})
            return
        request = session.JoinRequest.parse(msg.payload)
        previous = self.channels.get(msg.topic)
        if previous is not None:
            # A second join of a joined topic replaces the first, which is closed first.
            self.close_channel(previous)
            self.leave(previous)

        def refuse(reason: str, metric: str) -> None:
            server.metrics.refusals.labels(metric).inc()
            log.info("join of %s refused: %s", msg.topic, reason)
            self.reply(msg, "error", {"reason": reason})

        if request.postgres_changes:
            refuse(session.POSTGRES_CHANGES_UNSUPPORTED, "postgres_changes")
            return
        if not server.joins.allow():
            refuse(session.TOO_MANY_JOINS, "joins_per_second")
            # The reference server also drops the socket of a client that joins too fast.
            self.begin_close(WSCloseCode.POLICY_VIOLATION)
            return
        limit = server.settings.max_channels_per_client
        if limit and len(self.channels) >= limit:
            refuse(session.TOO_MANY_CHANNELS, "channels_per_client")
            return
        token = request.token_or(self.token)
        try:
            claims = self.claims if token == self.token else server.verifier.verify(token)
        except AuthError as exc:
            refuse(exc.reason, "invalid_token")
            return
        channel = Channel(
            peer=self,
            topic=msg.topic,
            subtopic=subtopic,
            join_ref=msg.join_ref if msg.join_ref is not None else msg.ref,
            private=request.private,
            broadcast_self=request.broadcast_self,
            broadcast_ack=request.broadcast_ack,
            presence_enabled=request.presence_enabled,
            token=token,
            claims=claims,
        )
        if request.private:
            try:
                channel.can_read = await server.can_read(subtopic, claims)
            except PolicyError as exc:
                refuse(
                    f"RlsPolicyError: Error checking the RLS policies of topic {subtopic}: {exc}", "rls_error"
                )
                return
            except DatabaseUnavailable:
                refuse(session.DATABASE_UNAVAILABLE, "database_unavailable")
                return
            if not channel.can_read:
                refuse(session.unauthorized_read(subtopic), "unauthorized")
                return
        replay_rows: list[tuple[str, str | None, str | None, bytes | None]] = []
        if request.replay is not None:
            if not request.private:
                refuse(session.REPLAY_PUBLIC, "replay")
                return
            params = _replay_params(request.replay)
            if params is None:
                refuse(session.REPLAY_INVALID, "replay")
                return
            try:
                replay_rows = await server.replay(subtopic, *params)
            except (psycopg.Error, DatabaseUnavailable):
                refuse(session.REPLAY_FAILED, "replay")
                return
        if self.closing:
            return
        self.channels[msg.topic] = channel
        server.registry.add(channel)
        server.metrics.channels.set(server.registry.channel_count)
        self.schedule_expiry(channel)
        self.reply(msg, "ok", {"postgres_changes": []})
        if request.presence_enabled:
            self.push(channel, "presence_state", {})
        for row_id, event, payload, binary in replay_rows:
            frame = _row_frame(self.vsn, channel.topic, row_id, event, payload, binary, replayed=True)
            if frame is not None:
                self.send(frame)

    async def client_broadcast(self, channel: Channel, msg: Message, size: int) -> None:
        server = self.server
        payload = msg.payload
        if isinstance(payload, UserBroadcast):
            payload_size = len(payload.payload)
        elif isinstance(payload, dict):
            payload_size = size
        else:
            return  # not a broadcast map: nothing to relay
        if payload_size > server.settings.max_payload_bytes:
            server.metrics.refusals.labels("payload_size").inc()
            if channel.broadcast_ack:
                self.reply(msg, "error", "payload_size_exceeded")
            return
        if not self.events.allow() or not server.events.allow():
            server.metrics.refusals.labels("events_per_second").inc()
            self.shutdown_channel(channel, "Too many messages per second")
            return
        if channel.private:
            if channel.can_write is None:
                try:
                    channel.can_write = await server.can_write(channel.subtopic, channel.claims)
                except (PolicyError, DatabaseUnavailable) as exc:
                    log.warning("RlsPolicyError: write check on %s failed: %s", channel.subtopic, exc)
                    return
            if not channel.can_write:
                # The reference server drops a denied send without a reply, even with ack.
                server.metrics.refusals.labels("unauthorized_write").inc()
                return
            if self.channels.get(channel.topic) is not channel:
                return
        exclude = None if channel.broadcast_self else channel
        topic = channel.topic
        if isinstance(payload, UserBroadcast):
            message = payload

            def encode(vsn: Vsn) -> Frame | None:
                return phoenix.encode_user_broadcast(vsn, topic, message)
        else:
            data = payload

            def encode(vsn: Vsn) -> Frame | None:
                return phoenix.encode_broadcast(vsn, topic, data)

        server.metrics.messages_in.labels("client").inc()
        delivered = server.registry.fan_out(channel.subtopic, channel.private, encode, exclude=exclude)
        server.metrics.deliveries.labels("client").inc(delivered)
        if channel.broadcast_ack:
            self.reply(msg, "ok", {})

    async def refresh_token(self, channel: Channel, payload: Any) -> None:
        token = payload.get("access_token") if isinstance(payload, dict) else None
        # Ignored, never answered: null, unchanged, and the non-JWT `sb_` keys.
        if token is None or not isinstance(token, str) or token == channel.token or token.startswith("sb_"):
            return
        try:
            claims = self.server.verifier.verify(token) if token else None
        except AuthError as exc:
            self.shutdown_channel(channel, exc.message)
            return
        if claims is None:
            self.shutdown_channel(channel, "The token provided is not a valid JWT")
            return
        if channel.private:
            try:
                allowed = await self.server.can_read(channel.subtopic, claims)
            except DatabaseUnavailable as exc:
                # The policies cannot be evaluated now; the token itself is valid. Keep the channel
                # on the permission it has, and check again at the next refresh.
                log.warning(
                    "UnableToConnectToProject: read re-check on %s postponed: %s", channel.subtopic, exc
                )
                allowed = True
            except PolicyError as exc:
                log.warning("RlsPolicyError: read check on %s failed: %s", channel.subtopic, exc)
                allowed = False
            if self.channels.get(channel.topic) is not channel:
                return
            if not allowed:
                channel.can_read = False
                self.shutdown_channel(channel, session.revoked_read(channel.subtopic))
                return
            channel.can_read = True
            channel.can_write = None  # re-checked on the next send, with the new claims
        channel.token = token
        channel.claims = claims
        self.schedule_expiry(channel)


class DatabaseUnavailable(Exception):
    """The database is not reachable right now."""


def _replay_params(replay: Any) -> tuple[int, int] | None:
    if not isinstance(replay, dict):
        return None
    since = replay.get("since")
    if isinstance(since, bool) or not isinstance(since, int):
        return None
    limit = replay.get("limit")
    if limit is None:
        limit = REPLAY_HARD_LIMIT
    if isinstance(limit, bool) or not isinstance(limit, int):
        return None
    return since, max(1, min(REPLAY_HARD_LIMIT, limit))


def _row_frame(
    vsn: Vsn,
    topic: str,
    row_id: str,
    event: str | None,
    payload: str | None,
    binary: bytes | None,
    replayed: bool = False,
) -> Frame | None:
    if event is None:
        return None
    meta: dict[str, Any] = {"id": row_id}
    if replayed:
        meta["replayed"] = True
    if binary is not None:
        message = UserBroadcast(event, binary, PayloadEncoding.BINARY, meta)
    elif payload is not None:
        message = UserBroadcast(event, payload.encode(), PayloadEncoding.JSON, meta)
    else:
        return None
    return phoenix.encode_user_broadcast(vsn, topic, message)


class RealtimeServer:
    """Owns the registry, the database pool and reader, and the aiohttp application."""

    def __init__(self, settings: Settings, database_url: str | None = None) -> None:
        self.settings = settings
        self.database_url = database_url or settings.database_url
        self.verifier = Verifier.from_config(settings.jwt_secret, settings.jwks)
        self.registry = Registry()
        self.metrics = Metrics()
        self.sockets: set[Socket] = set()
        self.joins = session.RateWindow(settings.max_joins_per_second)
        self.events = session.RateWindow(settings.max_events_per_second)
        self.pool: AsyncConnectionPool[Any] | None = None
        self.authorizer: Authorizer | None = None
        self.stream: MessageStream | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.stopping = False
        self.started_at = time.time()
        self.app = self._build_app()

    # -- lifecycle --------------------------------------------------------------------------
    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[cors_middleware], client_max_size=self.settings.max_frame_bytes)
        app[SERVER_KEY] = self
        routes = [web.get("/healthz", self.healthz), web.get("/metrics", self.metrics_endpoint)]
        for path in WEBSOCKET_PATHS:
            routes.append(web.get(path, self.websocket))
        for prefix in API_PREFIXES:
            routes.append(web.post(f"{prefix}/broadcast", self.rest_batch))
            routes.append(web.post(prefix + "/broadcast/{topic}/events/{event}", self.rest_single))
        app.add_routes(routes)
        from .inspector import setup_inspector

        setup_inspector(app, self)
        app.cleanup_ctx.append(self._lifespan)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _lifespan(self, app: web.Application) -> AsyncIterator[None]:
        if self.database_url:
            self.pool = AsyncConnectionPool(
                self.database_url,
                min_size=1,
                max_size=max(1, self.settings.db_pool_size),
                open=False,
                kwargs={"application_name": "pg-realtime", "prepare_threshold": None},
                timeout=5,
                reconnect_timeout=0,
                # After a database restart the idle connections are dead: test each before lending it.
                check=AsyncConnectionPool.check_connection,
            )
            await self.pool.open(wait=False)
            self.authorizer = Authorizer(self.pool)
            self.stream = MessageStream(
                self.database_url,
                self.deliver_rows,
                poll_interval=self.settings.poll_interval_ms / 1000,
                on_state=self._stream_state,
            )
            self.metrics.watch_stream(self.stream)
            self._tasks.append(asyncio.create_task(self.stream.run(), name="stream"))
            self._tasks.append(asyncio.create_task(self._maintain_loop(), name="maintain"))
        yield
        if self.stream is not None:
            self.stream.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.pool is not None:
            await self.pool.close()

    async def _on_shutdown(self, app: web.Application) -> None:
        self.stopping = True
        for sock in list(self.sockets):
            sock.begin_close(GOING_AWAY)
        deadline = time.monotonic() + self.settings.shutdown_timeout_s
        while self.sockets and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def _stream_state(self, state: StreamState, reason: str) -> None:
        self.metrics.stream_up.set(1 if state is StreamState.LIVE else 0)
        if state is StreamState.LIVE:
            log.info("database stream live")
        elif state is StreamState.DOWN:
            log.warning("database stream down: %s", reason)

    async def _maintain_loop(self) -> None:
        while True:
            try:
                await self.maintain()
                delay = self.settings.maintain_interval_s
            except (psycopg.Error, DatabaseUnavailable, OSError) as exc:
                log.warning("realtime.maintain() failed, retrying in 10 s: %s", exc)
                delay = 10.0
            await asyncio.sleep(delay)

    async def maintain(self) -> None:
        async with self._connection() as conn:
            cur = await conn.execute("select realtime.maintain(%s::interval)", (self.settings.retention,))
            for (action,) in await cur.fetchall():
                # "skipped ..." means a lock was busy; the next run retries.
                level = logging.WARNING if str(action).startswith("skipped") else logging.INFO
                log.log(level, "realtime.maintain: %s", action)
            await conn.commit()

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        if self.pool is None:
            raise DatabaseUnavailable("no database configured")
        with _database_errors():
            async with self.pool.connection() as conn:
                yield conn

    def _require_database(self) -> Authorizer:
        # Fail fast while the stream says the database is away, instead of waiting for a pool timeout.
        if self.authorizer is None:
            raise DatabaseUnavailable("no database configured")
        if self.stream is not None and self.stream.state is StreamState.DOWN:
            raise DatabaseUnavailable(self.stream.reason)
        return self.authorizer

    async def can_read(self, subtopic: str, claims: dict[str, Any]) -> bool:
        authorizer = self._require_database()
        with _database_errors():
            return await authorizer.can_read(subtopic, claims)

    async def can_write(self, subtopic: str, claims: dict[str, Any]) -> bool:
        authorizer = self._require_database()
        with _database_errors():
            return await authorizer.can_write(subtopic, claims)

    async def replay(
        self, subtopic: str, since_ms: int, limit: int
    ) -> list[tuple[str, str | None, str | None, bytes | None]]:
        async with self._connection() as conn:
            cur = await conn.execute(_REPLAY_SQL, {"topic": subtopic, "since": since_ms, "limit": limit})
            rows = await cur.fetchall()
            await conn.rollback()
        return [(r[0], r[1], r[2], bytes(r[3]) if r[3] is not None else None) for r in rows]

    # -- database messages ------------------------------------------------------------------
    def deliver_rows(self, rows: list[Row]) -> None:
        now = time.time()
        observe_lag = self.metrics.stream_lag.observe
        total_delivered = 0
        for row in rows:
            observe_lag(max(0.0, now - row.inserted_at))
            if (
                row.event is None
                or row.private is None
                or (row.payload is None and row.binary_payload is None)
            ):
                # As the reference server: a row without event, private flag or payload is not a message.
                log.warning("UnableToBroadcastChanges: message %s lacks event, private or payload", row.id)
                continue
            topic = phoenix.SUBTOPIC_PREFIX + row.topic

            def encode(vsn: Vsn, row: Row = row, topic: str = topic) -> Frame | None:
                return _row_frame(vsn, topic, row.id, row.event, row.payload, row.binary_payload)

            total_delivered += self.registry.fan_out(row.topic, row.private, encode)
        # Counters are bumped once per batch: per-row label lookups showed up in profiles.
        self.metrics.messages_in.labels("database").inc(len(rows))
        self.metrics.deliveries.labels("database").inc(total_delivered)

    # -- HTTP handlers ----------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        if self.stopping:
            return _json_response(503, {"status": "stopping", "reason": "server is shutting down"})
        if self.stream is None:
            return _json_response(503, {"status": "unavailable", "reason": "no database configured"})
        if not self.stream.live:
            return _json_response(503, {"status": "unavailable", "reason": self.stream.reason})
        return _json_response(200, {"status": "ok"})

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        self.metrics.sockets.set(len(self.sockets))
        self.metrics.channels.set(self.registry.channel_count)
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    def _socket_token(self, request: web.Request) -> str | None:
        headers = request.headers
        token = headers.get("x-api-key") or request.query.get("apikey") or headers.get("apikey")
        if not token:
            token = _bearer(headers.get("Authorization"))
        return token

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        if self.stopping:
            return _json_response(503, {"error": "Server is shutting down"})
        vsn = phoenix.parse_vsn(request.query.get("vsn"))
        if vsn is None:
            return _json_response(400, {"error": "Unsupported serializer version"})
        token = self._socket_token(request)
        try:
            claims = self.verifier.verify(token)
        except AuthError as exc:
            self.metrics.refusals.labels("invalid_token").inc()
            return _json_response(401, {"error": exc.http_message})
        limit = self.settings.max_connections
        if limit and len(self.sockets) >= limit:
            self.metrics.refusals.labels("max_connections").inc()
            return _json_response(429, {"error": "Too many connected users"})
        ws = web.WebSocketResponse(
            max_msg_size=self.settings.max_frame_bytes,
            compress=False,  # frames are encoded once for many sockets; per-socket deflate would undo that
            autoping=True,
            heartbeat=None,
        )
        if not ws.can_prepare(request).ok:
            return _json_response(400, {"error": "Expected a WebSocket upgrade"})
        await ws.prepare(request)
        sock = Socket(self, ws, vsn, token or "", claims)
        sock.transport = request.transport
        self.sockets.add(sock)
        self.metrics.sockets.set(len(self.sockets))
        writer = asyncio.create_task(sock.writer())
        try:
            await self._read_loop(sock)
        finally:
            sock.leave_all()
            if not sock.closing:
                sock.begin_close(WSCloseCode.OK)
            with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError, Exception):
                await asyncio.wait_for(writer, 3)
            writer.cancel()
            self.sockets.discard(sock)
            self.metrics.sockets.set(len(self.sockets))
            self.metrics.channels.set(self.registry.channel_count)
        return ws

    async def _read_loop(self, sock: Socket) -> None:
        ws = sock.ws
        idle = self.settings.idle_timeout_s
        while not sock.closing:
            try:
                raw = await ws.receive(timeout=idle or None)
            except TimeoutError:
                self.metrics.refusals.labels("idle_timeout").inc()
                sock.begin_close(WSCloseCode.OK)
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
                msg = phoenix.decode(data, sock.vsn)
            except phoenix.ProtocolError as exc:
                log.info("MalformedWebSocketMessage: %s", exc)
                continue
            try:
                await sock.handle(msg, len(data))
            except Exception:
                # One bad frame must never take the socket (or the server) down.
                log.exception("UnknownErrorOnChannel while handling %s on %s", msg.event, msg.topic)

    # -- REST ----------------------------------------------------------------------------------
    def _rest_claims(self, request: web.Request) -> dict[str, Any] | None:
        token = _bearer(request.headers.get("Authorization")) or request.headers.get("apikey")
        if not token:
            return None
        try:
            return self.verifier.verify(token)
        except AuthError:
            return None

    async def rest_batch(self, request: web.Request) -> web.Response:
        claims = self._rest_claims(request)
        if claims is None:
            self.metrics.refusals.labels("rest_unauthorized").inc()
            return _json_response(401, {"message": "Unauthorized"})
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return _json_response(400, {"message": "Malformed JSON body"})
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages:
            return _json_response(422, {"errors": {"messages": ["can't be blank"]}})
        errors: list[dict[str, list[str]]] = []
        for message in messages:
            errors.append(_validate_rest_message(message))
        if any(errors):
            return _json_response(422, {"errors": {"messages": errors}})
        limit = self.settings.max_payload_bytes
        for message in messages:
            if len(orjson.dumps(message["payload"])) > limit:
                self.metrics.refusals.labels("payload_size").inc()
                return _json_response(422, {"errors": {"payload": ["Payload size exceeds tenant limit"]}})
        if not self.events.allow(cost=len(messages)):
            self.metrics.refusals.labels("events_per_second").inc()
            return _json_response(429, {"message": "Too many requests"})
        allowed: dict[str, bool] = {}
        for message in messages:
            private = session.flexible_bool(message.get("private"), False)
            topic = message["topic"]
            if private:
                if topic not in allowed:
                    try:
                        allowed[topic] = await self.can_write(topic, claims)
                    except (PolicyError, DatabaseUnavailable) as exc:
                        log.warning("RlsPolicyError: REST write check on %s failed: %s", topic, exc)
                        allowed[topic] = False
                if not allowed[topic]:
                    self.metrics.refusals.labels("unauthorized_write").inc()
                    continue  # the reference server skips the topic and still answers 202
            payload: dict[str, Any] = {
                "type": "broadcast",
                "event": message["event"],
                "payload": message["payload"],
            }
            if isinstance(message.get("id"), str):
                payload["meta"] = {"id": message["id"]}
            full_topic = phoenix.SUBTOPIC_PREFIX + topic

            def encode(vsn: Vsn, topic: str = full_topic, payload: dict[str, Any] = payload) -> Frame | None:
                return phoenix.encode_broadcast(vsn, topic, payload)

            self.metrics.messages_in.labels("rest").inc()
            delivered = self.registry.fan_out(topic, private, encode)
            self.metrics.deliveries.labels("rest").inc(delivered)
        return web.Response(status=202)

    async def rest_single(self, request: web.Request) -> web.Response:
        claims = self._rest_claims(request)
        if claims is None:
            self.metrics.refusals.labels("rest_unauthorized").inc()
            return _json_response(401, {"message": "Unauthorized"})
        topic = request.match_info["topic"]
        event = request.match_info["event"]
        content_type = request.headers.get("Content-Type", "")
        media = content_type.split(";", 1)[0].strip().lower()
        body = await request.read()
        if media in ("", "application/json"):
            try:
                value = orjson.loads(body) if body else {}
            except orjson.JSONDecodeError:
                return _json_response(400, {"message": "Malformed JSON body"})
            if not isinstance(value, dict):
                # Phoenix's JSON parser wraps a non-object body this way; keep the same shape.
                value = {"_json": value}
            raw = orjson.dumps(value)
            message = UserBroadcast(event, raw, PayloadEncoding.JSON, {})
        elif media == "application/octet-stream":
            message = UserBroadcast(event, body, PayloadEncoding.BINARY, {})
        else:
            return _json_response(
                415, {"error": "Unsupported Media Type. Use application/json or application/octet-stream"}
            )
        if not topic or not event:
            return _json_response(422, {"errors": {"topic": ["can't be blank"]}})
        if len(message.payload) > self.settings.max_payload_bytes:
            self.metrics.refusals.labels("payload_size").inc()
            return _json_response(422, {"errors": {"payload": ["Payload size exceeds tenant limit"]}})
        if not self.events.allow():
            self.metrics.refusals.labels("events_per_second").inc()
            return _json_response(429, {"message": "Too many requests"})
        private = session.flexible_bool(request.query.get("private"), False)
        if private:
            try:
                allowed = await self.can_write(topic, claims)
            except PolicyError as exc:
                return _json_response(422, {"message": f"RlsPolicyError: {exc}"})
            except DatabaseUnavailable:
                return _json_response(
                    500, {"message": "Realtime was unable to connect to the project database"}
                )
            if not allowed:
                self.metrics.refusals.labels("unauthorized_write").inc()
                return _json_response(403, {"message": "Unauthorized"})
        full_topic = phoenix.SUBTOPIC_PREFIX + topic

        def encode(vsn: Vsn) -> Frame | None:
            return phoenix.encode_user_broadcast(vsn, full_topic, message)

        self.metrics.messages_in.labels("rest").inc()
        delivered = self.registry.fan_out(topic, private, encode)
        self.metrics.deliveries.labels("rest").inc(delivered)
        return web.Response(status=202)


@contextlib.contextmanager
def _database_errors() -> Iterator[None]:
    """A lost connection or an exhausted pool means the database is unavailable, not a bug."""
    try:
        yield
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise DatabaseUnavailable(str(exc)) from None


def _bearer(value: str | None) -> str | None:
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _validate_rest_message(message: Any) -> dict[str, list[str]]:
    if not isinstance(message, dict):
        return {"message": ["is invalid"]}
    errors: dict[str, list[str]] = {}
    for key in ("topic", "event"):
        value = message.get(key)
        if value is None or value == "":
            errors[key] = ["can't be blank"]
        elif not isinstance(value, str):
            errors[key] = ["is invalid"]
    if "payload" not in message or message["payload"] is None:
        errors["payload"] = ["can't be blank"]
    elif not isinstance(message["payload"], dict):
        errors["payload"] = ["is invalid"]
    private = message.get("private")
    if private is not None and not isinstance(private, bool | str):
        errors["private"] = ["is invalid"]
    return errors


CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Expose-Headers": "x-rate-rolling, x-rate-limit, x-rate-limit-remaining",
}


@web.middleware
async def cors_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.method == "OPTIONS" and request.headers.get("Access-Control-Request-Method"):
        return web.Response(
            status=204,
            headers={
                **CORS_HEADERS,
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Allow-Headers": request.headers.get(
                    "Access-Control-Request-Headers", "authorization, apikey, content-type, x-client-info"
                ),
                "Access-Control-Max-Age": "86400",
            },
        )
    response: web.StreamResponse
    try:
        response = await handler(request)
    except web.HTTPException as exc:
        # Raised, not returned: aiohttp deprecates returning an HTTPException (413 from request.read()).
        exc.headers.update(CORS_HEADERS)
        raise
    if not isinstance(response, web.WebSocketResponse) and not response.prepared:
        response.headers.update(CORS_HEADERS)
    return response


__all__ = ["DatabaseUnavailable", "RealtimeServer", "Socket"]
