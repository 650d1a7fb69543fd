"""A bare WebSocket client for byte-exact protocol tests (the official clients hide frames)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import orjson


class RawSocket:
    def __init__(self, session: aiohttp.ClientSession, ws: aiohttp.ClientWebSocketResponse, vsn: str) -> None:
        self.session = session
        self.ws = ws
        self.vsn = vsn
        self._ref = 0

    @classmethod
    async def connect(
        cls, base_url: str, token: str, vsn: str = "2.0.0", path: str = "/realtime/v1/websocket"
    ) -> RawSocket:
        session = aiohttp.ClientSession()
        try:
            ws = await session.ws_connect(f"{base_url}{path}?apikey={token}&vsn={vsn}", autoping=True)
        except BaseException:
            await session.close()
            raise
        return cls(session, ws, vsn)

    async def close(self) -> None:
        await self.ws.close()
        await self.session.close()

    async def __aenter__(self) -> RawSocket:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def next_ref(self) -> str:
        self._ref += 1
        return str(self._ref)

    async def send(
        self, topic: str, event: str, payload: Any, ref: str | None = None, join_ref: str | None = None
    ) -> str | None:
        """Send one frame in this socket's text format; returns the ref used."""
        if self.vsn == "2.0.0":
            await self.ws.send_str(orjson.dumps([join_ref, ref, topic, event, payload]).decode())
        else:
            frame = {"topic": topic, "event": event, "payload": payload, "ref": ref, "join_ref": join_ref}
            await self.ws.send_str(orjson.dumps(frame).decode())
        return ref

    async def send_raw(self, data: str | bytes) -> None:
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data)

    async def recv(self, timeout: float = 3.0) -> Any:
        """The next frame: decoded JSON for text, bytes for binary."""
        msg = await asyncio.wait_for(self.ws.receive(), timeout)
        if msg.type == aiohttp.WSMsgType.TEXT:
            return orjson.loads(msg.data)
        if msg.type == aiohttp.WSMsgType.BINARY:
            return bytes(msg.data)
        return msg

    async def recv_until(self, predicate: Any, timeout: float = 3.0) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            frame = await self.recv(max(0.01, deadline - loop.time()))
            if predicate(frame):
                return frame

    async def expect_silence(self, timeout: float = 0.3) -> None:
        try:
            frame = await self.recv(timeout)
        except TimeoutError:
            return
        raise AssertionError(f"expected no frame, got {frame!r}")

    async def join(self, subtopic: str, config: dict[str, Any] | None = None, **extra: Any) -> Any:
        ref = self.next_ref()
        payload = {
            "config": config or {"broadcast": {"self": False, "ack": False}, "private": False},
            **extra,
        }
        await self.send(f"realtime:{subtopic}", "phx_join", payload, ref=ref, join_ref=ref)
        return await self.recv_until(lambda f: _is_reply(f, ref))


def _is_reply(frame: Any, ref: str) -> bool:
    if isinstance(frame, list):
        return bool(frame[3] == "phx_reply" and frame[1] == ref)
    if isinstance(frame, dict):
        return bool(frame.get("event") == "phx_reply" and frame.get("ref") == ref)
    return False


def reply_of(frame: Any) -> dict[str, Any]:
    """The {"status", "response"} of a reply frame in either format."""
    payload = frame[4] if isinstance(frame, list) else frame["payload"]
    assert isinstance(payload, dict)
    return payload
