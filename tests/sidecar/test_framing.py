"""Frames queued for one socket, framed as WebSocket messages for one write (RFC 6455 §5.2)."""

from __future__ import annotations

import struct

from pg_realtime.channels import Outbox
from pg_realtime.framing import encode, take


def parse(data: bytes) -> list[tuple[int, bytes]]:
    """(opcode, payload) of each unmasked, final frame in ``data``."""
    out = []
    at = 0
    while at < len(data):
        first, second = data[at], data[at + 1]
        assert first & 0x80 and not first & 0x70  # FIN, no RSV bits (no compression)
        assert not second & 0x80  # a server never masks
        n, at = second & 0x7F, at + 2
        if n == 126:
            (n,), at = struct.unpack_from("!H", data, at), at + 2
        elif n == 127:
            (n,), at = struct.unpack_from("!Q", data, at), at + 8
        out.append((first & 0x0F, data[at : at + n]))
        at += n
    return out


def test_frames_keep_their_order_type_and_bytes_at_every_length_form() -> None:
    frames: list[str | bytes] = [
        b"\x04abc",
        '[null,null,"realtime:room","broadcast",{"é":1}]',
        b"x" * 125,
        b"y" * 126,
        "z" * 65535,
        b"w" * 65536,
        b"",
    ]
    parsed = parse(encode(frames))
    assert parsed == [(1, f.encode()) if isinstance(f, str) else (2, f) for f in frames]


def test_take_stops_at_the_byte_limit_and_at_an_overflow() -> None:
    outbox = Outbox(limit=0, wakeup=lambda: None)
    for i in range(10):
        outbox.push(bytes([i]) * 100)
    first = take(outbox, limit=250)
    assert [f[0] for f in first] == [0, 1, 2]  # the frame that crosses the limit still goes
    assert [f[0] for f in take(outbox)] == list(range(3, 10))
    assert take(outbox) == []
    big = Outbox(limit=300, wakeup=lambda: None)
    big.push(b"a" * 200)
    big.push(b"b" * 200)  # over the limit: the socket is closed for not reading
    assert big.overflowed
    assert take(big) == []
