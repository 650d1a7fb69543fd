"""A stand-in for a transaction-mode pooler: it relays the PostgreSQL protocol to a real server
but refuses LISTEN, as PgBouncer in transaction mode would have to (it cannot keep a LISTEN).

It reads only the message boundaries of what the client sends; the server's replies are relayed
as they come.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct

SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104


def error_response(message: str) -> bytes:
    fields = b"SERROR\0VERROR\0C0A000\0M" + message.encode() + b"\0\0"
    return b"E" + struct.pack("!I", 4 + len(fields)) + fields


READY = b"Z" + struct.pack("!I", 5) + b"I"
REFUSAL = "LISTEN/NOTIFY not supported in transaction pooling mode (fake pooler)"


def _is_listen(sql: bytes) -> bool:
    return sql.lstrip().lower().startswith(b"listen")


class FakePooler:
    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.server: asyncio.Server | None = None
        self.refused = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._client, "127.0.0.1", 0)
        return int(self.server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await self.server.wait_closed()

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            # Startup: answer "no" to SSL/GSS encryption requests, relay the startup packet.
            while True:
                head = await reader.readexactly(8)
                length, code = struct.unpack("!II", head)
                rest = await reader.readexactly(length - 8)
                if code in (SSL_REQUEST, GSSENC_REQUEST):
                    writer.write(b"N")
                    await writer.drain()
                    continue
                break
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
            up_writer.write(head + rest)
            relay = asyncio.create_task(self._relay(up_reader, writer))
            skipping = False
            while True:
                kind = await reader.readexactly(1)
                (length,) = struct.unpack("!I", await reader.readexactly(4))
                body = await reader.readexactly(length - 4)
                if kind == b"Q" and _is_listen(body):
                    self.refused += 1
                    writer.write(error_response(REFUSAL) + READY)
                    await writer.drain()
                    continue
                if kind == b"P":
                    query = body.split(b"\0", 2)[1]
                    if _is_listen(query):
                        self.refused += 1
                        writer.write(error_response(REFUSAL))
                        await writer.drain()
                        skipping = True
                        continue
                if skipping:
                    if kind == b"S":
                        skipping = False
                        writer.write(READY)
                        await writer.drain()
                    continue
                up_writer.write(kind + struct.pack("!I", length) + body)
                await up_writer.drain()
                if kind == b"X":
                    break
            relay.cancel()
            up_writer.close()
        except (asyncio.IncompleteReadError, ConnectionError, OSError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
