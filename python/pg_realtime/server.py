"""The aiohttp application: it wires the pieces together and owns their lifecycle.

Routes: the WebSocket (``pump.Connection`` around a ``session.Session``), the REST API
(``rest.RestApi``), ``/healthz``, ``/metrics`` and the inspector. At start it opens the pool
(``database.Database``), starts the commit-safe reader (``stream.MessageStream``) that feeds
committed rows into the one broadcast step (``broadcast.Broadcaster``), and runs maintenance.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import resource
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from . import phoenix
from .auth import AuthError, Verifier
from .bus import ClusterBroadcaster
from .channels import Registry
from .cluster import Cluster, register_collector
from .config import Settings
from .database import Database
from .diagnostics import CAUSES, LOG_PERIOD_S, Diagnostics
from .inspector import INSPECTOR_KEY, setup_inspector
from .limits import RateWindow, SessionLimits
from .logs import RateLimitedLog, printable
from .metrics import BusMetrics, Metrics
from .postgres_bus import BusRefused, PostgresBus, read_attachments
from .pump import Connection
from .rest import RestApi, bearer, json_response
from .session import Session, SessionContext
from .stream import MessageStream, StreamState
from .tracker import PresenceTracker
from .tracker import register_collector as register_presence_collector

log = logging.getLogger("pg_realtime")

WEBSOCKET_PATHS = ("/realtime/v1/websocket", "/socket/websocket")
API_PREFIXES = ("/realtime/v1/api", "/api")
GOING_AWAY = 1001

SERVER_KEY: web.AppKey[RealtimeServer] = web.AppKey("realtime_server")


class RealtimeServer:
    """Owns the registry, the database pool and reader, and the aiohttp application."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.verifier = Verifier.from_config(
            settings.jwt_secret, settings.jwks, settings.claim_validators, settings.roles
        )
        self.max_connections = settings.max_connections or connection_limit(settings.db_pool_size)
        self.trusted_proxies = settings.trusted_proxy_networks
        #: Open sockets by client address, for the per-address cap.
        self.per_address: dict[str, int] = {}
        self.refusal_log = RateLimitedLog(log)
        self.registry = Registry()
        self.metrics = Metrics()
        self.diagnostics: Diagnostics | None = None
        if settings.diagnostics:
            self.diagnostics = Diagnostics(
                self.registry,
                {cause: self.metrics.undelivered.labels(cause) for cause in CAUSES},
                RateLimitedLog(log, period_s=LOG_PERIOD_S),
            )
            self.registry.attach(self.diagnostics.index)
        self.broadcaster = ClusterBroadcaster(self.registry, self.metrics, diagnostics=self.diagnostics)
        self.connections: set[Connection] = set()
        events = RateWindow(settings.max_events_per_second)
        self.database: Database | None = None
        self.stream: MessageStream | None = None
        self.bus: PostgresBus | None = None
        self.cluster: Cluster | None = None
        self.tracker: PresenceTracker | None = None
        #: host:port this sidecar serves on, as the sidecar registry lists it (see ``listening_on``).
        self.address = f"{settings.host}:{settings.port}"
        if settings.database_url:
            self.database = Database(settings.database_url, settings.db_pool_size, self._database_down)
            self._setup_cluster(settings.database_url, self.database)
            self.stream = MessageStream(
                settings.database_url,
                self.broadcaster.rows,
                on_presence=self.tracker.events if self.tracker is not None else None,
                poll_interval=settings.poll_interval_ms / 1000,
                on_state=self._stream_state,
                wanted=self._stream_wanted,
            )
            self.metrics.watch_stream(self.stream)
        refusals = self.metrics.refusals
        self.session_context = SessionContext(
            registry=self.registry,
            verifier=self.verifier,
            relay=self.broadcaster,
            limits=SessionLimits.from_settings(settings),
            joins=RateWindow(settings.max_joins_per_second),
            events=events,
            refused=lambda reason: refusals.labels(reason).inc(),
            slow_consumer=self.metrics.slow_consumers.inc,
            log_refusal=self._log_refusal,
            stream_live=lambda: self.stream is not None and self.stream.live,
            stream_paused=lambda: self.stream is not None and self.stream.paused,
            presence_events=RateWindow(settings.max_presence_events_per_second),
            **self._presence(),
            **self._diagnostics_hooks(),
        )
        self.rest = RestApi(
            self.verifier,
            self.database,
            self.broadcaster,
            events,
            settings.max_payload_bytes,
            self.metrics,
            max_batch_messages=settings.rest_max_batch_messages,
            max_batch_private_topics=settings.rest_max_batch_private_topics,
        )
        self._tasks: list[asyncio.Task[None]] = []
        self.stopping = False
        self.started_at = time.time()
        self.app = self._build_app()

    # -- the cluster: bus and sidecar registry ----------------------------------------------
    def _setup_cluster(self, url: str, database: Database) -> None:
        registry = self.registry
        bus_metrics = BusMetrics(self.metrics.registry)

        async def fetch(origin: str, numbers: list[int]) -> dict[int, bytes]:
            return await read_attachments(database, origin, numbers)

        self.bus = PostgresBus(
            url,
            self.broadcaster.remote,
            fetch,
            bus_metrics,
            interested=lambda subtopic, private: (
                next(registry.subscribers(subtopic, private), None) is not None
            ),
        )
        self.broadcaster.bus = self.bus
        cluster = self.cluster = Cluster(
            database, lambda: self.address, on_queue_usage=bus_metrics.queue_usage.set
        )
        register_collector(self.metrics.registry, cluster)
        tracker = self.tracker = PresenceTracker(registry, database, cluster.id, cluster.renew)
        cluster.on_rejoined = tracker.rejoined
        register_presence_collector(self.metrics.registry, tracker)

    def listening_on(self, host: str, port: int) -> None:
        """Where the server listens, once its socket is bound (the port may have been 0)."""
        self.address = f"{host}:{port}"
        if self.cluster is not None:
            self.cluster.poke()

    @property
    def sessions(self) -> list[Session]:
        return [connection.session for connection in self.connections]

    # -- lifecycle --------------------------------------------------------------------------
    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[cors_middleware], client_max_size=self.settings.max_frame_bytes)
        app[SERVER_KEY] = self
        routes = [web.get("/healthz", self.healthz), web.get("/metrics", self.metrics_endpoint)]
        for path in WEBSOCKET_PATHS:
            routes.append(web.get(path, self.websocket))
        for prefix in API_PREFIXES:
            routes.extend(self.rest.routes(prefix))
        app.add_routes(routes)
        setup_inspector(app, self)
        app.cleanup_ctx.append(self._lifespan)
        app.on_shutdown.append(self._on_shutdown)
        return app

    async def _lifespan(self, app: web.Application) -> AsyncIterator[None]:
        if self.database is not None and self.stream is not None:
            await self.database.open()
            if self.bus is not None:
                try:
                    await self.bus.start()
                except BusRefused:
                    await self.database.close()
                    raise
            self._tasks.append(asyncio.create_task(self.stream.run(), name="stream"))
            if self.cluster is not None:
                self._tasks.append(asyncio.create_task(self.cluster.run(), name="cluster"))
            if self.tracker is not None:
                self._tasks.append(asyncio.create_task(self.tracker.run(), name="presence"))
            self._tasks.append(
                asyncio.create_task(
                    self.database.maintain_forever(
                        self.settings.retention, self.settings.maintain_interval_s
                    ),
                    name="maintain",
                )
            )
        yield
        if self.stream is not None:
            self.stream.stop()
        if self.tracker is not None:
            # Before leaving the registry: a batch written after it would register this sidecar again.
            self.tracker.stop()
        if self.cluster is not None:
            await self.cluster.leave()
        if self.bus is not None:
            await self.bus.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self.database is not None:
            await self.database.close()

    async def _on_shutdown(self, app: web.Application) -> None:
        self.stopping = True
        for connection in list(self.connections):
            connection.begin_close(GOING_AWAY)
        deadline = time.monotonic() + self.settings.shutdown_timeout_s
        while self.connections and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def _stream_wanted(self) -> bool:
        """Whether anything here wants committed messages: a joined channel, or a topic the
        near-miss diagnostics watch (a refused join or a slow consumer of late, a trace asked for).
        With neither, every message would reach nobody, so the reader pauses."""
        if self.registry.channel_count > 0:
            return True
        return self.diagnostics is not None and bool(self.diagnostics.watched)

    def _stream_state(self, state: StreamState, reason: str) -> None:
        self.metrics.stream_up.set(1 if state is StreamState.LIVE else 0)
        if state is StreamState.LIVE:
            log.info("database stream live")
        elif state is StreamState.DOWN:
            log.warning("database stream down: %s", reason)

    def _log_refusal(self, metric: str, topic: str, text: str) -> None:
        self.refusal_log.log(
            logging.INFO, f"join:{metric}", "join of %s refused: %s", printable(topic), printable(text)
        )

    def _presence(self) -> dict[str, Any]:
        return {} if self.tracker is None else {"presence": self.tracker}

    def _diagnostics_hooks(self) -> dict[str, Any]:
        diagnostics = self.diagnostics
        if diagnostics is None:
            return {}
        return {"on_refused_join": diagnostics.refused_join, "on_slow_consumer": diagnostics.slow_consumer}

    def _database_down(self) -> str | None:
        # Fail fast while the reader says the database is away, instead of waiting for a pool timeout.
        if self.stream is not None and self.stream.state is StreamState.DOWN:
            return self.stream.reason
        return None

    # -- HTTP handlers ----------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        if self.stopping:
            status, state, reason = "stopping", "stopping", "server is shutting down"
        elif self.stream is None:
            status, state, reason = "unavailable", "no_database", "no database configured"
        elif not self.stream.live:
            status, state, reason = "unavailable", f"stream_{self.stream.state.value}", self.stream.reason
        elif self.bus is not None and self.bus.down_reason is not None:
            status, state, reason = "unavailable", "bus_down", self.bus.down_reason
        else:
            return json_response(200, {"status": "ok", "state": "live"})
        body = {"status": status, "state": state}
        # A reason may quote the database's host (connection errors do): the diagnostics key only.
        if request.app[INSPECTOR_KEY].service_role(request) == 200:
            body["reason"] = reason
        return json_response(503, body)

    async def metrics_endpoint(self, request: web.Request) -> web.Response:
        self.metrics.sockets.set(len(self.connections))
        self.metrics.channels.set(self.registry.channel_count)
        return web.Response(body=self.metrics.render(), content_type="text/plain", charset="utf-8")

    async def websocket(self, request: web.Request) -> web.StreamResponse:
        if self.stopping:
            return json_response(503, {"error": "Server is shutting down"})
        vsn = phoenix.parse_vsn(request.query.get("vsn"))
        if vsn is None:
            # As Phoenix answers a serializer it does not have: 403 with an empty body.
            return web.Response(status=403)
        headers = request.headers
        token = headers.get("x-api-key") or request.query.get("apikey") or headers.get("apikey")
        token = token or bearer(headers.get("Authorization"))
        try:
            claims = self.verifier.verify(token)
        except AuthError as exc:
            self.metrics.refusals.labels("invalid_token").inc()
            # As the reference server: a misconfigured client retries no faster than this.
            await asyncio.sleep(self.settings.refused_connect_delay_ms / 1000)
            return json_response(401, {"error": exc.http_message})
        if len(self.connections) >= self.max_connections:
            self.metrics.refusals.labels("max_connections").inc()
            return json_response(429, {"error": "Too many connected users"})
        address = client_address(request, self.trusted_proxies)
        per_address = self.settings.max_connections_per_address
        if per_address and self.per_address.get(address, 0) >= per_address:
            self.metrics.refusals.labels("max_connections_per_address").inc()
            self.refusal_log.log(
                logging.WARNING, "per-address", "too many sockets from %s", printable(address)
            )
            return json_response(429, {"error": "Too many connected users"})
        ws = web.WebSocketResponse(
            max_msg_size=self.settings.max_frame_bytes,
            compress=False,  # frames are encoded once for many sockets; per-socket deflate would undo that
            autoping=True,
            heartbeat=None,
        )
        if not ws.can_prepare(request).ok:
            return json_response(400, {"error": "Expected a WebSocket upgrade"})
        await ws.prepare(request)
        refusals = self.metrics.refusals
        connection = Connection(
            ws,
            self.session_context,
            vsn,
            token or "",
            claims,
            self.database,
            request.transport,
            self.settings.idle_timeout_s,
            on_idle_timeout=lambda: refusals.labels("idle_timeout").inc(),
            tracker=self.tracker,
            stream=self.stream,
        )
        self.connections.add(connection)
        self.per_address[address] = self.per_address.get(address, 0) + 1
        self.metrics.sockets.set(len(self.connections))
        try:
            await connection.serve()
        finally:
            self.connections.discard(connection)
            left = self.per_address.get(address, 1) - 1
            if left > 0:
                self.per_address[address] = left
            else:
                self.per_address.pop(address, None)
            self.metrics.sockets.set(len(self.connections))
            self.metrics.channels.set(self.registry.channel_count)
        return ws


def connection_limit(pool_size: int) -> int:
    """Sockets this process can hold: its file-descriptor limit, less what the rest needs."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        soft = 1 << 20
    # The database pool, the reader, listening sockets, logs and files the process opens.
    reserve = pool_size + 64
    return max(1, soft - reserve)


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_address(request: web.Request, trusted: tuple[Network, ...]) -> str:
    """The client's address: the peer's, or behind a trusted proxy the one it forwarded for.

    X-Forwarded-For is read right to left, skipping trusted proxies: anything left of the first
    untrusted hop was written by the client and proves nothing.
    """
    peer = request.remote or ""
    if not trusted or not _is_trusted(peer, trusted):
        return peer
    hops = [
        hop.strip() for value in request.headers.getall("X-Forwarded-For", []) for hop in value.split(",")
    ]
    for hop in reversed([h for h in hops if h]):
        if not _is_trusted(hop, trusted):
            return hop
    return peer


def _is_trusted(address: str, trusted: tuple[Network, ...]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


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


__all__ = ["RealtimeServer"]
