"""Limits a session enforces, and the sliding window that counts events per second."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass

from .config import Settings


@dataclass(frozen=True, slots=True)
class SessionLimits:
    """What one socket may do (0 = no limit)."""

    max_channels: int = 100
    max_payload_bytes: int = sys.maxsize
    max_events_per_second: int = 0
    max_joins_per_second: int = 0
    outbox_limit_bytes: int = 16 * 1024 * 1024
    #: A refused join is answered after this long (the reference server waits 5 s).
    refused_join_delay_s: float = 0.0
    #: A socket that holds no channel for this long is closed (the reference: 10 minutes).
    no_channel_timeout_s: float = 0.0
    #: Presence pushes (track and untrack) a channel may make per window (the reference: 5 per 30 s).
    presence_max_calls: int = 5
    presence_window_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> SessionLimits:
        return cls(
            max_channels=settings.max_channels_per_client,
            max_payload_bytes=settings.max_payload_bytes,
            max_events_per_second=settings.max_client_events_per_second,
            max_joins_per_second=settings.max_client_joins_per_second,
            outbox_limit_bytes=settings.outbox_limit_bytes,
            refused_join_delay_s=settings.refused_join_delay_ms / 1000,
            no_channel_timeout_s=settings.no_channel_timeout_s,
            presence_max_calls=settings.client_presence_max_calls,
            presence_window_s=settings.client_presence_window_ms / 1000,
        )


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
