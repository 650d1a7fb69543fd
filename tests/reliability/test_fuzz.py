"""A live fuzz run: thousands of random and mutated frames against a running server.

Several sockets (1.0.0 and 2.0.0) send valid, mutated and random frames, as text and binary
(text frames that are not even UTF-8 included), while a well-behaved pair of clients keeps
exchanging broadcasts and heartbeats. Bounded in frames and in time. The server must never
crash, never log an unexpected exception, keep serving the good clients throughout, and end
with its registry exactly as the good clients left it.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import time
from typing import Any

import aiohttp
import orjson
import pytest

from tests.sidecar.test_phoenix import kind0, kind3
from tests.sidecar.wire import RawSocket

from .support import bearer, is_event, wait_for

pytestmark = pytest.mark.asyncio

FRAMES = 10_000
TIME_BUDGET_S = 20.0
CHECK_EVERY = 100
SEED = 20240611


def corpus(token: str) -> list[tuple[str, str | bytes]]:
    """Valid client frames of every kind, as (vsn, frame)."""
    topics = [
        "realtime:fuzz",
        "realtime:room-1",
        "realtime:",
        "realtime:it's",
        "phoenix",
        "other",
        "realtime:good",
    ]
    payloads: list[tuple[str, Any]] = [
        ("phx_join", {"config": {"broadcast": {"self": True, "ack": True}}}),
        ("phx_join", {"config": {"private": True}, "access_token": token}),
        ("phx_join", {"config": {"private": True, "broadcast": {"replay": {"since": 0, "limit": 5}}}}),
        ("phx_join", {"config": {"presence": {"enabled": True}}}),
        ("phx_join", {"config": {"postgres_changes": [{"event": "*", "schema": "public"}]}}),
        ("phx_join", {}),
        ("phx_leave", {}),
        ("broadcast", {"type": "broadcast", "event": "e", "payload": {"n": 1, "nested": [1, {"a": None}]}}),
        ("broadcast", {"type": "broadcast", "event": "e", "payload": "not a map"}),
        ("access_token", {"access_token": token}),
        ("access_token", {"access_token": "sb_secret"}),
        ("access_token", {"access_token": ""}),
        ("presence", {"event": "track", "payload": {"a": 1}}),
        ("heartbeat", {}),
        ("unknown_event", {"x": 1}),
    ]
    frames: list[tuple[str, str | bytes]] = []
    for topic in topics:
        for event, payload in payloads:
            frames.append(("2.0.0", orjson.dumps(["1", "2", topic, event, payload]).decode()))
            v1 = {"topic": topic, "event": event, "payload": payload, "ref": "3", "join_ref": "1"}
            frames.append(("1.0.0", orjson.dumps(v1).decode()))
        raw_topic = topic.encode()
        frames.append(("2.0.0", kind3(b"1", b"4", raw_topic, b"e", b"", 1, b'{"a":1}')))
        frames.append(("2.0.0", kind3(b"1", b"5", raw_topic, b"bin", b'{"k":"v"}', 0, b"\x00\xff")))
        frames.append(("2.0.0", kind0(b"1", b"6", raw_topic, b"broadcast", b"\x01\x02")))
    return frames


def mutate(rng: random.Random, frame: bytes) -> bytes:
    data = bytearray(frame)
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(6)
        position = rng.randrange(len(data) + 1)
        if choice == 0 and data:  # flip a bit
            index = rng.randrange(len(data))
            data[index] ^= 1 << rng.randrange(8)
        elif choice == 1:  # truncate
            del data[position:]
        elif choice == 2:  # insert random bytes
            data[position:position] = rng.randbytes(rng.randint(1, 8))
        elif choice == 3 and data:  # set a byte to an edge value (lengths, kinds)
            data[rng.randrange(len(data))] = rng.choice([0, 1, 3, 4, 127, 128, 254, 255])
        elif choice == 4 and len(data) > 2:  # duplicate a slice
            start = rng.randrange(len(data) - 1)
            data[position:position] = data[start : start + rng.randint(1, 32)]
        else:  # delete a slice
            del data[position : position + rng.randint(1, 8)]
    return bytes(data)


def random_json(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 3 else 5)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind == 2:
        return rng.choice([0, -1, 2**63 - 1, 1.5, 1e300])
    if kind == 3:
        return rng.choice(["", "realtime:fuzz", "phx_join", "broadcast", "ü" * 3, "\x00", "x" * 300])
    if kind == 4:
        return rng.randbytes(4).hex()
    if kind == 5:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 6))]
    return {
        rng.choice(["topic", "event", "payload", "ref", "join_ref", "config", "type", "x"]): random_json(
            rng, depth + 1
        )
        for _ in range(rng.randint(0, 5))
    }


def make_frame(rng: random.Random, frames: list[tuple[str, str | bytes]], vsn: str) -> tuple[str, bytes]:
    """(opcode kind "text" | "binary", bytes) to send on a socket of ``vsn``.

    A text frame that is not UTF-8 makes the server close the socket (1007), as it should; those are
    kept rare so that most frames reach the decoder.
    """
    kind, data = _make_frame(rng, frames, vsn)
    if kind == "text" and rng.random() < 0.95:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            kind = "binary"
    return kind, data


def _make_frame(rng: random.Random, frames: list[tuple[str, str | bytes]], vsn: str) -> tuple[str, bytes]:
    pick = rng.random()
    if pick < 0.3:
        _vsn, frame = rng.choice([f for f in frames if f[0] == vsn] if vsn == "1.0.0" else frames)
        data = frame.encode() if isinstance(frame, str) else frame
        return ("text" if isinstance(frame, str) else "binary"), data
    if pick < 0.7:
        _vsn, frame = rng.choice(frames)
        data = mutate(rng, frame.encode() if isinstance(frame, str) else frame)
        return rng.choice(["text", "binary"]) if rng.random() < 0.2 else (
            "text" if isinstance(frame, str) else "binary"
        ), data
    if pick < 0.9:
        return "text", orjson.dumps(random_json(rng))
    return rng.choice(["text", "binary"]), rng.randbytes(rng.randint(0, 64))


def user_event(frame: Any) -> Any:
    """The user event of a JSON broadcast frame (fuzzers broadcast on the good topic too)."""
    if not is_event(frame, "broadcast"):
        return None
    body = frame[4] if isinstance(frame, list) else frame["payload"]
    return body.get("event") if isinstance(body, dict) else None


class Fuzzer:
    """One socket that sends junk and reads (and drops) whatever comes back; reconnects when closed."""

    def __init__(self, url: str, token: str, vsn: str) -> None:
        self.url = url
        self.token = token
        self.vsn = vsn
        self.ws: RawSocket | None = None
        self.drain: asyncio.Task[None] | None = None
        self.reconnects = 0
        self.close_codes: list[int | None] = []

    async def ensure(self) -> RawSocket:
        if self.ws is None or self.ws.ws.closed:
            if self.ws is not None:
                self.close_codes.append(self.ws.ws.close_code)
            await self.close()
            self.ws = await RawSocket.connect(self.url, self.token, vsn=self.vsn)
            self.drain = asyncio.create_task(self._drain(self.ws))
            self.reconnects += 1
        return self.ws

    @staticmethod
    async def _drain(ws: RawSocket) -> None:
        async for _message in ws.ws:
            pass

    async def send(self, kind: str, data: bytes) -> None:
        ws = await self.ensure()
        with contextlib.suppress(ConnectionError, RuntimeError):
            if kind == "binary":
                await ws.ws.send_bytes(data)
            else:  # possibly not UTF-8 at all: send the bytes as a text frame anyway
                await ws.ws.send_frame(data, aiohttp.WSMsgType.TEXT)

    async def close(self) -> None:
        if self.drain is not None:
            self.drain.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.drain
        if self.ws is not None:
            await self.ws.close()
        self.ws = None


async def test_fuzzed_frames_never_break_the_server_or_its_good_clients(make_server, db_dsn, caplog):
    caplog.set_level(logging.INFO, logger="pg_realtime")
    server = await make_server(db_dsn)
    realtime = server.server
    rng = random.Random(SEED)
    frames = corpus(server.token("authenticated"))
    sender = await RawSocket.connect(server.url, server.token())
    receiver = await RawSocket.connect(server.url, server.token(), vsn="1.0.0")
    fuzzers = [Fuzzer(server.url, server.token(), "2.0.0" if i % 2 else "1.0.0") for i in range(6)]
    sent = checks = 0
    try:
        await sender.join("good")
        await receiver.join("good")
        started = time.monotonic()
        while sent < FRAMES and time.monotonic() - started < TIME_BUDGET_S:
            fuzzer = rng.choice(fuzzers)
            await fuzzer.send(*make_frame(rng, frames, fuzzer.vsn))
            sent += 1
            if sent % CHECK_EVERY == 0:
                # The good clients are served throughout: a heartbeat and a broadcast go through.
                checks += 1
                body = {"type": "broadcast", "event": "check", "payload": {"n": checks}}
                await sender.send("realtime:good", "broadcast", body, ref=None, join_ref="1")
                await sender.send("phoenix", "heartbeat", {}, ref=f"hb{checks}")
                got = await receiver.recv_until(lambda f: user_event(f) == "check", timeout=5)
                assert got["payload"]["payload"] == {"n": checks}
                reply = await sender.recv_until(lambda f: is_event(f, "phx_reply"), timeout=5)
                assert reply[1] == f"hb{checks}" and reply[4]["status"] == "ok"
        elapsed = time.monotonic() - started
        assert sent >= FRAMES or elapsed >= TIME_BUDGET_S
        assert checks >= 10, f"only {sent} frames in {elapsed:.1f}s"

        for fuzzer in fuzzers:
            await fuzzer.close()
        await wait_for(lambda: len(realtime.connections) == 2, what="fuzz sockets gone")
        assert realtime.registry.channel_count == 2
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{server.url}/healthz") as response:
                assert response.status == 200
            batch = {"messages": [{"topic": "good", "event": "after", "payload": {"done": True}}]}
            async with http.post(
                f"{server.url}/api/broadcast", json=batch, headers=bearer(server)
            ) as response:
                assert response.status == 202
        for ws in (sender, receiver):
            got = await ws.recv_until(lambda f: user_event(f) == "after", timeout=5)
            body = got[4] if isinstance(got, list) else got["payload"]
            assert body["payload"] == {"done": True}
    finally:
        for fuzzer in fuzzers:
            await fuzzer.close()
        await sender.close()
        await receiver.close()

    unexpected = [
        r for r in caplog.records if r.name.startswith("pg_realtime") and r.levelno >= logging.ERROR
    ]
    assert not unexpected, [r.getMessage() for r in unexpected[:5]]
    assert any("MalformedWebSocketMessage" in r.getMessage() for r in caplog.records)
    codes = collections.Counter(str(code) for f in fuzzers for code in f.close_codes)
    malformed = sum("MalformedWebSocketMessage" in r.getMessage() for r in caplog.records)
    connections = sum(f.reconnects for f in fuzzers)
    print(f"{sent} frames in {elapsed:.1f}s, {connections} fuzz connections, closes {dict(codes)}")
    print(f"{malformed} frames logged as malformed")
