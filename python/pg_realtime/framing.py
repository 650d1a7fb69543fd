"""Many queued frames to one WebSocket in one write.

A socket's writer used to hand its frames to aiohttp one at a time; each went to the kernel
in a ``send()`` of its own, and on loopback and virtual NICs that system call (the TCP path
and the receiver's wake-up run in it) was the largest single cost of a delivery. When a read
of the reader (or a burst of client broadcasts) leaves several frames in a socket's outbox,
they are framed here and written with one ``transport.write``: the same bytes on the wire as
one ``send_bytes``/``send_str`` per frame, one system call.

Server frames are never masked, and the sidecar's sockets never negotiate compression, so a
frame is a 2, 4 or 10-byte header and the payload (RFC 6455 §5.2). Where aiohttp's writer
compresses, or its internals are not those this was written against (aiohttp is pinned in
requirements.lock), frames go through ``send_bytes``/``send_str`` one by one as before.
Flow control is aiohttp's: after a write, a paused transport is waited for, so a slow reader
keeps frames in its bounded outbox, never in an unbounded transport buffer.
"""

from __future__ import annotations

import struct
from typing import Any, Protocol

from aiohttp import web

#: Frames taken from an outbox per write, in payload bytes (a larger frame goes alone).
BATCH_BYTES = 64 * 1024

_TEXT = 0x81  # FIN | opcode 1
_BINARY = 0x82  # FIN | opcode 2
_LEN2 = struct.Struct("!BBH").pack
_LEN8 = struct.Struct("!BBQ").pack


class _Outbox(Protocol):
    def pop(self) -> str | bytes | None: ...


def take(outbox: _Outbox, limit: int = BATCH_BYTES) -> list[str | bytes]:
    """The next frames of ``outbox``, up to ``limit`` bytes (at least one frame if any)."""
    frames: list[str | bytes] = []
    size = 0
    while size < limit and (frame := outbox.pop()) is not None:
        frames.append(frame)
        size += len(frame)
    return frames


def encode(frames: list[str | bytes]) -> bytes:
    """``frames`` as unmasked, uncompressed WebSocket messages (str: text, bytes: binary)."""
    parts: list[bytes] = []
    append = parts.append
    for frame in frames:
        if isinstance(frame, str):
            data = frame.encode()
            opcode = _TEXT
        else:
            data = frame
            opcode = _BINARY
        n = len(data)
        if n < 126:
            append(bytes((opcode, n)))
        elif n < 65536:
            append(_LEN2(opcode, 126, n))
        else:
            append(_LEN8(opcode, 127, n))
        append(data)
    return b"".join(parts)


def _raw_writer(ws: web.WebSocketResponse) -> Any | None:
    """aiohttp's frame writer of ``ws`` when it can be bypassed safely, else None."""
    writer: Any = getattr(ws, "_writer", None)
    if writer is None or getattr(writer, "compress", True) or getattr(writer, "use_mask", True):
        return None
    protocol = getattr(writer, "protocol", None)
    if getattr(writer, "transport", None) is None or not hasattr(protocol, "_drain_helper"):
        return None
    return writer


def write_now(ws: web.WebSocketResponse, outbox: _Outbox) -> bool:
    """Write what ``outbox`` holds at once, without waiting; False when that is the writer task's
    job instead (no writer to bypass, a closing transport, or one paused by flow control)."""
    writer = _raw_writer(ws)
    if writer is None or writer._closing:
        return False
    transport, protocol = writer.transport, writer.protocol
    if transport.is_closing() or protocol.writing_paused:
        return False
    while frames := take(outbox):
        transport.write(encode(frames))
        if protocol.writing_paused:
            return False
    return True


async def send(ws: web.WebSocketResponse, frames: list[str | bytes]) -> None:
    """Write ``frames`` to ``ws`` in order, in one system call where possible."""
    writer = _raw_writer(ws)
    if writer is None:
        for frame in frames:
            if isinstance(frame, bytes):
                await ws.send_bytes(frame)
            else:
                await ws.send_str(frame)
        return
    transport = writer.transport
    if writer._closing or transport.is_closing():
        raise ConnectionResetError("Cannot write to closing transport")
    transport.write(encode(frames))
    protocol = writer.protocol
    if protocol.writing_paused:
        await protocol._drain_helper()
