"""The channel rules of one socket, as a state machine with no I/O.

A :class:`Session` takes decoded frames (:meth:`Session.receive`), clock ticks
(:meth:`Session.tick`) and the answers to its own requests (:meth:`Session.answer`). It queues
the frames to send in its :class:`~pg_realtime.channels.Outbox` and, when a rule needs the
database, stops with a request in :attr:`Session.pending`: a read check, a write check, a
replay query, a presence state or a presence track. Whoever drives it performs the request and
calls :meth:`Session.answer` with the result, a plain value or a :data:`Failure`; the rule then
goes on where it stopped. Only one frame is in progress at a time, so frames are handled in the
order they arrived.

The rules are written as generators (``answer = yield ReadCheck(...)``), in the manner of
psycopg's generators: the logic reads top to bottom while the waiting happens outside.
No ``await``, sockets or database here; ``pump.py`` is the shell that does the I/O.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from . import phoenix, reasons
from .auth import AuthError
from .broadcast import row_frame
from .channels import Channel, Frame, Outbox, Registry
from .join import JoinRequest, binding_id
from .limits import RateWindow, SessionLimits
from .logs import printable
from .phoenix import Message, UserBroadcast, Vsn
from .presence import ClientPresenceLimit, PresenceSnapshot, presence_key
from .queries import (
    Answer,
    PolicyFailed,
    PresenceSync,
    PresenceTrack,
    ReadCheck,
    ReplayQuery,
    Request,
    Unavailable,
    WriteCheck,
)
from .rows import Row

log = logging.getLogger("pg_realtime")

#: The longest subtopic a join may name, in UTF-8 bytes.
MAX_TOPIC_BYTES = 255
#: Joined channels have their token and read policy checked again this often (as upstream).
RECHECK_INTERVAL_S = 300.0
#: ``replication_ready``: how long the notice may wait for the reader, and how often to look.
REPLICATION_READY_TIMEOUT_S = 60.0
READY_POLL_S = 0.5
SLOW_CONSUMER_CLOSE = 1008  # policy violation: the client stopped reading
POLICY_VIOLATION = 1008
NORMAL_CLOSE = 1000


_Rule = Generator[Request, Answer, None]


# -- what a session uses ------------------------------------------------------------------------
class TokenVerifier(Protocol):
    def verify(self, raw_token: str | None, now: float | None = None) -> dict[str, Any]: ...


class Relay(Protocol):
    """Where a client's broadcast goes: every matching subscriber but ``exclude``."""

    def relay(
        self,
        subtopic: str,
        private: bool,
        message: UserBroadcast | dict[str, Any],
        exclude: Channel | None = None,
    ) -> int: ...


class PresenceSink(Protocol):
    """Where a channel's presence goes when it stops tracking (untrack, leave, close)."""

    def untrack(self, channel: Channel) -> None: ...


class _NoPresence:
    def untrack(self, channel: Channel) -> None:
        return None


def _ignore_refusal(reason: str) -> None:
    return None


def _ignore() -> None:
    return None


def _ignore_refused_join(subtopic: str, private: bool, metric: str, text: str) -> None:
    return None


def _ignore_keys(keys: list[tuple[str, bool]]) -> None:
    return None


def _log_refusal(metric: str, topic: str, text: str) -> None:
    log.info("join of %s refused: %s", printable(topic), printable(text))


@dataclass(frozen=True)
class SessionContext:
    """What all sessions of a server share: the registry, the token verifier, the relay, and
    the server-wide rate windows. ``refused`` counts refusals by reason and ``slow_consumer``
    the sockets closed for not reading (both for /metrics)."""

    registry: Registry
    verifier: TokenVerifier
    relay: Relay
    limits: SessionLimits = field(default_factory=SessionLimits)
    joins: RateWindow = field(default_factory=lambda: RateWindow(0))
    events: RateWindow = field(default_factory=lambda: RateWindow(0))
    refused: Callable[[str], None] = _ignore_refusal
    slow_consumer: Callable[[], None] = _ignore
    #: Logs a refused join: (metric, topic, text); the server's is rate-limited and escapes the topic.
    log_refusal: Callable[[str, str, str], None] = _log_refusal
    #: Whether the reader of committed messages is live (for ``replication_ready``).
    stream_live: Callable[[], bool] = lambda: True
    #: Near-miss diagnostics: a refused join (subtopic, private, metric, text), and the channel
    #: keys (subtopic, private) of a socket about to be closed as a slow consumer.
    on_refused_join: Callable[[str, bool, str, str], None] = _ignore_refused_join
    on_slow_consumer: Callable[[list[tuple[str, bool]]], None] = _ignore_keys
    #: Presence: the tracker, and the server-wide window of presence events (upstream's
    #: max_presence_events_per_second, counting tracks and presence states sent).
    presence: PresenceSink = field(default_factory=_NoPresence)
    presence_events: RateWindow = field(default_factory=lambda: RateWindow(0))


class Session:
    """One socket's channels, their rules, and the frames it has to send."""

    def __init__(
        self,
        context: SessionContext,
        vsn: Vsn,
        token: str,
        claims: dict[str, Any],
        wakeup: Callable[[], None] = lambda: None,
        now: float | None = None,
    ) -> None:
        self.context = context
        self.vsn = vsn
        self.token = token
        self.claims = claims
        self.channels: dict[str, Channel] = {}
        self.outbox = Outbox(context.limits.outbox_limit_bytes, wakeup)
        self.events = RateWindow(context.limits.max_events_per_second)
        #: Set once the socket is to be closed; the shell closes it with ``close_code``.
        self.closing = False
        self.close_code: int | None = None
        #: The request the rule in progress waits for; answer it before the next frame.
        self.pending: Request | None = None
        self.now = time.time() if now is None else now
        self._rule: _Rule | None = None
        self.joins = RateWindow(context.limits.max_joins_per_second)
        #: Join refusals waiting for their delay: (due, frame), oldest first.
        self._deferred: list[tuple[float, Frame]] = []
        #: Since when the socket holds no channel (None while it holds one).
        self._empty_since: float | None = self.now
        self._token_expires_at = self._expiry(claims)

    # -- inputs ---------------------------------------------------------------------------------
    def receive(self, msg: Message, size: int, now: float | None = None) -> None:
        """Handle one decoded frame of ``size`` bytes on the wire."""
        if self.pending is not None:
            raise RuntimeError("a request is pending: answer it before the next frame")
        self._clock(now)
        self._advance(self._handle(msg, size), None)

    def answer(self, result: Answer, now: float | None = None) -> None:
        """Give the pending request its result; the rule that asked goes on."""
        rule = self._rule
        if rule is None or self.pending is None:
            raise RuntimeError("no request is pending")
        self._rule = None
        self.pending = None
        self._clock(now)
        self._advance(rule, result)

    def abandon(self) -> None:
        """Drop the rule in progress (its request failed in a way the rule cannot handle)."""
        self._rule = None
        self.pending = None
        for channel in list(self.channels.values()):
            if channel.held is not None:  # a join that was replaying: it never completed
                channel.held = None
                self._leave(channel)

    def tick(self, now: float | None = None) -> None:
        """Send the join refusals that are due, expire channels whose token has expired, and close
        a socket that has held no channel for too long or whose own token expired with none left."""
        self._clock(now)
        while self._deferred and self._deferred[0][0] <= self.now:
            self.send(self._deferred.pop(0)[1])
        for channel in list(self.channels.values()):
            if channel.expires_at is not None and channel.expires_at <= self.now:
                self._expire(channel)
            elif channel.ready_deadline is not None:
                self._announce_ready(channel)
        if self.pending is None and not self.closing:
            due = [
                ch for ch in self.channels.values() if ch.recheck_at is not None and ch.recheck_at <= self.now
            ]
            if due:
                # One channel at a time: a rule started here is driven like a frame's.
                self._advance(self._recheck(min(due, key=lambda ch: ch.recheck_at or 0.0)), None)
        if not self.channels and not self.closing and self.pending is None:
            timeout = self.context.limits.no_channel_timeout_s
            if timeout and self._empty_since is not None and self.now >= self._empty_since + timeout:
                self.context.refused("no_channel_timeout")
                self.begin_close(NORMAL_CLOSE)
            elif self._token_expires_at is not None and self.now >= self._token_expires_at:
                self.context.refused("token_expired")
                self.begin_close(POLICY_VIOLATION)

    def next_deadline(self) -> float | None:
        """When :meth:`tick` has something to do next (epoch seconds), None if never."""
        deadlines = [ch.expires_at for ch in self.channels.values() if ch.expires_at is not None]
        deadlines += [ch.recheck_at for ch in self.channels.values() if ch.recheck_at is not None]
        if any(ch.ready_deadline is not None for ch in self.channels.values()):
            deadlines.append(self.now + READY_POLL_S)
        if self._deferred:
            deadlines.append(self._deferred[0][0])
        if not self.channels and not self.closing:
            timeout = self.context.limits.no_channel_timeout_s
            if timeout and self._empty_since is not None:
                deadlines.append(self._empty_since + timeout)
            if self._token_expires_at is not None:
                deadlines.append(self._token_expires_at)
        return min(deadlines) if deadlines else None

    def begin_close(self, code: int) -> None:
        """Stop delivering to this socket now; the shell sends what is queued, then closes."""
        if self.closing:
            return
        self.closing = True
        self.close_code = code
        self.outbox.closed = True
        self.leave_all()
        self.outbox.wake()

    def leave_all(self) -> None:
        for channel in list(self.channels.values()):
            self._leave(channel)

    # -- output (also the Peer of this socket's channels) ---------------------------------------
    def send(self, frame: Frame) -> None:
        if not self.outbox.push(frame) and self.outbox.overflowed and not self.closing:
            self.context.slow_consumer()
            self.context.on_slow_consumer([channel.key for channel in self.channels.values()])
            self.begin_close(SLOW_CONSUMER_CLOSE)

    @property
    def slow_consumer(self) -> bool:
        return self.outbox.overflowed

    def _reply(self, msg: Message, status: str, response: Any) -> None:
        self.send(phoenix.encode_reply(self.vsn, msg.join_ref, msg.ref, msg.topic, status, response))

    def _unmatched(self, msg: Message) -> None:
        # Phoenix's own reply for a topic no channel serves: it carries no join_ref.
        self.send(
            phoenix.encode_reply(
                self.vsn, None, msg.ref, msg.topic, "error", {"reason": reasons.UNMATCHED_TOPIC}
            )
        )

    def _system(self, channel: Channel, extension: str, status: str, message: str) -> None:
        self._push(
            channel,
            "system",
            {"extension": extension, "status": status, "message": message, "channel": channel.subtopic},
        )

    def _push(self, channel: Channel, event: str, payload: Any) -> None:
        self.send(phoenix.encode_push(self.vsn, channel.join_ref, channel.topic, event, payload))

    def _close_channel(self, channel: Channel) -> None:
        """phx_close for a channel the server ends (reference: ref = join_ref)."""
        self.send(
            phoenix.encode_push(
                self.vsn, channel.join_ref, channel.topic, "phx_close", {}, ref=channel.join_ref
            )
        )

    # -- driving the rules ----------------------------------------------------------------------
    def _clock(self, now: float | None) -> None:
        self.now = time.time() if now is None else now

    def _advance(self, rule: _Rule, value: Answer | None) -> None:
        try:
            request = rule.send(value) if value is not None else next(rule)
        except StopIteration:
            return
        self._rule = rule
        self.pending = request

    # -- channel bookkeeping --------------------------------------------------------------------
    def _leave(self, channel: Channel) -> None:
        # Leaving, closing and dying all end the channel's presence (a no-op if it tracks none).
        self.context.presence.untrack(channel)
        channel.presence_payload = None
        if self.channels.get(channel.topic) is channel:
            del self.channels[channel.topic]
            if not self.channels:
                self._empty_since = self.now
        self.context.registry.remove(channel)

    def _shutdown_channel(self, channel: Channel, message: str) -> None:
        """The reference server's channel shutdown: a system error, then phx_close."""
        self._push(
            channel,
            "system",
            {"extension": "system", "status": "error", "message": message, "channel": channel.subtopic},
        )
        self._close_channel(channel)
        self._leave(channel)

    def _expire(self, channel: Channel) -> None:
        seconds = max(0, int(self.now - float(channel.claims["exp"])))
        self.context.refused("token_expired")
        self._shutdown_channel(channel, reasons.token_expired(seconds))

    @staticmethod
    def _expiry(claims: dict[str, Any]) -> float | None:
        exp = claims.get("exp")
        return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None

    # -- the rules ------------------------------------------------------------------------------
    def _handle(self, msg: Message, size: int) -> _Rule:
        if msg.topic == "phoenix":
            if msg.event == "heartbeat":
                self._reply(msg, "ok", {})
            else:
                self._unmatched(msg)
            return
        if msg.event == "phx_join":
            yield from self._join(msg)
            return
        channel = self.channels.get(msg.topic)
        if msg.event == "phx_leave":
            self._reply(msg, "ok", {})
            if channel is not None:
                self._close_channel(channel)
                self._leave(channel)
            return
        if channel is None:
            self._unmatched(msg)
            return
        if msg.event == "broadcast":
            yield from self._client_broadcast(channel, msg, size)
        elif msg.event == "access_token":
            yield from self._refresh_token(channel, msg.payload)
        elif msg.event == "presence":
            yield from self._presence(channel, msg)
        # Other events are ignored, as the reference server does.

    def _join(self, msg: Message) -> _Rule:
        context = self.context
        subtopic = phoenix.subtopic(msg.topic)
        if subtopic is None:
            self._unmatched(msg)
            return
        if not subtopic:
            self._reply(msg, "error", {"reason": reasons.TOPIC_NAME_REQUIRED})
            return
        if len(subtopic.encode()) > MAX_TOPIC_BYTES:
            context.refused("topic_length")
            self._reply(msg, "error", {"reason": reasons.TOPIC_NAME_TOO_LONG})
            return
        request = JoinRequest.parse(msg.payload)
        previous = self.channels.get(msg.topic)
        if previous is not None:
            # A second join of a joined topic replaces the first, which is closed first.
            self._close_channel(previous)
            self._leave(previous)

        def refuse(reason: str, metric: str, detail: str = "") -> None:
            context.refused(metric)
            context.log_refusal(metric, msg.topic, detail or reason)
            context.on_refused_join(subtopic, request.private, metric, detail or reason)
            frame = phoenix.encode_reply(
                self.vsn, msg.join_ref, msg.ref, msg.topic, "error", {"reason": reason}
            )
            delay = context.limits.refused_join_delay_s
            if delay and not self.closing:
                # As the reference server: a refused client retries no faster than this, while
                # its other frames go on being handled.
                self._deferred.append((self.now + delay, frame))
            else:
                self.send(frame)

        if not self.joins.allow() or not context.joins.allow():
            context.refused("joins_per_second")
            context.log_refusal("joins_per_second", msg.topic, reasons.TOO_MANY_JOINS)
            self._reply(msg, "error", {"reason": reasons.TOO_MANY_JOINS})
            # The reference server also drops the socket of a client that joins too fast.
            self.begin_close(POLICY_VIOLATION)
            return
        limit = context.limits.max_channels
        if limit and len(self.channels) >= limit:
            refuse(reasons.TOO_MANY_CHANNELS, "channels_per_client")
            return
        token = request.token_or(self.token)
        try:
            # Every join checks its token now, the socket's own included: `exp` is the only way a
            # JWT is revoked, so a socket kept alive must not outlive the token it connected with.
            claims = context.verifier.verify(token, self.now)
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
            expires_at=self._expiry(claims),
            recheck_at=self.now + RECHECK_INTERVAL_S,
            presence_key=presence_key(request.presence_key),
            presence_calls=ClientPresenceLimit(
                context.limits.presence_max_calls, context.limits.presence_window_s
            ),
        )
        if request.private:
            # As upstream: with presence enabled the presence read is checked too, and either
            # read lets the channel join (a presence-only channel gets no broadcasts).
            extensions = ("broadcast", "presence") if request.presence_enabled else ("broadcast",)
            for extension in extensions:
                allowed = yield ReadCheck(subtopic, claims, extension)
                if isinstance(allowed, PolicyFailed):
                    # The policy's own error is for the operator's log, never for the client.
                    refuse(
                        reasons.unauthorized_read(subtopic),
                        "rls_error",
                        reasons.rls_error(subtopic, allowed.detail),
                    )
                    return
                if isinstance(allowed, Unavailable):
                    refuse(reasons.DATABASE_UNAVAILABLE, "database_unavailable")
                    return
                if extension == "broadcast":
                    channel.can_read = allowed is True
                else:
                    channel.can_read_presence = allowed is True
            if not channel.can_read and not channel.can_read_presence:
                refuse(reasons.unauthorized_read(subtopic), "unauthorized")
                return
        replayed: list[Row] = []
        if request.replay is not None:
            if not request.private:
                refuse(reasons.REPLAY_PUBLIC, "replay")
                return
            window = request.replay_window()
            if window is None:
                refuse(reasons.REPLAY_INVALID, "replay")
                return
            # The channel takes live messages from before the replay query on, held back until
            # the join reply and the replayed rows are out: a message committed meanwhile is
            # neither lost nor, being in the replay too, sent twice.
            channel.held = []
            self._register(channel)
            rows = yield ReplayQuery(subtopic, *window)
            if not isinstance(rows, list):
                self._leave(channel)
                channel.held = None
                refuse(reasons.REPLAY_FAILED, "replay")
                return
            replayed = rows
        snapshot: PresenceSnapshot | None = None
        # As upstream: past the server's presence rate the join succeeds and the channel is then
        # shut down, instead of getting its presence state.
        overloaded = False
        if request.presence_enabled and channel.receives_presence:
            overloaded = not context.presence_events.allow()
        if request.presence_enabled and channel.receives_presence and not overloaded:
            # The presence state comes with the number of the last event it holds: the diffs held
            # meanwhile that it already holds are dropped, the later ones sent after it.
            if channel.held is None:
                channel.held = []
            self._register(channel)
            answer = yield PresenceSync(subtopic, request.private)
            if not isinstance(answer, PresenceSnapshot):
                self._abandon_join(channel)
                refuse(reasons.DATABASE_UNAVAILABLE, "database_unavailable")
                return
            snapshot = answer
        if self.closing:
            return
        self._register(channel)
        bindings = [{**binding, "id": binding_id(binding)} for binding in request.postgres_changes]
        self._reply(msg, "ok", {"postgres_changes": bindings})
        if bindings:
            self._system(channel, "postgres_changes", "ok", reasons.POSTGRES_CHANGES_NOT_SERVED)
        if replayed:
            channel.replayed = {row.id for row in replayed}
        for row in replayed:
            frame = row_frame(self.vsn, row, replayed=True)
            if frame is not None:
                self.send(frame)
        # As upstream: the replayed messages first, then the presence state.
        if snapshot is not None:
            self._push(channel, "presence_state", snapshot.state)
        self._release(channel, snapshot)
        if overloaded:
            context.refused("presence_events_per_second")
            self._shutdown_channel(channel, reasons.TOO_MANY_PRESENCE_MESSAGES)
            return
        if request.replication_ready:
            channel.ready_deadline = self.now + REPLICATION_READY_TIMEOUT_S
            self._announce_ready(channel)

    def _abandon_join(self, channel: Channel) -> None:
        """A join that fails after its channel was registered to hold live frames."""
        self._leave(channel)
        channel.held = None

    def _release(self, channel: Channel, snapshot: PresenceSnapshot | None) -> None:
        """Send what the channel held while it waited: broadcasts not replayed already, and the
        presence diffs that ``snapshot`` does not hold."""
        if channel.held is None:
            return
        held, channel.held = channel.held, None
        skip = channel.replayed or set()
        seen = snapshot.seen if snapshot is not None else None
        for frame, tag in held:
            if isinstance(tag, int):
                if seen is not None and tag <= seen:
                    continue
            elif tag is not None and tag in skip:
                continue
            self.send(frame)

    def _register(self, channel: Channel) -> None:
        if self.channels.get(channel.topic) is not channel:
            self.channels[channel.topic] = channel
            self._empty_since = None
            self.context.registry.add(channel)

    def _announce_ready(self, channel: Channel) -> None:
        """``replication_ready``: a system ok once the reader is live, or a shutdown after a minute."""
        if channel.ready_deadline is None:
            return
        if self.context.stream_live():
            channel.ready_deadline = None
            self._system(channel, "system", "ok", reasons.REPLICATION_READY)
        elif self.now >= channel.ready_deadline:
            channel.ready_deadline = None
            self._shutdown_channel(channel, reasons.REPLICATION_NOT_READY)

    def _client_broadcast(self, channel: Channel, msg: Message, size: int) -> _Rule:
        context = self.context
        payload = msg.payload
        if isinstance(payload, UserBroadcast):
            payload_size = len(payload.payload)
        elif isinstance(payload, dict):
            payload_size = size
        else:
            return  # not a broadcast map: nothing to relay
        if payload_size > context.limits.max_payload_bytes:
            context.refused("payload_size")
            if channel.broadcast_ack:
                self._reply(msg, "error", reasons.PAYLOAD_SIZE_EXCEEDED)
            return
        if not self.events.allow() or not context.events.allow():
            context.refused("events_per_second")
            self._shutdown_channel(channel, reasons.TOO_MANY_MESSAGES)
            return
        if channel.private:
            if channel.can_write is None:
                allowed = yield WriteCheck(channel.subtopic, channel.claims)
                if isinstance(allowed, Unavailable | PolicyFailed):
                    log.warning(
                        "RlsPolicyError: write check on %s failed: %s", channel.subtopic, allowed.detail
                    )
                    return
                channel.can_write = allowed is True
            if not channel.can_write:
                # The reference server drops a denied send without a reply, even with ack.
                context.refused("unauthorized_write")
                return
            if self.channels.get(channel.topic) is not channel:
                return
        exclude = None if channel.broadcast_self else channel
        # Metadata is the server's to set (a stored message's id, a replay flag): a client's own is
        # dropped, as the reference server drops it, so that no one can forge it.
        if isinstance(payload, UserBroadcast):
            if payload.metadata:
                payload = UserBroadcast(payload.event, payload.payload, payload.encoding)
        elif "meta" in payload:
            payload = {key: value for key, value in payload.items() if key != "meta"}
        context.relay.relay(channel.subtopic, channel.private, payload, exclude)
        if channel.broadcast_ack:
            self._reply(msg, "ok", {})

    # -- presence -------------------------------------------------------------------------------
    def _presence(self, channel: Channel, msg: Message) -> _Rule:
        """A ``presence`` push: track or untrack, with upstream's limits, replies and texts."""
        payload = msg.payload
        if not isinstance(payload, dict) or "event" not in payload:
            self._reply(msg, "ok", {})  # as upstream: nothing to do, and nothing wrong
            return
        event = payload["event"]
        if not isinstance(event, str):
            self._reply(msg, "error", {})
            return
        calls = channel.presence_calls
        if calls is not None and not calls.allow(self.now):
            self.context.refused("presence_calls")
            self._shutdown_channel(channel, reasons.CLIENT_PRESENCE_RATE_LIMIT)
            return
        event = event.lower()
        if event == "track":
            yield from self._track(channel, msg, payload)
        elif event == "untrack":
            # As upstream: no policy is consulted to stop being present.
            self.context.presence.untrack(channel)
            channel.presence_payload = None
            self._reply(msg, "ok", {})
        else:
            self._reply(msg, "error", {})

    def _track(self, channel: Channel, msg: Message, push: dict[str, Any]) -> _Rule:
        context = self.context
        if channel.private and channel.can_write_presence is None:
            # The first track of a private channel checks the presence policies: read, if the join
            # did not (presence was not enabled then), and write.
            if channel.can_read_presence is None:
                allowed = yield ReadCheck(channel.subtopic, channel.claims, "presence")
                if isinstance(allowed, Unavailable | PolicyFailed):
                    log.warning(
                        "RlsPolicyError: presence read check on %s failed: %s",
                        printable(channel.subtopic),
                        allowed.detail,
                    )
                    self._reply(msg, "error", {})
                    return
                channel.can_read_presence = allowed is True
            allowed = yield WriteCheck(channel.subtopic, channel.claims, "presence")
            if isinstance(allowed, Unavailable | PolicyFailed):
                log.warning(
                    "RlsPolicyError: presence write check on %s failed: %s",
                    printable(channel.subtopic),
                    allowed.detail,
                )
                self._reply(msg, "error", {})
                return
            channel.can_write_presence = allowed is True
            if self.channels.get(channel.topic) is not channel:
                return
        if channel.private and not channel.can_write_presence:
            context.refused("unauthorized_presence")
            self._reply(msg, "error", {})
            return
        payload = push.get("payload", {})
        if not isinstance(payload, dict):
            self._reply(msg, "error", {"reason": reasons.PRESENCE_PAYLOAD_NOT_MAP})
            return
        if payload == channel.presence_payload:
            self._reply(msg, "ok", {})  # the same payload again: nothing changes
            return
        if len(orjson.dumps(payload)) > context.limits.max_payload_bytes:
            context.refused("payload_size")
            self._shutdown_channel(channel, reasons.TRACK_SIZE_EXCEEDED)
            return
        if not context.presence_events.allow():
            context.refused("presence_events_per_second")
            self._shutdown_channel(channel, reasons.TOO_MANY_PRESENCE_MESSAGES)
            return
        stored = yield PresenceTrack(channel, channel.presence_key, payload)
        if self.channels.get(channel.topic) is not channel:
            return
        if stored is not True:
            detail = stored.detail if isinstance(stored, Unavailable | PolicyFailed) else stored
            log.warning("UnableToTrackPresence on %s: %s", printable(channel.subtopic), detail)
            self._reply(msg, "error", {})
            return
        channel.presence_payload = payload
        enabling = not channel.presence_enabled
        channel.presence_enabled = True
        self._reply(msg, "ok", {})
        if enabling and channel.receives_presence:
            # As upstream: the track that enables presence sends the state the join did not.
            yield from self._sync(channel)

    def _sync(self, channel: Channel) -> _Rule:
        """A presence_state for a joined channel, and then the diffs it does not hold."""
        if not self.context.presence_events.allow():
            self._shutdown_channel(channel, reasons.TOO_MANY_PRESENCE_MESSAGES)
            return
        if channel.held is None:
            channel.held = []
        answer = yield PresenceSync(channel.subtopic, channel.private)
        if self.channels.get(channel.topic) is not channel:
            channel.held = None
            return
        if not isinstance(answer, PresenceSnapshot):
            channel.held = None
            self._shutdown_channel(channel, reasons.DATABASE_UNAVAILABLE)
            return
        self._push(channel, "presence_state", answer.state)
        self._release(channel, answer)

    def _read_checks(
        self, channel: Channel, claims: dict[str, Any]
    ) -> Generator[Request, Answer, tuple[bool, bool | None] | Unavailable]:
        """The read policies of a joined private channel for ``claims``: (broadcast, presence),
        presence None when it was never checked. A broken policy reads as no."""
        extensions = ("broadcast", "presence") if channel.can_read_presence is not None else ("broadcast",)
        results: list[bool] = []
        for extension in extensions:
            answer = yield ReadCheck(channel.subtopic, claims, extension)
            if isinstance(answer, Unavailable):
                return answer
            if isinstance(answer, PolicyFailed):
                log.warning(
                    "RlsPolicyError: read check on %s failed: %s", printable(channel.subtopic), answer.detail
                )
            results.append(answer is True)
        return results[0], (results[1] if len(results) > 1 else None)

    @staticmethod
    def _revoked(channel: Channel, broadcast: bool, presence: bool | None) -> bool:
        """Whether a read that was allowed is no longer (or nothing is readable any more)."""
        if channel.can_read and not broadcast:
            return True
        if channel.can_read_presence and presence is False:
            return True
        return not broadcast and not presence

    def _refresh_token(self, channel: Channel, payload: Any) -> _Rule:
        token = payload.get("access_token") if isinstance(payload, dict) else None
        # Ignored, never answered: null, unchanged, and the non-JWT `sb_` keys.
        if token is None or not isinstance(token, str) or token == channel.token or token.startswith("sb_"):
            return
        try:
            claims = self.context.verifier.verify(token, self.now) if token else None
        except AuthError as exc:
            self._shutdown_channel(channel, exc.message)
            return
        if claims is None:
            self._shutdown_channel(channel, reasons.INVALID_JWT)
            return
        if channel.private:
            result = yield from self._read_checks(channel, claims)
            if isinstance(result, Unavailable):
                # The policies cannot be evaluated now. Fail closed on the new claims: the channel
                # keeps its old token, permission and expiry until a refresh can be checked.
                log.warning(
                    "UnableToConnectToProject: read re-check on %s postponed: %s",
                    channel.subtopic,
                    result.detail,
                )
                return
            if self.channels.get(channel.topic) is not channel:
                return
            broadcast, presence = result
            if self._revoked(channel, broadcast, presence):
                channel.can_read = False
                self._shutdown_channel(channel, reasons.no_read_permission(channel.subtopic))
                return
            channel.can_read = broadcast
            if presence is not None:
                channel.can_read_presence = presence
            # Re-checked on the next send or track, with the new claims.
            channel.can_write = None
            channel.can_write_presence = None
        channel.token = token
        channel.claims = claims
        channel.expires_at = self._expiry(claims)
        channel.recheck_at = self.now + RECHECK_INTERVAL_S

    def _recheck(self, channel: Channel) -> _Rule:
        """The periodic check of a joined channel: its token still verifies (a changed secret or
        JWKS), and a private channel's user may still read."""
        channel.recheck_at = self.now + RECHECK_INTERVAL_S
        try:
            claims = self.context.verifier.verify(channel.token, self.now)
        except AuthError as exc:
            self._shutdown_channel(channel, exc.message)
            return
        if not channel.private:
            return
        result = yield from self._read_checks(channel, claims)
        if self.channels.get(channel.topic) is not channel:
            return
        if isinstance(result, Unavailable):
            return  # checked again at the next period
        if self._revoked(channel, *result):
            channel.can_read = False
            self._shutdown_channel(channel, reasons.no_read_permission(channel.subtopic))
