"""The cluster bus's frames, as plain values: packing into NOTIFY payloads and reading them back."""

from __future__ import annotations

import orjson
from pg_realtime.broadcast import Broadcast
from pg_realtime.bus_frames import (
    MAX_NOTIFY_BYTES,
    Packer,
    decode_message,
    encode_message,
    parse_notification,
)
from pg_realtime.phoenix import PayloadEncoding, UserBroadcast


def test_every_kind_of_message_comes_back_as_it_went() -> None:
    messages: list[tuple[str, bool, Broadcast]] = [
        ("room", False, {"type": "broadcast", "event": "e", "payload": {"x": "é"}}),
        ("room", True, UserBroadcast("j", b'{"a": [1, 2]}', PayloadEncoding.JSON, {})),
        ("room", False, UserBroadcast("b", bytes(range(256)), PayloadEncoding.BINARY, {})),
        ("r2", False, UserBroadcast("m", b"1", PayloadEncoding.JSON, {"id": "x"})),
    ]
    for subtopic, private, message in messages:
        assert decode_message(orjson.loads(encode_message(subtopic, private, message))) == (
            subtopic,
            private,
            message,
        )


def test_packing_respects_the_notification_limit_keeps_order_and_attaches_large_bodies() -> None:
    packer = Packer("origin-1")
    sizes = [10, 5000, 7000, 7800, 20000, 100, 64000, 3]
    pending = [
        (1.0, "room", False, encode_message("room", False, {"event": f"m{i}", "payload": "x" * size}))
        for i, size in enumerate(sizes)
    ]
    out = packer.pack(pending)
    assert all(len(p.encode()) < MAX_NOTIFY_BYTES for p in out.payloads)
    seen = []
    for payload in out.payloads:
        incoming = parse_notification(payload)
        assert incoming is not None and incoming.origin == "origin-1"
        seen.extend(incoming.messages)
    assert sum(out.counts) == len(sizes) == len(seen)
    bodies = dict(out.attachments)
    events = []
    for subtopic, private, body in seen:
        assert (subtopic, private) == ("room", False)
        message = decode_message(orjson.loads(bodies[body]))[2] if isinstance(body, int) else body
        assert isinstance(message, dict)
        events.append(message["event"])
    assert events == [f"m{i}" for i in range(len(sizes))]
    assert len(out.attachments) == 3  # 7,800 bytes with its envelope, 20,000 and 64,000
    # Numbers go on across flushes: a receiver never confuses two attachments of one sender.
    again = packer.pack(pending[4:5])
    assert again.attachments[0][0] == 4


def test_a_probe_is_not_a_batch() -> None:
    assert parse_notification('{"probe": "abc"}') is None
