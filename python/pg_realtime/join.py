"""What a ``phx_join`` asks for, read the way the reference server reads it.

Invalid parts fall back to defaults rather than failing the join, as upstream does; the one
exception is replay, whose parameters are checked when the session acts on them.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import orjson

#: The reference server never replays more than this many messages, whatever the client asks.
REPLAY_HARD_LIMIT = 25


def binding_id(binding: dict[str, Any]) -> int:
    """A stable integer id for a postgres_changes binding, as the reference server gives one."""
    return zlib.crc32(orjson.dumps(binding, option=orjson.OPT_SORT_KEYS)) & 0x7FFFFFF


def flexible_bool(value: Any, default: bool) -> bool:
    """true/false, or the strings "true"/"false" in any case (the reference's FlexibleBoolean)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return default


@dataclass(frozen=True)
class JoinRequest:
    broadcast_self: bool = False
    broadcast_ack: bool = False
    replication_ready: bool = False
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
            replication_ready=flexible_bool(broadcast.get("replication_ready"), False),
            private=flexible_bool(config.get("private"), False),
            presence_enabled=flexible_bool(presence.get("enabled"), False),
            # As upstream, a key is taken as given and grouped by its text (a number too).
            presence_key=key
            if isinstance(key, str)
            else (str(key) if isinstance(key, int | float) and not isinstance(key, bool) else ""),
            # As upstream: null entries are dropped, the rest are bindings.
            postgres_changes=[c for c in changes if isinstance(c, dict)] if isinstance(changes, list) else [],
            replay=broadcast.get("replay"),
            access_token=token if isinstance(token, str) else None,
        )

    def token_or(self, socket_token: str | None) -> str | None:
        """The join's own token wins, except the new `sb_` API keys, which are not JWTs."""
        if self.access_token and not self.access_token.startswith("sb_"):
            return self.access_token
        return socket_token

    def replay_window(self) -> tuple[int, int] | None:
        """(since in epoch ms, limit) of a valid ``config.broadcast.replay``, else None."""
        replay = self.replay
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
