"""Reading the server's binary kind 4 frames (the product only encodes them).

``4 topic_len uevent_len meta_len enc | topic user_event meta_json user_payload``: every length is
one unsigned byte, ``enc`` is 0 for raw bytes and 1 for JSON text. See pg_realtime.phoenix.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from pg_realtime.phoenix import KIND_USER_BROADCAST, KIND_USER_BROADCAST_PUSH, PayloadEncoding


def payload_offset(frame: bytes) -> int:
    """Where the user payload starts in a kind 3 or kind 4 frame (cheap enough for a load generator)."""
    kind = frame[0]
    if kind == KIND_USER_BROADCAST:
        return 5 + frame[1] + frame[2] + frame[3]
    if kind == KIND_USER_BROADCAST_PUSH:
        return 7 + frame[1] + frame[2] + frame[3] + frame[4] + frame[5]
    raise ValueError(f"not a broadcast frame: kind {kind}")


@dataclass(frozen=True, slots=True)
class Kind4:
    """The parts of a kind 4 frame, as sent (nothing decoded beyond the UTF-8 of the names)."""

    topic: str
    event: str
    meta: bytes
    encoding: int
    payload: bytes

    @property
    def subtopic(self) -> str:
        return self.topic.removeprefix("realtime:")

    def meta_json(self) -> dict[str, Any]:
        """The metadata object ({} when there is none)."""
        if not self.meta:
            return {}
        meta = orjson.loads(self.meta)
        assert isinstance(meta, dict), f"metadata is not an object: {self.meta!r}"
        return meta

    def payload_value(self) -> Any:
        """The payload: its JSON value for ``enc`` 1, its bytes for ``enc`` 0."""
        return orjson.loads(self.payload) if self.encoding == PayloadEncoding.JSON else self.payload


def parse_kind4(frame: bytes) -> Kind4:
    """Cut a kind 4 frame into its parts, asserting that its header is well formed."""
    assert frame[0] == KIND_USER_BROADCAST, f"unexpected binary kind {frame[0]}"
    assert len(frame) >= 5, "truncated kind 4 header"
    topic_len, event_len, meta_len, enc = frame[1:5]
    assert enc in (PayloadEncoding.BINARY, PayloadEncoding.JSON), f"unknown payload encoding {enc}"
    pos = payload_offset(frame)
    assert len(frame) >= pos, "header lengths past the end of the frame"
    topic_end = 5 + topic_len
    event_end = topic_end + event_len
    return Kind4(
        topic=frame[5:topic_end].decode(),
        event=frame[topic_end:event_end].decode(),
        meta=frame[event_end : event_end + meta_len],
        encoding=enc,
        payload=frame[pos:],
    )
