"""Pure rules of a socket's session: join payloads, error reasons, rate windows.

No I/O here: the server module calls these with plain values and acts on the result.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

# Join error reasons, "<Code>: <message>" exactly as the reference server words them.
TOPIC_NAME_REQUIRED = "TopicNameRequired: You must provide a topic name"
TOO_MANY_CHANNELS = "ChannelRateLimitReached: Too many channels"
TOO_MANY_JOINS = "ClientJoinRateLimitReached: Too many joins per second"
UNMATCHED_TOPIC = "unmatched topic"
POSTGRES_CHANGES_UNSUPPORTED = (
    "PostgresChangesNotSupported: this server implements Broadcast only; "
    "Postgres Changes bindings cannot be joined"
)
PRESENCE_UNSUPPORTED = "PresenceNotSupported: Presence is not supported by this server yet"
REPLAY_INVALID = "UnableToReplayMessages: Replay params are not valid"
REPLAY_FAILED = "UnableToReplayMessages: Realtime was unable to replay messages"
REPLAY_PUBLIC = "UnableToReplayMessages: Replay is not allowed for public channels"
DATABASE_UNAVAILABLE = "UnableToConnectToProject: Realtime was unable to connect to the project database"


def unauthorized_read(subtopic: str) -> str:
    return f"Unauthorized: You do not have permissions to read from this Channel topic: {subtopic}"


def revoked_read(subtopic: str) -> str:
    return f"You no longer have permission to read from this Channel topic: {subtopic}"


def flexible_bool(value: Any, default: bool) -> bool:
    """true/false, or the strings "true"/"false" in any case (the reference's FlexibleBoolean)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return default


@dataclass(frozen=True)
class JoinRequest:
    """What a phx_join asks for; invalid parts fall back to defaults as the reference server does."""

    broadcast_self: bool = False
    broadcast_ack: bool = False
    private: bool = False
    presence_enabled: bool = False
    presence_key: str = ""
    postgres_changes: list[Any] = field(default_factory=list)
    replay: Any = None
    access_token: str | None = None

    @classmethod
    def parse(cls, payload: Any) -> JoinRequest:
        if not isinstance(payload, dict):
            return cls()
        config = payload.get("config")
        config = config if isinstance(config, dict) else {}
        broadcast = config.get("broadcast")
        broadcast = broadcast if isinstance(broadcast, dict) else {}
        presence = config.get("presence")
        presence = presence if isinstance(presence, dict) else {}
        changes = config.get("postgres_changes")
        token = payload.get("access_token", payload.get("user_token"))
        key = presence.get("key")
        return cls(
            broadcast_self=flexible_bool(broadcast.get("self"), False),
            broadcast_ack=flexible_bool(broadcast.get("ack"), False),
            private=flexible_bool(config.get("private"), False),
            presence_enabled=flexible_bool(presence.get("enabled"), False),
            presence_key=key if isinstance(key, str) else "",
            postgres_changes=changes if isinstance(changes, list) else [],
            replay=broadcast.get("replay"),
            access_token=token if isinstance(token, str) else None,
        )

    def token_or(self, socket_token: str | None) -> str | None:
        """The join's own token wins, except the new `sb_` API keys, which are not JWTs."""
        if self.access_token and not self.access_token.startswith("sb_"):
            return self.access_token
        return socket_token


class RateWindow:
    """Events per second over a sliding one-second window (0 = unlimited)."""

    __slots__ = ("_count", "_window_start", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._window_start = 0.0
        self._count = 0

    def allow(self, now: float | None = None, cost: int = 1) -> bool:
        if not self.limit:
            return True
        now = time.monotonic() if now is None else now
        if now - self._window_start >= 1.0:
            self._window_start = now
            self._count = 0
        if self._count + cost > self.limit:
            return False
        self._count += cost
        return True
