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

The rules by feature are functions of the session beside it: the join (``session_join``),
presence (``session_presence``), token refresh and the periodic re-check (``session_tokens``);
what sessions share is in ``session_context``. This module keeps the inputs, the outputs, the
channels' bookkeeping and the client broadcast.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from . import phoenix, reasons, session_join, session_presence, session_tokens
from .channels import Channel, Frame, Outbox
from .limits import RateWindow
from .phoenix import Message, UserBroadcast, Vsn
from .presence import PresenceSnapshot
from .queries import (
    Answer,
    PolicyFailed,
    Request,
    Rule,
    Unavailable,
    WriteCheck,
)
from .session_context import (
    NORMAL_CLOSE,
    POLICY_VIOLATION,
    SLOW_CONSUMER_CLOSE,
    PresenceSink,
    Relay,
    SessionContext,
    TokenVerifier,
)
from .session_tokens import RECHECK_INTERVAL_S, expiry

log = logging.getLogger("pg_realtime")

#: ``replication_ready``: how often to look whether the reader is live.
READY_POLL_S = 0.5


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
        self._rule: Rule | None = None
        self.joins = RateWindow(context.limits.max_joins_per_second)
        #: Join refusals waiting for their delay: (due, frame), oldest first.
        self._deferred: list[tuple[float, Frame]] = []
        #: Since when the socket holds no channel (None while it holds one).
        self._empty_since: float | None = self.now
        self._token_expires_at = expiry(claims)

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
                self.leave(channel)

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
                self.announce_ready(channel)
        if self.pending is None and not self.closing:
            due = [
                ch for ch in self.channels.values() if ch.recheck_at is not None and ch.recheck_at <= self.now
            ]
            if due:
                # One channel at a time: a rule started here is driven like a frame's.
                self._advance(
                    session_tokens.recheck(self, min(due, key=lambda ch: ch.recheck_at or 0.0)), None
                )
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
            self.leave(channel)

    # -- output (also the Peer of this socket's channels) ---------------------------------------
    def send(self, frame: Frame) -> None:
        if not self.outbox.push(frame) and self.outbox.overflowed and not self.closing:
            self.context.slow_consumer()
            self.context.on_slow_consumer([channel.key for channel in self.channels.values()])
            self.begin_close(SLOW_CONSUMER_CLOSE)

    @property
    def slow_consumer(self) -> bool:
        return self.outbox.overflowed

    def reply(self, msg: Message, status: str, response: Any) -> None:
        self.send(phoenix.encode_reply(self.vsn, msg.join_ref, msg.ref, msg.topic, status, response))

    def unmatched(self, msg: Message) -> None:
        # Phoenix's own reply for a topic no channel serves: it carries no join_ref.
        self.send(
            phoenix.encode_reply(
                self.vsn, None, msg.ref, msg.topic, "error", {"reason": reasons.UNMATCHED_TOPIC}
            )
        )

    def system(self, channel: Channel, extension: str, status: str, message: str) -> None:
        self.push(
            channel,
            "system",
            {"extension": extension, "status": status, "message": message, "channel": channel.subtopic},
        )

    def push(self, channel: Channel, event: str, payload: Any) -> None:
        self.send(phoenix.encode_push(self.vsn, channel.join_ref, channel.topic, event, payload))

    def close_channel(self, channel: Channel) -> None:
        """phx_close for a channel the server ends (reference: ref = join_ref)."""
        self.send(
            phoenix.encode_push(
                self.vsn, channel.join_ref, channel.topic, "phx_close", {}, ref=channel.join_ref
            )
        )

    # -- driving the rules ----------------------------------------------------------------------
    def _clock(self, now: float | None) -> None:
        self.now = time.time() if now is None else now

    def _advance(self, rule: Rule, value: Answer | None) -> None:
        try:
            request = rule.send(value) if value is not None else next(rule)
        except StopIteration:
            return
        self._rule = rule
        self.pending = request

    # -- channel bookkeeping --------------------------------------------------------------------
    def leave(self, channel: Channel) -> None:
        # Leaving, closing and dying all end the channel's presence (a no-op if it tracks none).
        self.context.presence.untrack(channel)
        channel.presence_payload = None
        if self.channels.get(channel.topic) is channel:
            del self.channels[channel.topic]
            if not self.channels:
                self._empty_since = self.now
        self.context.registry.remove(channel)

    def shutdown_channel(self, channel: Channel, message: str) -> None:
        """The reference server's channel shutdown: a system error, then phx_close."""
        self.push(
            channel,
            "system",
            {"extension": "system", "status": "error", "message": message, "channel": channel.subtopic},
        )
        self.close_channel(channel)
        self.leave(channel)

    def _expire(self, channel: Channel) -> None:
        seconds = max(0, int(self.now - float(channel.claims["exp"])))
        self.context.refused("token_expired")
        self.shutdown_channel(channel, reasons.token_expired(seconds))

    # -- the rules ------------------------------------------------------------------------------
    def _handle(self, msg: Message, size: int) -> Rule:
        if msg.topic == "phoenix":
            if msg.event == "heartbeat":
                self.reply(msg, "ok", {})
            else:
                self.unmatched(msg)
            return
        if msg.event == "phx_join":
            yield from session_join.join(self, msg)
            return
        channel = self.channels.get(msg.topic)
        if msg.event == "phx_leave":
            self.reply(msg, "ok", {})
            if channel is not None:
                self.close_channel(channel)
                self.leave(channel)
            return
        if channel is None:
            self.unmatched(msg)
            return
        if msg.event == "broadcast":
            yield from self._client_broadcast(channel, msg, size)
        elif msg.event == "access_token":
            yield from session_tokens.refresh_token(self, channel, msg.payload)
        elif msg.event == "presence":
            yield from session_presence.presence(self, channel, msg)
        # Other events are ignored, as the reference server does.

    def defer(self, frame: Frame, delay: float) -> None:
        """Send ``frame`` (a join refusal) once ``delay`` seconds have passed."""
        self._deferred.append((self.now + delay, frame))

    def abandon_join(self, channel: Channel) -> None:
        """A join that fails after its channel was registered to hold live frames."""
        self.leave(channel)
        channel.held = None

    def release(self, channel: Channel, snapshot: PresenceSnapshot | None) -> None:
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

    def register(self, channel: Channel) -> None:
        if self.channels.get(channel.topic) is not channel:
            self.channels[channel.topic] = channel
            self._empty_since = None
            self.context.registry.add(channel)

    def announce_ready(self, channel: Channel) -> None:
        """``replication_ready``: a system ok once the reader is live, or a shutdown after a minute."""
        if channel.ready_deadline is None:
            return
        if self.context.stream_live():
            channel.ready_deadline = None
            self.system(channel, "system", "ok", reasons.REPLICATION_READY)
        elif self.now >= channel.ready_deadline:
            channel.ready_deadline = None
            self.shutdown_channel(channel, reasons.REPLICATION_NOT_READY)

    def _client_broadcast(self, channel: Channel, msg: Message, size: int) -> Rule:
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
                self.reply(msg, "error", reasons.PAYLOAD_SIZE_EXCEEDED)
            return
        if not self.events.allow() or not context.events.allow():
            context.refused("events_per_second")
            self.shutdown_channel(channel, reasons.TOO_MANY_MESSAGES)
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
            self.reply(msg, "ok", {})


__all__ = [
    "NORMAL_CLOSE",
    "POLICY_VIOLATION",
    "RECHECK_INTERVAL_S",
    "SLOW_CONSUMER_CLOSE",
    "PresenceSink",
    "Relay",
    "Session",
    "SessionContext",
    "TokenVerifier",
    "expiry",
]
