"""The inspector: a server-rendered page at ``/`` to watch and poke a running server.

The page talks to the server over the product's own wire protocol (a plain browser
WebSocket, vsn 1.0.0 or 2.0.0), so what it shows is what any client would see. Its script
and stylesheet are served from this package; nothing is loaded from anywhere else.

``GET /api/inspector/stats`` reports sockets, channels, topics and message rates. Counts are
public (as ``/metrics`` is); topic names and per-socket details are shown in demo mode (the
embedded database, where the server holds the JWT secret and prints its keys anyway) or to a
``service_role`` token.

In demo mode the page carries a short-lived ``anon`` token minted at render time, so opening
it is enough to join a public channel; otherwise it asks for a key.
"""

from __future__ import annotations

import mimetypes
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jinja2
import orjson
from aiohttp import web

from . import __version__
from .auth import AuthError, Verifier, sign
from .channels import Registry
from .cluster import Cluster
from .config import Settings
from .diagnostics import Diagnostics
from .metrics import Metrics
from .postgres_bus import PostgresBus
from .session import Session
from .stream import MessageStream
from .tracker import PresenceTracker

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATE_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"
STATIC_PREFIX = "/inspector/static/"
STATS_PATH = "/api/inspector/stats"
#: The diagnostics of one topic (service_role only), under both API prefixes.
DIAGNOSTICS_PATHS = ("/api/diagnostics/topic/{topic:.+}", "/realtime/v1/api/diagnostics/topic/{topic:.+}")

#: Lifetime of the anon token rendered into the page in demo mode.
PAGE_TOKEN_LIFETIME_S = 8 * 3600
#: Message rates are averaged over this window.
RATE_WINDOW_S = 5.0
#: At most this many sockets are listed one by one.
MAX_LISTED_SOCKETS = 200
MAX_LISTED_NEAR_MISSES = 50

# Same origin only: the page's script, styles and WebSocket come from this server.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

INSPECTOR_KEY: web.AppKey[Inspector] = web.AppKey("inspector")


@dataclass(frozen=True)
class Sample:
    at: float
    messages: float
    deliveries: float


class Inspected(Protocol):
    """What the inspector reads of a running server."""

    settings: Settings
    verifier: Verifier
    metrics: Metrics
    registry: Registry
    stream: MessageStream | None
    started_at: float
    diagnostics: Diagnostics | None
    bus: PostgresBus | None
    cluster: Cluster | None
    tracker: PresenceTracker | None

    @property
    def sessions(self) -> list[Session]: ...


class Inspector:
    """The page, its static files and the stats endpoint for one server."""

    def __init__(self, server: Inspected) -> None:
        self.server = server
        self.env = jinja2.Environment(
            loader=jinja2.FileSystemLoader(TEMPLATE_DIR),
            autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
            undefined=jinja2.StrictUndefined,
        )
        self.static: dict[str, tuple[bytes, str]] = {}
        for path in sorted(STATIC_DIR.iterdir()):
            if path.is_file() and not path.name.startswith("."):
                content_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
                self.static[path.name] = (path.read_bytes(), content_type)
        self._samples: deque[Sample] = deque(maxlen=1000)

    # -- modes and counters --------------------------------------------------------------------
    @property
    def demo(self) -> bool:
        """The embedded database with our own HS secret: the keys are printed at start anyway."""
        settings = self.server.settings
        return settings.embedded and bool(settings.jwt_secret)

    def page_token(self) -> str | None:
        secret = self.server.settings.jwt_secret
        if not self.demo or not secret:
            return None
        now = int(time.time())
        claims = {"role": "anon", "iss": "pg-realtime", "iat": now, "exp": now + PAGE_TOKEN_LIFETIME_S}
        return sign(claims, secret)

    def counters(self) -> dict[str, dict[str, float]]:
        """Totals of the message counters by path, read from the server's Prometheus registry."""
        wanted = {"realtime_messages_in_total": "messages_in", "realtime_deliveries_total": "deliveries"}
        totals: dict[str, dict[str, float]] = {name: {} for name in wanted.values()}
        for family in self.server.metrics.registry.collect():
            for sample in family.samples:
                name = wanted.get(sample.name)
                if name is not None:
                    path = str(sample.labels.get("path", ""))
                    totals[name][path] = totals[name].get(path, 0.0) + float(sample.value)
        for by_path in totals.values():
            by_path["total"] = sum(by_path.values())
        return totals

    def rates(self, messages: float, deliveries: float, now: float | None = None) -> tuple[float, float]:
        """Messages and deliveries per second over the last RATE_WINDOW_S, from counter samples.

        Samples are taken when stats are asked for. The rate runs from the oldest earlier sample
        inside the window (or, after a pause in polling, the newest one before it) to now.
        """
        now = time.monotonic() if now is None else now
        samples = self._samples
        start = now - RATE_WINDOW_S
        # Keep at most one sample from before the window: the fallback baseline.
        while len(samples) > 1 and samples[1].at < start:
            samples.popleft()
        baseline = samples[0] if samples else None
        if len(samples) > 1 and samples[0].at < start:
            baseline = samples[1]
        samples.append(Sample(now, messages, deliveries))
        if baseline is None or now - baseline.at <= 0:
            return 0.0, 0.0
        elapsed = now - baseline.at
        return (
            max(0.0, (messages - baseline.messages) / elapsed),
            max(0.0, (deliveries - baseline.deliveries) / elapsed),
        )

    def may_see_topics(self, request: web.Request) -> bool:
        if self.demo:
            return True
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return False
        try:
            claims = self.server.verifier.verify(token.strip())
        except AuthError:
            return False
        return claims.get("role") == "service_role"

    def service_role(self, request: web.Request) -> int:
        """200 for a service_role token (Authorization: Bearer, or apikey), 401 without a valid
        token, 403 for any other role."""
        header = request.headers.get("Authorization", "")
        scheme, _, token = header.partition(" ")
        raw = token.strip() if scheme.lower() == "bearer" else ""
        raw = raw or request.headers.get("apikey", "").strip()
        if not raw:
            return 401
        try:
            claims = self.server.verifier.verify(raw)
        except AuthError:
            return 401
        return 200 if claims.get("role") == "service_role" else 403

    def near_misses(self) -> list[dict[str, Any]]:
        diagnostics = self.server.diagnostics
        if diagnostics is None:
            return []
        return [
            {
                "topic": r.subtopic,
                "cause": r.cause,
                "event": r.event,
                "private": r.private,
                "text": r.text,
                "fix": r.fix,
                "at": r.at,
                "count": r.count,
            }
            for r in diagnostics.recent()[:MAX_LISTED_NEAR_MISSES]
        ]

    def stats(self, detailed: bool) -> dict[str, Any]:
        server = self.server
        counters = self.counters()
        messages_in = counters["messages_in"]
        deliveries = counters["deliveries"]
        msg_rate, delivery_rate = self.rates(messages_in["total"], deliveries["total"])
        stream = server.stream
        sessions = server.sessions
        body: dict[str, Any] = {
            "version": __version__,
            "demo": self.demo,
            "uptime_s": round(time.time() - server.started_at, 1),
            "stream": {
                "live": bool(stream is not None and stream.live),
                # A reason may quote the database's host (connection errors do).
                "reason": (stream.reason if stream is not None else "no database configured")
                if detailed
                else None,
            },
            "sockets": len(sessions),
            "channels": server.registry.channel_count,
            "messages_in": messages_in,
            "deliveries": deliveries,
            "messages_per_second": round(msg_rate, 2),
            "deliveries_per_second": round(delivery_rate, 2),
            "detailed": detailed,
            "topics": None,
            "socket_list": None,
            "diagnostics": server.diagnostics is not None,
            "near_misses": None,
            "cluster": self.cluster_stats(detailed),
        }
        tracker = server.tracker
        body["presences_tracked"] = len(tracker.local) if tracker is not None else 0
        if detailed:
            # Presences of the topics whose presence state this sidecar keeps (a client here
            # enabled presence on them); None for the others.
            presences = tracker.counts() if tracker is not None else {}
            body["topics"] = [
                {
                    "topic": subtopic,
                    "private": private,
                    "subscribers": count,
                    "presences": presences.get((subtopic, private)),
                }
                for subtopic, private, count in sorted(server.registry.topics())
            ]
            listed = []
            for sock in sessions[:MAX_LISTED_SOCKETS]:
                listed.append(
                    {
                        "vsn": str(sock.vsn),
                        "role": sock.claims.get("role"),
                        "channels": [
                            {"topic": ch.subtopic, "private": ch.private}
                            for ch in sorted(sock.channels.values(), key=lambda ch: ch.key)
                        ],
                        "queued_bytes": sock.outbox.size,
                    }
                )
            body["socket_list"] = listed
            # Topics, events and what to change; never a payload.
            body["near_misses"] = self.near_misses()
        return body

    def cluster_stats(self, detailed: bool) -> dict[str, Any]:
        """The cluster bus's state and the sidecars of the registry (names and addresses in detail)."""
        bus, cluster = self.server.bus, self.server.cluster
        members = cluster.members if cluster is not None else []
        return {
            "bus": {
                "up": bus is not None and bus.down_reason is None,
                "reason": (bus.down_reason if bus is not None else "no database configured")
                if detailed
                else None,
            },
            "size": len(members),
            "sidecars": [
                {
                    "name": m.name,
                    "address": m.address,
                    "started_at": m.started_at,
                    "self": cluster is not None and m.id == cluster.id,
                }
                for m in members
            ]
            if detailed
            else None,
        }

    # -- handlers ------------------------------------------------------------------------------
    async def page(self, request: web.Request) -> web.Response:
        template = self.env.get_template("inspector.html")
        config = {
            "version": __version__,
            "demo": self.demo,
            "token": self.page_token(),
            "websocketPath": "/realtime/v1/websocket",
            "statsPath": STATS_PATH,
            "tokenLifetimeS": PAGE_TOKEN_LIFETIME_S,
        }
        html = template.render(
            version=__version__,
            demo=self.demo,
            config=config,
            static_prefix=STATIC_PREFIX,
            # The page is anyone's: the host only in demo mode, where it is this machine's.
            database=_describe_database(self.server.settings.database_url) if self.demo else "configured",
        )
        return web.Response(
            text=html,
            content_type="text/html",
            charset="utf-8",
            headers={
                "Content-Security-Policy": CONTENT_SECURITY_POLICY,
                "Cache-Control": "no-store",
                "X-Content-Type-Options": "nosniff",
                "Referrer-Policy": "no-referrer",
            },
        )

    async def static_file(self, request: web.Request) -> web.Response:
        entry = self.static.get(request.match_info["name"])
        if entry is None:
            return web.Response(status=404, text="404: Not Found")
        body, content_type = entry
        return web.Response(
            body=body,
            content_type=content_type,
            headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"},
        )

    async def diagnostics_endpoint(self, request: web.Request) -> web.Response:
        """``GET /api/diagnostics/topic/<topic>``: what became of the topic's recent messages.

        Asking starts recording every message of the topic for the next few minutes (until then
        only those that missed subscribers they nearly reached are kept)."""
        status = self.service_role(request)
        headers = {"Cache-Control": "no-store"}
        if status != 200:
            error = "a service_role key is required" if status == 403 else "missing or invalid key"
            return web.Response(
                status=status,
                body=orjson.dumps({"error": error}),
                content_type="application/json",
                headers=headers,
            )
        diagnostics = self.server.diagnostics
        if diagnostics is None:
            return web.Response(
                status=404,
                body=orjson.dumps({"error": "diagnostics are off (--no-diagnostics)"}),
                content_type="application/json",
                headers=headers,
            )
        topic = request.match_info["topic"]
        diagnostics.trace(topic)
        stream = self.server.stream
        if stream is not None:
            # A reader paused for want of channels reads again before the answer: what is sent
            # after it is recorded.
            await stream.resume()
        # Payloads go to service_role callers only, and only they get this far.
        body = diagnostics.report(topic, with_payloads=True)
        body["sidecar"] = f"{request.host}"
        body["now"] = time.time()
        return web.Response(body=orjson.dumps(body), content_type="application/json", headers=headers)

    async def stats_endpoint(self, request: web.Request) -> web.Response:
        body = self.stats(detailed=self.may_see_topics(request))
        return web.Response(
            body=orjson.dumps(body),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )


def _describe_database(url: str | None) -> str:
    """Where the server reads from, without credentials."""
    if not url:
        return "no database configured"
    from psycopg.conninfo import conninfo_to_dict

    try:
        params = conninfo_to_dict(url)
    except Exception:
        return "configured"
    host = params.get("host") or "local socket"
    port = params.get("port") or "5432"
    dbname = params.get("dbname") or ""
    return f"{host}:{port}/{dbname}"


def setup_inspector(app: web.Application, server: Inspected) -> Inspector:
    """Add the inspector's routes to the server's application."""
    inspector = Inspector(server)
    app[INSPECTOR_KEY] = inspector
    app.add_routes(
        [
            web.get("/", inspector.page),
            web.get(STATIC_PREFIX + "{name}", inspector.static_file),
            web.get(STATS_PATH, inspector.stats_endpoint),
            *(web.get(path, inspector.diagnostics_endpoint) for path in DIAGNOSTICS_PATHS),
        ]
    )
    return inspector


__all__ = ["INSPECTOR_KEY", "Inspector", "setup_inspector"]
