"""The Phoenix channel wire format spoken by the Supabase Realtime clients, as a pure codec.

A socket picks its serializer with the ``vsn`` query parameter:

* ``1.0.0`` (realtime-py, older realtime-js): text frames holding JSON objects. In:
  ``{"topic","event","payload","ref","join_ref"?}``. Out: ``{"topic","event","payload","ref"}``; there is no
  ``join_ref`` in output, and the ``ref`` key is always present (realtime-py rejects a frame without it).
* ``2.0.0`` (realtime-js default): text frames holding JSON arrays ``[join_ref, ref, topic, event, payload]``,
  plus binary frames whose first byte is a kind. Every length is one unsigned byte:

  ====  ===============  ==============================================================================
  kind  direction        layout
  ====  ===============  ==============================================================================
  0     client->server   ``0 jr_len ref_len topic_len event_len | join_ref ref topic event payload``
  3     client->server   ``3 jr_len ref_len topic_len uevent_len meta_len enc |``
                         ``join_ref ref topic user_event meta_json user_payload``
  4     server->client   ``4 topic_len uevent_len meta_len enc | topic user_event meta_json user_payload``
  ====  ===============  ==============================================================================

  ``enc`` is 0 for raw bytes and 1 for JSON text; ``meta_len`` 0 means no metadata. The payload is whatever
  follows the header strings. Kinds 1 and 2 exist in Phoenix, but realtime-js cannot decode them, so this
  module never produces them.

Input frames: a ``str`` is a text frame and ``bytes`` a binary frame. Nothing here does I/O; every encoder
returns the finished frame so that one encoding can be sent to many sockets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

import orjson

__all__ = [
    "SUBTOPIC_PREFIX",
    "Message",
    "PayloadEncoding",
    "ProtocolError",
    "UserBroadcast",
    "Vsn",
    "decode",
    "encode_broadcast",
    "encode_push",
    "encode_reply",
    "encode_user_broadcast",
    "parse_vsn",
    "subtopic",
]

SUBTOPIC_PREFIX = "realtime:"

# Binary frame kinds (the first byte of a binary frame).
KIND_PUSH = 0
KIND_USER_BROADCAST_PUSH = 3
KIND_USER_BROADCAST = 4

# Every string length in a binary header is a single unsigned byte.
MAX_HEADER_FIELD = 255


class Vsn(StrEnum):
    """The serializer version a socket asked for with ``?vsn=``."""

    V1 = "1.0.0"
    V2 = "2.0.0"


def parse_vsn(value: str | None) -> Vsn | None:
    """The serializer for a ``vsn`` query value, or None when the server must refuse the socket.

    A missing or empty value means 1.0.0 because that is Phoenix's default.
    """
    if not value:
        return Vsn.V1
    try:
        return Vsn(value)
    except ValueError:
        return None


class ProtocolError(ValueError):
    """A frame that cannot be decoded. The server logs it (MalformedWebSocketMessage) and ignores it."""


class PayloadEncoding(IntEnum):
    """The ``enc`` byte of binary user broadcasts."""

    BINARY = 0
    JSON = 1


@dataclass(frozen=True, slots=True)
class UserBroadcast:
    """A broadcast whose payload travels as raw bytes: a kind 3 push, a DB row or a single REST message.

    For ``PayloadEncoding.JSON`` the payload must be one valid JSON value in UTF-8: the encoders splice it
    into their output without parsing it again. ``decode`` checks this for kind 3 frames; other producers
    (Postgres ``jsonb`` output, a validated REST body) must guarantee it themselves.
    """

    event: str
    payload: bytes
    encoding: PayloadEncoding
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Message:
    """One decoded client frame.

    ``payload`` is the decoded JSON of a text frame, a ``UserBroadcast`` for a kind 3 frame (then ``event`` is
    ``"broadcast"``), or the raw ``bytes`` of a kind 0 frame.
    """

    join_ref: str | None
    ref: str | None
    topic: str
    event: str
    payload: Any


def subtopic(topic: str) -> str | None:
    """The part of a channel topic after ``realtime:``, or None when the topic is not a Realtime topic.

    ``"realtime:"`` gives ``""``: the caller must refuse it with TopicNameRequired.
    """
    if topic.startswith(SUBTOPIC_PREFIX):
        return topic[len(SUBTOPIC_PREFIX) :]
    return None


# ------------------------------------------------------------------------------------------------------------
# Decoding


def decode(frame: str | bytes, vsn: Vsn) -> Message:
    """Decode one client frame; raises only ProtocolError."""
    if isinstance(frame, str):
        return _decode_text_v2(frame) if vsn == Vsn.V2 else _decode_text_v1(frame)
    if vsn != Vsn.V2:
        # The 1.0.0 serializer has no binary form at all.
        raise ProtocolError("binary frame on a vsn 1.0.0 socket")
    return _decode_binary(bytes(frame))


def _loads(text: str | bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"invalid JSON: {exc}") from None


def _ref(value: Any, what: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    # Refs are opaque counters; a client that sends them as JSON numbers still gets its replies, as strings.
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ProtocolError(f"{what} must be a string or null")


def _name(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise ProtocolError(f"{what} must be a string")
    return value


def _decode_text_v1(text: str) -> Message:
    obj = _loads(text)
    if not isinstance(obj, dict):
        raise ProtocolError("expected a JSON object")
    return Message(
        join_ref=_ref(obj.get("join_ref"), "join_ref"),
        ref=_ref(obj.get("ref"), "ref"),
        topic=_name(obj.get("topic"), "topic"),
        event=_name(obj.get("event"), "event"),
        payload=obj.get("payload", {}),
    )


def _decode_text_v2(text: str) -> Message:
    arr = _loads(text)
    # The reference server matches `[join_ref, ref, topic, event, payload | _]`: extra elements are ignored.
    if not isinstance(arr, list) or len(arr) < 5:
        raise ProtocolError("expected a JSON array [join_ref, ref, topic, event, payload]")
    return Message(
        join_ref=_ref(arr[0], "join_ref"),
        ref=_ref(arr[1], "ref"),
        topic=_name(arr[2], "topic"),
        event=_name(arr[3], "event"),
        payload=arr[4],
    )


def _utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(f"{what} is not valid UTF-8") from None


def _fields(data: bytes, start: int, lengths: bytes) -> tuple[list[bytes], int]:
    """Cut consecutive length-prefixed header strings out of ``data``; returns them and the payload offset."""
    out: list[bytes] = []
    pos = start
    for n in lengths:
        end = pos + n
        if end > len(data):
            raise ProtocolError("header length past the end of the frame")
        out.append(data[pos:end])
        pos = end
    return out, pos


def _decode_binary(data: bytes) -> Message:
    if not data:
        raise ProtocolError("empty binary frame")
    kind = data[0]
    if kind == KIND_PUSH:
        if len(data) < 5:
            raise ProtocolError("truncated push header")
        (jr, ref, topic, event), pos = _fields(data, 5, data[1:5])
        # A zero-length ref stays "" (not None), as in the reference server: replies echo what was sent.
        return Message(
            join_ref=_utf8(jr, "join_ref"),
            ref=_utf8(ref, "ref"),
            topic=_utf8(topic, "topic"),
            event=_utf8(event, "event"),
            payload=data[pos:],
        )
    if kind == KIND_USER_BROADCAST_PUSH:
        if len(data) < 7:
            raise ProtocolError("truncated user broadcast header")
        enc = data[6]
        if enc not in (PayloadEncoding.BINARY, PayloadEncoding.JSON):
            raise ProtocolError(f"unknown payload encoding {enc}")
        (jr, ref, topic, uevent, meta), pos = _fields(data, 7, data[1:6])
        payload = data[pos:]
        metadata: dict[str, Any] = {}
        if meta:
            parsed = _loads(meta)
            if not isinstance(parsed, dict):
                raise ProtocolError("metadata must be a JSON object")
            metadata = parsed
        if enc == PayloadEncoding.JSON:
            # Parsed only to validate: the raw bytes are what gets relayed, spliced into other frames.
            _loads(payload)
        return Message(
            join_ref=_utf8(jr, "join_ref"),
            ref=_utf8(ref, "ref"),
            topic=_utf8(topic, "topic"),
            event="broadcast",
            payload=UserBroadcast(
                event=_utf8(uevent, "user event"),
                payload=payload,
                encoding=PayloadEncoding(enc),
                metadata=metadata,
            ),
        )
    raise ProtocolError(f"unknown binary frame kind {kind}")


# ------------------------------------------------------------------------------------------------------------
# Encoding


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def encode_reply(
    vsn: Vsn, join_ref: str | None, ref: str | None, topic: str, status: str, response: Any
) -> str:
    """A ``phx_reply`` to the push whose ``ref`` is given."""
    payload = {"status": status, "response": response}
    if vsn == Vsn.V2:
        return _dumps([join_ref, ref, topic, "phx_reply", payload])
    return _dumps({"topic": topic, "event": "phx_reply", "payload": payload, "ref": ref})


def encode_push(
    vsn: Vsn, join_ref: str | None, topic: str, event: str, payload: Any, ref: str | None = None
) -> str:
    """A server push on a channel (system, presence_state, phx_close and phx_error with ``ref=join_ref``)."""
    if vsn == Vsn.V2:
        return _dumps([join_ref, ref, topic, event, payload])
    return _dumps({"topic": topic, "event": event, "payload": payload, "ref": ref})


def encode_broadcast(vsn: Vsn, topic: str, payload: Any) -> str:
    """The fan-out of a JSON broadcast (JSON text push, batch REST); ``payload`` is the whole map."""
    if vsn == Vsn.V2:
        return _dumps([None, None, topic, "broadcast", payload])
    return _dumps({"topic": topic, "event": "broadcast", "payload": payload, "ref": None})


def _json_broadcast_payload(message: UserBroadcast) -> bytes:
    """``{"event":e,"payload":<raw>,"type":"broadcast","meta"?:{...}}`` with the raw JSON spliced in."""
    parts = [
        b'{"event":',
        orjson.dumps(message.event),
        b',"payload":',
        message.payload,
        b',"type":"broadcast"',
    ]
    if message.metadata:
        parts += [b',"meta":', orjson.dumps(message.metadata)]
    parts.append(b"}")
    return b"".join(parts)


def encode_user_broadcast(vsn: Vsn, topic: str, message: UserBroadcast) -> str | bytes | None:
    """The fan-out of a raw-payload broadcast; None when this receiver cannot be given it at all.

    * V2: a kind 4 binary frame. If the topic, event or metadata is longer than 255 bytes the header cannot
      hold it (the reference server raises there); a JSON payload then goes out as a text broadcast, which
      realtime-js handles the same way, and a binary payload gives None.
    * V1: a JSON text broadcast; binary payloads give None (the reference drops them for 1.0.0 sockets).
    """
    is_json = message.encoding == PayloadEncoding.JSON
    if vsn == Vsn.V2:
        topic_b = topic.encode()
        event_b = message.event.encode()
        meta_b = orjson.dumps(message.metadata) if message.metadata else b""
        if max(len(topic_b), len(event_b), len(meta_b)) <= MAX_HEADER_FIELD:
            header = bytes((KIND_USER_BROADCAST, len(topic_b), len(event_b), len(meta_b), int(is_json)))
            return b"".join((header, topic_b, event_b, meta_b, message.payload))
        if not is_json:
            return None
        return (
            b"[null,null," + orjson.dumps(topic) + b',"broadcast",' + _json_broadcast_payload(message) + b"]"
        ).decode()
    if not is_json:
        return None
    return (
        b'{"topic":'
        + orjson.dumps(topic)
        + b',"event":"broadcast","payload":'
        + _json_broadcast_payload(message)
        + b',"ref":null}'
    ).decode()
