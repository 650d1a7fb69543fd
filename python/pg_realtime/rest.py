"""The REST broadcast API: ``POST /api/broadcast`` (a batch) and the single-message endpoint.

Bodies, codes and texts are the reference server's. A batch is checked whole before anything
is sent; private topics need the caller's RLS write permission, checked once per topic.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import orjson
from aiohttp import web

from .auth import AuthError
from .broadcast import Broadcast, Broadcaster
from .database import Database, DatabaseUnavailable
from .join import flexible_bool
from .limits import RateWindow
from .logs import printable
from .metrics import Metrics
from .phoenix import PayloadEncoding, UserBroadcast
from .policies import PolicyError
from .session import TokenVerifier

log = logging.getLogger("pg_realtime")

RATE_EXCEEDED = {"message": "You have exceeded your rate limit"}
BATCH_TOO_LARGE = {"message": "Too many messages to broadcast, please reduce the batch size"}
PAYLOAD_TOO_LARGE = {"errors": {"payload": ["Payload size exceeds tenant limit"]}}


def json_response(status: int, body: Any) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(body), content_type="application/json")


def bearer(value: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def validate_message(message: Any) -> dict[str, list[str]]:
    """The reference server's changeset errors for one batch entry ({} when valid)."""
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
    if private is not None and not isinstance(private, bool) and not _is_boolean_text(private):
        errors["private"] = ["is invalid"]
    message_id = message.get("id")
    if message_id is not None and not _is_uuid(message_id):
        errors["id"] = ["is invalid"]
    return errors


def _is_boolean_text(value: Any) -> bool:
    # Ecto's :boolean cast accepts these strings, and nothing else.
    return isinstance(value, str) and value.lower() in ("true", "false", "1", "0")


def _batch_private(value: Any) -> bool:
    """A batch entry's ``private``, cast as Ecto's :boolean casts it."""
    if isinstance(value, str):
        return value.lower() in ("true", "1")
    return value is True


def _is_uuid(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


class RestApi:
    def __init__(
        self,
        verifier: TokenVerifier,
        database: Database | None,
        broadcaster: Broadcaster,
        events: RateWindow,
        max_payload_bytes: int,
        metrics: Metrics,
        max_batch_messages: int = 0,
        max_batch_private_topics: int = 0,
    ) -> None:
        self.max_batch_messages = max_batch_messages
        self.max_batch_private_topics = max_batch_private_topics
        self.verifier = verifier
        self.database = database
        self.broadcaster = broadcaster
        self.events = events
        self.max_payload_bytes = max_payload_bytes
        self.metrics = metrics

    def _refused(self, reason: str) -> None:
        self.metrics.refusals.labels(reason).inc()

    def _claims(self, request: web.Request) -> dict[str, Any] | None:
        token = bearer(request.headers.get("Authorization")) or request.headers.get("apikey")
        if not token:
            return None
        try:
            return self.verifier.verify(token)
        except AuthError:
            return None

    async def _can_write(self, topic: str, claims: dict[str, Any]) -> bool:
        if self.database is None:
            raise DatabaseUnavailable("no database configured")
        return await self.database.can_write(topic, claims)

    async def batch(self, request: web.Request) -> web.Response:
        claims = self._claims(request)
        if claims is None:
            self._refused("rest_unauthorized")
            return json_response(401, {"message": "Unauthorized"})
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return json_response(400, {"message": "Malformed JSON body"})
        messages = body.get("messages") if isinstance(body, dict) else None
        if not isinstance(messages, list) or not messages:
            return json_response(422, {"errors": {"messages": ["can't be blank"]}})
        if self.max_batch_messages and len(messages) > self.max_batch_messages:
            self._refused("batch_size")
            return json_response(429, BATCH_TOO_LARGE)
        errors = [validate_message(message) for message in messages]
        if any(errors):
            return json_response(422, {"errors": {"messages": errors}})
        oversize = [len(orjson.dumps(m["payload"])) > self.max_payload_bytes for m in messages]
        if any(oversize):
            # As upstream's embedded changesets: the error sits in the offending entry.
            self._refused("payload_size")
            entries = [PAYLOAD_TOO_LARGE["errors"] if big else {} for big in oversize]
            return json_response(422, {"errors": {"messages": entries}})
        private_topics = {m["topic"] for m in messages if _batch_private(m.get("private"))}
        if self.max_batch_private_topics and len(private_topics) > self.max_batch_private_topics:
            # Each private topic is a policy check in the database: bound the work one request buys.
            self._refused("batch_size")
            return json_response(429, BATCH_TOO_LARGE)
        if not self.events.allow(cost=len(messages)):
            self._refused("events_per_second")
            if len(messages) > 1 and self.events.allow(cost=1):
                return json_response(429, BATCH_TOO_LARGE)
            return json_response(429, RATE_EXCEEDED)
        allowed: dict[str, bool] = {}
        accepted: list[tuple[str, bool, Broadcast]] = []
        for message in messages:
            private = _batch_private(message.get("private"))
            topic = message["topic"]
            if private:
                if topic not in allowed:
                    if _gone(request):
                        # The client left: stop spending the database on its answer.
                        log.info("REST batch abandoned by its client after %d topics", len(allowed))
                        return web.Response(status=499)
                    try:
                        allowed[topic] = await self._can_write(topic, claims)
                    except (PolicyError, DatabaseUnavailable) as exc:
                        log.warning("RlsPolicyError: REST write check on %s failed: %s", topic, exc)
                        allowed[topic] = False
                if not allowed[topic]:
                    self._refused("unauthorized_write")
                    continue  # the reference server skips the topic and still answers 202
            payload: dict[str, Any] = {
                "type": "broadcast",
                "event": message["event"],
                "payload": message["payload"],
            }
            if isinstance(message.get("id"), str):
                payload["meta"] = {"id": message["id"]}
            accepted.append((topic, private, payload))
        self.broadcaster.rest(accepted)
        return web.Response(status=202)

    async def single(self, request: web.Request) -> web.Response:
        claims = self._claims(request)
        if claims is None:
            self._refused("rest_unauthorized")
            return json_response(401, {"message": "Unauthorized"})
        topic = request.match_info["topic"]
        event = request.match_info["event"]
        content_type = request.headers.get("Content-Type", "")
        media = content_type.split(";", 1)[0].strip().lower()
        body = await request.read()
        if media in ("", "application/json"):
            try:
                # Without a Content-Type the reference server leaves the body unparsed: {}.
                value = orjson.loads(body) if body and media else {}
            except orjson.JSONDecodeError:
                return json_response(400, {"message": "Malformed JSON body"})
            if not isinstance(value, dict):
                # Phoenix's JSON parser wraps a non-object body this way; keep the same shape.
                value = {"_json": value}
            message = UserBroadcast(event, orjson.dumps(value), PayloadEncoding.JSON, {})
        elif media == "application/octet-stream":
            message = UserBroadcast(event, body, PayloadEncoding.BINARY, {})
        else:
            return json_response(
                415, {"error": "Unsupported Media Type. Use application/json or application/octet-stream"}
            )
        if not topic or not event:
            return json_response(422, {"errors": {"topic": ["can't be blank"]}})
        if len(message.payload) > self.max_payload_bytes:
            self._refused("payload_size")
            return json_response(422, PAYLOAD_TOO_LARGE)
        if not self.events.allow():
            self._refused("events_per_second")
            return json_response(429, RATE_EXCEEDED)
        private = flexible_bool(request.query.get("private"), False)
        if private:
            try:
                allowed = await self._can_write(topic, claims)
            except PolicyError as exc:
                # The database's text is the operator's, not the caller's.
                log.warning("RlsPolicyError: REST write check on %s failed: %s", printable(topic), exc)
                return json_response(422, {"message": "RLS policy error"})
            except DatabaseUnavailable as exc:
                log.warning("UnableToConnectToProject: REST write check on %s: %s", printable(topic), exc)
                return json_response(422, {"message": "Tenant database unavailable"})
            if not allowed:
                self._refused("unauthorized_write")
                return json_response(403, {"message": "Unauthorized"})
        self.broadcaster.rest([(topic, private, message)])
        return web.Response(status=202)

    def routes(self, prefix: str) -> list[web.RouteDef]:
        return [
            web.post(f"{prefix}/broadcast", self.batch),
            web.post(prefix + "/broadcast/{topic}/events/{event}", self.single),
        ]
