"""A stored message of realtime.messages, as the reader and the replay query return it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Row:
    id: str
    topic: str
    event: str | None
    private: bool | None
    payload: str | None  # jsonb text
    binary_payload: bytes | None
    inserted_at: float  # epoch seconds (transaction start, UTC)
