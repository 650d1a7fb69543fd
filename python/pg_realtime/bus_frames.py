"""The frames of the cluster bus: client broadcasts packed into NOTIFY payloads and read back.

Pure: bytes and values in, bytes and values out; :mod:`pg_realtime.postgres_bus` sends them.

A notification is one JSON object: ``{"o": sidecar id, "s": its number, "t": publish time,
"m": [message, ...]}``. A message is ``[subtopic, private, kind, ...]``::

    kind 0: a JSON map                      [subtopic, private, 0, map]
    kind 1: a UserBroadcast, JSON payload   [subtopic, private, 1, event, payload text, meta?]
    kind 2: a UserBroadcast, binary payload [subtopic, private, 2, event, base64, meta?]
    kind 3: an attachment                   [subtopic, private, 3, n]: the body, in
            realtime.bus_attachments under (origin, n), is the message of kind 0, 1 or 2 itself.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from .broadcast import Broadcast
from .phoenix import PayloadEncoding, UserBroadcast

#: NOTIFY payloads must be shorter than 8000 bytes (PostgreSQL's default block size less headers).
MAX_NOTIFY_BYTES = 7900
#: Room kept in each notification for its envelope (sidecar id, numbers, time).
ENVELOPE_BYTES = 120
#: A message whose encoding is longer than this goes through realtime.bus_attachments.
MAX_INLINE_BYTES = MAX_NOTIFY_BYTES - ENVELOPE_BYTES

#: One message as it crosses the bus: (subtopic, private, broadcast).
BusMessage = tuple[str, bool, Broadcast]

MAP, USER_JSON, USER_BINARY, ATTACHMENT = 0, 1, 2, 3


def encode_message(subtopic: str, private: bool, message: Broadcast) -> bytes:
    if isinstance(message, UserBroadcast):
        if message.encoding is PayloadEncoding.JSON:
            item: list[Any] = [subtopic, private, USER_JSON, message.event, message.payload.decode()]
        else:
            item = [subtopic, private, USER_BINARY, message.event, base64.b64encode(message.payload).decode()]
        if message.metadata:
            item.append(message.metadata)
        return orjson.dumps(item)
    return orjson.dumps([subtopic, private, MAP, message])


def decode_message(item: list[Any]) -> BusMessage:
    """A message of kind 0, 1 or 2 (ValueError, TypeError or KeyError when malformed)."""
    subtopic, private, kind = item[0], item[1], item[2]
    if not isinstance(subtopic, str) or not isinstance(private, bool):
        raise ValueError("bad message head")
    if kind == MAP:
        if not isinstance(item[3], dict):
            raise ValueError("bad map")
        return subtopic, private, item[3]
    meta = item[5] if len(item) > 5 and isinstance(item[5], dict) else {}
    if kind == USER_JSON:
        return (
            subtopic,
            private,
            UserBroadcast(str(item[3]), str(item[4]).encode(), PayloadEncoding.JSON, meta),
        )
    if kind == USER_BINARY:
        return (
            subtopic,
            private,
            UserBroadcast(str(item[3]), base64.b64decode(item[4]), PayloadEncoding.BINARY, meta),
        )
    raise ValueError(f"unknown message kind {kind!r}")


@dataclass
class Notification:
    """One NOTIFY payload being filled, and the attachments it names."""

    items: list[bytes]
    size: int
    started: float


@dataclass(frozen=True)
class Outgoing:
    """What one flush sends: the payloads in order, and the attachments (n, body) they name."""

    payloads: list[str]
    attachments: list[tuple[int, bytes]]
    counts: list[int]


class Packer:
    """Packs encoded messages into NOTIFY payloads (pure; numbers notifications and attachments)."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.notifications = 0
        self.attachments = 0

    def pack(self, pending: Sequence[tuple[float, str, bool, bytes]]) -> Outgoing:
        payloads: list[str] = []
        counts: list[int] = []
        attachments: list[tuple[int, bytes]] = []
        current: Notification | None = None

        def close() -> None:
            nonlocal current
            if current is not None and current.items:
                self.notifications += 1
                head = orjson.dumps({"o": self.origin, "s": self.notifications, "t": current.started})
                payloads.append((head[:-1] + b',"m":[' + b",".join(current.items) + b"]}").decode())
                counts.append(len(current.items))
            current = None

        for at, subtopic, private, encoded in pending:
            body = encoded
            if len(encoded) > MAX_INLINE_BYTES:
                self.attachments += 1
                attachments.append((self.attachments, encoded))
                body = orjson.dumps([subtopic, private, ATTACHMENT, self.attachments])
            if current is not None and current.size + len(body) + 1 > MAX_INLINE_BYTES:
                close()
            if current is None:
                current = Notification([], 0, at)
            current.items.append(body)
            current.size += len(body) + 1
        close()
        return Outgoing(payloads, attachments, counts)


#: Whether any local channel subscribes to (subtopic, private): other messages are skipped.
Interested = Callable[[str, bool], bool]


@dataclass(frozen=True)
class Incoming:
    """A decoded notification of another sidecar."""

    origin: str
    sent_at: float
    #: Messages in order; an attachment is (subtopic, private, n) until fetched.
    messages: list[BusMessage | tuple[str, bool, int]]
    #: Messages in the batch, those left out for want of a local subscriber included.
    total: int


def parse_notification(payload: str, interested: Interested | None = None) -> Incoming | None:
    """A notification's batch; None for a probe or something that is not a batch.

    With ``interested``, only the messages of topics it names are decoded and kept: a sidecar
    receives every client broadcast of the cluster, and most are for topics it does not serve.
    """
    data = orjson.loads(payload)
    if not isinstance(data, dict) or "m" not in data:
        return None
    messages: list[BusMessage | tuple[str, bool, int]] = []
    for item in data["m"]:
        if interested is not None and not interested(item[0], item[1]):
            continue
        if item[2] == ATTACHMENT:
            messages.append((str(item[0]), bool(item[1]), int(item[3])))
        else:
            messages.append(decode_message(item))
    return Incoming(str(data["o"]), float(data.get("t", 0.0)), messages, len(data["m"]))


__all__ = [
    "MAX_INLINE_BYTES",
    "MAX_NOTIFY_BYTES",
    "BusMessage",
    "Incoming",
    "Interested",
    "Outgoing",
    "Packer",
    "decode_message",
    "encode_message",
    "parse_notification",
]
