"""What the sessions of a server share, and what a session needs of the rest of the server.

The protocols keep :mod:`pg_realtime.session` free of I/O: the server gives it a token verifier,
a relay for client broadcasts and a presence tracker, and tests give it plain objects.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .channels import Channel, Frame, Registry
from .limits import RateWindow, SessionLimits
from .logs import printable
from .phoenix import Message, UserBroadcast, Vsn
from .presence import PresenceSnapshot

log = logging.getLogger("pg_realtime")

SLOW_CONSUMER_CLOSE = 1008  # policy violation: the client stopped reading
POLICY_VIOLATION = 1008
NORMAL_CLOSE = 1000


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
    #: Whether that reader is paused (no channel was joined): a join then asks it to resume.
    stream_paused: Callable[[], bool] = lambda: False
    #: Near-miss diagnostics: a refused join (subtopic, private, metric, text), and the channel
    #: keys (subtopic, private) of a socket about to be closed as a slow consumer.
    on_refused_join: Callable[[str, bool, str, str], None] = _ignore_refused_join
    on_slow_consumer: Callable[[list[tuple[str, bool]]], None] = _ignore_keys
    #: Presence: the tracker, and the server-wide window of presence events (upstream's
    #: max_presence_events_per_second, counting tracks and presence states sent).
    presence: PresenceSink = field(default_factory=_NoPresence)
    presence_events: RateWindow = field(default_factory=lambda: RateWindow(0))


class Socket(Protocol):
    """A session as its rules (``session_join``, ``session_presence``, ``session_tokens``) see it:
    its state, and the steps they take on it. :class:`pg_realtime.session.Session` is one."""

    context: SessionContext
    vsn: Vsn
    token: str
    now: float
    closing: bool
    channels: dict[str, Channel]
    joins: RateWindow

    def send(self, frame: Frame) -> None: ...
    def reply(self, msg: Message, status: str, response: Any) -> None: ...
    def unmatched(self, msg: Message) -> None: ...
    def system(self, channel: Channel, extension: str, status: str, message: str) -> None: ...
    def push(self, channel: Channel, event: str, payload: Any) -> None: ...
    def close_channel(self, channel: Channel) -> None: ...
    def shutdown_channel(self, channel: Channel, message: str) -> None: ...
    def begin_close(self, code: int) -> None: ...
    def leave(self, channel: Channel) -> None: ...
    def register(self, channel: Channel) -> None: ...
    def release(self, channel: Channel, snapshot: PresenceSnapshot | None) -> None: ...
    def abandon_join(self, channel: Channel) -> None: ...
    def announce_ready(self, channel: Channel) -> None: ...
    def defer(self, frame: Frame, delay: float) -> None: ...
