"""A WebSocket client written on a bare TCP socket, so that it can truly stop reading.

aiohttp's client keeps reading into its own buffers whatever the test does; this one does the
HTTP upgrade by hand, sends masked frames, and reads nothing until asked to. With a tiny
SO_RCVBUF the server's writes stop being accepted after a few kilobytes.
"""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from dataclasses import dataclass

import orjson

OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8


@dataclass
class Frame:
    opcode: int
    data: bytes

    @property
    def close_code(self) -> int | None:
        if self.opcode != OP_CLOSE or len(self.data) < 2:
            return None
        return int(struct.unpack("!H", self.data[:2])[0])


def client_frame(data: bytes, opcode: int = OP_TEXT) -> bytes:
    """One final, masked client frame."""
    mask = os.urandom(4)
    length = len(data)
    if length < 126:
        header = struct.pack("!BB", 0x80 | opcode, 0x80 | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
    return header + mask + masked


def parse_frames(buffer: bytes) -> tuple[list[Frame], bytes]:
    """Complete server frames at the start of ``buffer`` and the incomplete rest."""
    frames: list[Frame] = []
    pos = 0
    while len(buffer) - pos >= 2:
        first, second = buffer[pos], buffer[pos + 1]
        length = second & 0x7F
        header = 2
        if length == 126:
            if len(buffer) - pos < 4:
                break
            length = struct.unpack("!H", buffer[pos + 2 : pos + 4])[0]
            header = 4
        elif length == 127:
            if len(buffer) - pos < 10:
                break
            length = struct.unpack("!Q", buffer[pos + 2 : pos + 10])[0]
            header = 10
        if len(buffer) - pos < header + length:
            break
        frames.append(Frame(first & 0x0F, buffer[pos + header : pos + header + length]))
        pos += header + length
    return frames, buffer[pos:]


class StalledSocket:
    """Connects, upgrades, can send; reads only when :meth:`read_until_closed` is called."""

    def __init__(self, sock: socket.socket, leftover: bytes) -> None:
        self.sock = sock
        self.leftover = leftover

    @classmethod
    async def connect(
        cls, port: int, token: str, vsn: str = "2.0.0", rcvbuf: int = 4096, host: str = "127.0.0.1"
    ) -> StalledSocket:
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: sets the window
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (host, port))
            key = base64.b64encode(os.urandom(16)).decode()
            request = (
                f"GET /realtime/v1/websocket?apikey={token}&vsn={vsn} HTTP/1.1\r\n"
                f"Host: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            )
            await loop.sock_sendall(sock, request.encode())
            response = b""
            while b"\r\n\r\n" not in response:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 1024), 5)
                if not chunk:
                    raise ConnectionError(f"closed during the handshake: {response!r}")
                response += chunk
            head, _, rest = response.partition(b"\r\n\r\n")
            status = head.split(b"\r\n", 1)[0]
            if b" 101 " not in status + b" ":
                raise ConnectionError(f"upgrade refused: {head!r}")
        except BaseException:
            sock.close()
            raise
        return cls(sock, rest)

    async def send_json(self, value: object) -> None:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(self.sock, client_frame(orjson.dumps(value)))

    async def join(self, subtopic: str) -> None:
        await self.send_json(["1", "1", f"realtime:{subtopic}", "phx_join", {"config": {}}])

    async def read_until_closed(self, timeout: float = 10.0) -> list[Frame]:
        """Read everything the server sent, up to its close frame or EOF."""
        loop = asyncio.get_running_loop()
        buffer = self.leftover
        frames: list[Frame] = []
        async with asyncio.timeout(timeout):
            while True:
                parsed, buffer = parse_frames(buffer)
                frames.extend(parsed)
                if any(f.opcode == OP_CLOSE for f in parsed):
                    return frames
                try:
                    chunk = await loop.sock_recv(self.sock, 65536)
                except ConnectionResetError:
                    return frames
                if not chunk:
                    return frames
                buffer += chunk

    def close(self) -> None:
        self.sock.close()
