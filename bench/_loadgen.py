"""Load generator worker: many WebSocket clients in one process (picows on uvloop).

Run by bench._harness.LoadGen as ``python -m bench._loadgen '<json config>'``. It connects
``subscribers`` sockets (and one publisher when asked), joins their topics, prints
``{"ready": true, ...}``, then answers one JSON line per command read from stdin:

* ``reset``: forget what was received so far.
* ``publish``: the publisher sends ``count`` broadcasts at ``rate`` per second (0: all at
  once), each stamped with the send time; answers when the last one is written.
* ``wait``: answers once ``count`` broadcasts have arrived since the last reset, or after
  ``timeout`` seconds.
* ``report``: counts, first and last arrival, and (with ``latency``) a file of latencies.
* ``quit``.

Latency is the receive time minus the stamp ``t`` in the payload, both from this machine's
wall clock (Postgres ``clock_timestamp()`` for database messages). ``protocol`` is
``phoenix`` (Supabase's vsn 2.0.0: joins, heartbeats, kind 3 out, kind 4 in) or ``raw`` (the
bare relay of bench._bare: no joins, broadcasts relayed as sent; or a server that sends each
payload as a text frame, with the topic in the URL in place of ``{topic}``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import sys
import time
from array import array
from pathlib import Path
from typing import Any

import orjson
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

from tests.harness.frames import payload_offset

KIND_USER_BROADCAST_PUSH = 3
HEARTBEAT_S = 20.0
#: The heartbeats of one period go out in this many slices (see Worker.heartbeats).
HEARTBEAT_SLICES = 200


def user_broadcast_push(topic: str, event: str, payload: bytes, join_ref: str = "1") -> bytes:
    """A vsn 2.0.0 kind 3 frame, as realtime-js sends for ``channel.send({type: 'broadcast'})``."""
    jr, t, e = join_ref.encode(), topic.encode(), event.encode()
    header = bytes((KIND_USER_BROADCAST_PUSH, len(jr), 0, len(t), len(e), 0, 1))
    return header + jr + t + e + payload


class Stats:
    __slots__ = ("count", "first", "last", "latencies", "measure", "reads")

    def __init__(self, measure: bool) -> None:
        self.measure = measure
        self.reset()

    def reset(self) -> None:
        self.count = 0
        self.reads = 0
        self.first = 0.0
        self.last = 0.0
        self.latencies = array("d")


class Client(WSListener):
    """One socket. Broadcasts are binary frames (and, with ``raw_text``, text frames holding
    just the payload); other text frames are replies."""

    def __init__(self, stats: Stats, joined: asyncio.Future[None] | None, raw_text: bool = False) -> None:
        self.stats = stats
        self.joined = joined
        self.raw_text = raw_text
        self.transport: WSTransport | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        msg_type = frame.msg_type
        if msg_type == WSMsgType.BINARY or (self.raw_text and msg_type == WSMsgType.TEXT):
            now = time.time()
            stats = self.stats
            stats.count += 1
            if frame.last_in_buffer:
                stats.reads += 1
            if not stats.first:
                stats.first = now
            stats.last = now
            if stats.measure:
                data = frame.get_payload_as_bytes()
                offset = payload_offset(data) if msg_type == WSMsgType.BINARY else 0
                stats.latencies.append(now - orjson.loads(data[offset:])["t"])
        elif msg_type == WSMsgType.TEXT:
            joined = self.joined
            if joined is not None and not joined.done():
                reply = orjson.loads(frame.get_payload_as_bytes())
                if reply[3] == "phx_reply" and reply[1] == "join":
                    if reply[4].get("status") == "ok":
                        joined.set_result(None)
                    else:
                        joined.set_exception(RuntimeError(f"join refused: {reply[4]}"))
        elif msg_type == WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()


class Worker:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.url: str = config["url"]
        self.phoenix = config.get("protocol", "phoenix") == "phoenix"
        self.topics: list[str] = config.get("topics") or ["bench"]
        self.stats = Stats(bool(config.get("latency")))
        self.clients: list[Client] = []
        self.publisher: Client | None = None
        self.workdir = Path(config.get("workdir", "/tmp"))
        self._files = itertools.count()

    def _join_frame(self, topic: str, broadcast_self: bool = False) -> bytes:
        config = {
            "broadcast": {"self": broadcast_self, "ack": False},
            "presence": {"enabled": False},
            "postgres_changes": [],
            "private": False,
        }
        return orjson.dumps(["1", "join", f"realtime:{topic}", "phx_join", {"config": config}])

    async def _connect(self, topic: str | None, stats: Stats | None = None) -> Client:
        loop = asyncio.get_running_loop()
        joined = loop.create_future() if self.phoenix and topic is not None else None
        client = Client(stats or self.stats, joined, raw_text=not self.phoenix)
        _, listener = await ws_connect(
            lambda: client,
            # A server without joins may take the topic from the URL.
            self.url.replace("{topic}", topic or ""),
            read_buffer_init_size=int(self.config.get("read_buffer", 16384)),
            websocket_handshake_timeout=60,
        )
        assert listener is client and client.transport is not None
        if joined is not None and topic is not None:
            client.transport.send(WSMsgType.TEXT, self._join_frame(topic))
            await asyncio.wait_for(joined, 60)
        return client

    async def connect_all(self) -> None:
        n = int(self.config.get("subscribers", 0))
        limit = asyncio.Semaphore(int(self.config.get("connect_concurrency", 100)))

        async def one(i: int) -> Client:
            async with limit:
                return await self._connect(self.topics[i % len(self.topics)])

        self.clients = list(await asyncio.gather(*(one(i) for i in range(n))))
        if self.config.get("publisher"):
            # A publisher of its own: it joins with self=false and keeps separate counts, so
            # neither its own sends nor the database messages of its topic are counted.
            self.publisher = await self._connect(self.topics[0], Stats(False))

    async def heartbeats(self) -> None:
        """Each client's heartbeat every HEARTBEAT_S, spread over the period as those of clients
        that connected at different times are. All at once, the burst of replies held up what
        the server was about to send, and a message sent after a silence that is a multiple of
        the period met it every time (measured: 40 ms after 60 s of silence, against 5-8 ms)."""
        if not self.phoenix:
            return
        frame = b'[null,"hb","phoenix","heartbeat",{}]'
        for tick in itertools.count():
            await asyncio.sleep(HEARTBEAT_S / HEARTBEAT_SLICES)
            clients = [*self.clients, self.publisher]
            for client in clients[tick % HEARTBEAT_SLICES :: HEARTBEAT_SLICES]:
                if client is not None and client.transport is not None:
                    client.transport.send(WSMsgType.TEXT, frame)

    async def publish(self, count: int, rate: float, topic: str, event: str, pad: int) -> dict[str, Any]:
        assert self.publisher is not None and self.publisher.transport is not None
        transport = self.publisher.transport
        padding = "x" * pad
        t0 = time.time()
        start = time.monotonic()
        for k in range(count):
            if rate > 0:
                delay = start + k / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            payload = orjson.dumps({"t": time.time(), "pad": padding})
            transport.send(WSMsgType.BINARY, user_broadcast_push(f"realtime:{topic}", event, payload))
        return {"sent": count, "t0": t0, "t1": time.time()}

    async def wait(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.stats.count < count and time.monotonic() < deadline:
            await asyncio.sleep(0.002)

    def report(self) -> dict[str, Any]:
        stats = self.stats
        result: dict[str, Any] = {
            "received": stats.count,
            "first": stats.first,
            "last": stats.last,
            "reads": stats.reads,
        }
        if stats.measure and stats.latencies:
            path = self.workdir / f"latency-{os.getpid()}-{next(self._files)}.f64"
            with path.open("wb") as f:
                stats.latencies.tofile(f)
            result["latency_file"] = str(path)
        return result

    async def serve(self) -> None:
        t0 = time.monotonic()
        await self.connect_all()
        emit(
            {
                "ready": True,
                "connected": len(self.clients) + (self.publisher is not None),
                "connect_s": time.monotonic() - t0,
            }
        )
        beat = asyncio.create_task(self.heartbeats())
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(limit=2**20)
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while line := await reader.readline():
            command = json.loads(line)
            op = command.pop("op")
            if op == "quit":
                break
            if op == "reset":
                self.stats.reset()
                emit({"ok": True})
            elif op == "publish":
                emit(
                    await self.publish(
                        int(command["count"]),
                        float(command.get("rate", 0)),
                        command.get("topic", self.topics[0]),
                        command.get("event", "bench"),
                        int(command.get("pad", 64)),
                    )
                )
            elif op == "wait":
                await self.wait(int(command["count"]), float(command.get("timeout", 60)))
                emit(self.report())
            elif op == "report":
                emit(self.report())
            else:
                emit({"error": f"unknown op {op}"})
        beat.cancel()
        for client in [*self.clients, self.publisher]:
            if client is not None and client.transport is not None:
                client.transport.disconnect()


def emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def main() -> None:
    import uvloop

    config = json.loads(sys.argv[1])
    try:
        uvloop.run(Worker(config).serve())
    except Exception as exc:
        emit({"error": f"{type(exc).__name__}: {exc}"})
        raise


if __name__ == "__main__":
    main()
