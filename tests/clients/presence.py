"""Presence through the official clients: one interface over realtime-js and realtime-py members
of a topic, their ``presenceState()`` and callbacks in one shape, and the table they must agree with.
The table is read off the event loop (see :func:`fetch`).

A state is compared as ``{key: [(presence_ref, payload), ...]}``, sorted by ref: both clients
rename ``phx_ref`` to ``presence_ref`` and drop ``phx_ref_prev``, so the table's rows
(``realtime.presences``: ``ref``, ``key``, and the meta with ``phx_ref``) give the same shape.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson
import psycopg

from .drivers import JsDriver, py_close, ws_url

Presences = list[tuple[str, dict[str, Any]]]
#: {key: [(presence_ref, payload), ...]} sorted by ref
State = dict[str, Presences]

__all__ = [
    "JsMember",
    "Member",
    "Observer",
    "PyMember",
    "Seen",
    "State",
    "StateOf",
    "assert_once",
    "converge",
    "fetch",
    "normalize",
    "payloads",
    "table_state",
    "wait_seen",
    "wait_synced",
]


def _presences(metas: Any, ref_field: str) -> Presences:
    out = []
    for value in metas:
        payload = {k: v for k, v in value.items() if k not in (ref_field, "phx_ref_prev")}
        out.append((str(value[ref_field]), payload))
    return sorted(out, key=lambda entry: entry[0])


def normalize(state: dict[str, Any]) -> State:
    """A client's ``presenceState()`` (``{key: [{presence_ref, ...payload}]}``) as a :data:`State`."""
    return {str(key): _presences(metas, "presence_ref") for key, metas in state.items()}


def table_state(conn: psycopg.Connection[Any], topic: str, private: bool = False) -> State:
    """The presences of ``topic`` in ``realtime.presences``, as a :data:`State`."""
    state: dict[str, list[dict[str, Any]]] = {}
    rows = conn.execute(
        "select key, ref, meta from realtime.presences where topic = %s and private = %s",
        (topic, private),
    ).fetchall()
    for key, ref, meta in rows:
        assert meta["phx_ref"] == ref, (ref, meta)
        state.setdefault(key, []).append(meta)
    return {key: _presences(metas, "phx_ref") for key, metas in state.items()}


async def fetch(conn: psycopg.Connection[Any], query: str, params: Sequence[Any] = ()) -> list[Any]:
    """The rows of ``query``, run off the event loop: a server in this process may hold a lock
    the statement waits for (realtime.maintain() on realtime.messages), and must go on running."""
    return await asyncio.to_thread(lambda: conn.execute(query, params).fetchall())


def payloads(state: State) -> dict[str, list[bytes]]:
    """The payloads of a state by key, without refs (for what a step should have produced)."""
    return {
        key: sorted(orjson.dumps(payload, option=orjson.OPT_SORT_KEYS) for _ref, payload in presences)
        for key, presences in state.items()
    }


@dataclass(frozen=True)
class Seen:
    """One join or leave callback: the key and the presences that joined or left."""

    kind: str  # "join" | "leave"
    key: str
    presences: Presences

    def has(self, kind: str, key: str, ref: str) -> bool:
        return self.kind == kind and self.key == key and any(r == ref for r, _ in self.presences)


class Observer(Protocol):
    """Anything with a presence state to compare: a client's channel."""

    @property
    def name(self) -> str: ...
    async def state(self) -> State: ...


@dataclass
class StateOf:
    """An :class:`Observer` of a channel driven by hand: ``state`` returns its ``presenceState()``."""

    name: str
    presence_state: Callable[[], Awaitable[dict[str, Any]]]

    async def state(self) -> State:
        return normalize(await self.presence_state())


class Member(Observer, Protocol):
    """One client's channel on a presence topic."""

    key: str

    async def subscribe(self) -> None: ...
    async def track(self, payload: dict[str, Any]) -> None: ...
    async def untrack(self) -> None: ...
    async def leave(self) -> None: ...
    async def close(self) -> None: ...
    def seen(self) -> list[Seen]: ...
    def syncs(self) -> int: ...


@dataclass
class JsMember:
    """A realtime-js client (one socket) with one presence channel, through :class:`JsDriver`."""

    js: JsDriver
    name: str
    url: str
    token: str
    topic: str
    key: str
    vsn: str = "2.0.0"
    config: dict[str, Any] = field(default_factory=dict)
    access_token: str | None = None
    handle: str = ""
    _seen: list[Seen] = field(default_factory=list)
    _syncs: int = 0
    _joins: int = 0
    connected: bool = False

    async def connect(self) -> None:
        await self.js.connect(
            self.url, self.token, client=self.name, vsn=self.vsn, access_token=self.access_token
        )
        self.connected = True

    async def subscribe(self, expect: str = "SUBSCRIBED") -> None:
        if not self.connected:
            await self.connect()
        self._joins += 1
        self.handle = f"{self.name}#{self._joins}"
        self._seen, self._syncs = [], 0
        config = {"presence": {"key": self.key}, **self.config}
        await self.js.channel(self.topic, client=self.name, channel=self.handle, config=config, presence=True)
        result = await self.js.subscribe(self.handle)
        assert result["status"] == expect, (self.name, result)

    async def track(self, payload: dict[str, Any]) -> None:
        assert await self.track_reply(payload) == "ok", self.name

    async def track_reply(self, payload: dict[str, Any]) -> str:
        return await self.js.track(self.handle, payload)

    async def untrack(self) -> None:
        assert await self.js.untrack(self.handle) == "ok", self.name

    async def leave(self) -> None:
        assert await self.js.unsubscribe(self.handle) == "ok", self.name

    async def close(self) -> None:
        self.connected = False
        await self.js.disconnect(client=self.name)

    async def state(self) -> State:
        return normalize(await self.js.call({"cmd": "presenceState", "channel": self.handle}))

    def _drain(self) -> None:
        handle = self.handle
        for event in self.js.events(lambda e: e.get("event") == "presence" and e.get("channel") == handle):
            kind = event["kind"]
            if kind == "sync":
                self._syncs += 1
                continue
            msg = event["msg"]
            metas = msg["newPresences"] if kind == "join" else msg["leftPresences"]
            self._seen.append(Seen(kind, str(msg["key"]), _presences(metas, "presence_ref")))

    def seen(self) -> list[Seen]:
        self._drain()
        return list(self._seen)

    def syncs(self) -> int:
        self._drain()
        return self._syncs


@dataclass
class PyMember:
    """A realtime-py ``AsyncRealtimeClient`` (one socket) with one presence channel, in this process."""

    name: str
    url: str
    token: str
    topic: str
    key: str
    config: dict[str, Any] = field(default_factory=dict)
    client: Any = None
    channel: Any = None
    _seen: list[Seen] = field(default_factory=list)
    _syncs: int = 0

    async def subscribe(self, expect: str = "SUBSCRIBED") -> None:
        from realtime import AsyncRealtimeClient

        if self.client is None:
            self.client = AsyncRealtimeClient(f"{ws_url(self.url)}/realtime/v1", self.token, timeout=5)
        config = {
            "broadcast": {"self": False, "ack": False},
            "presence": {"key": self.key, "enabled": True},
            "private": False,
            **self.config,
        }
        self._seen, self._syncs = [], 0
        ch = self.client.channel(self.topic, {"config": config})
        ch.on_presence_sync(self._on_sync)
        ch.on_presence_join(lambda key, _current, new: self._on("join", key, new))
        ch.on_presence_leave(lambda key, _current, left: self._on("leave", key, left))
        statuses: list[str] = []
        await ch.subscribe(lambda status, _error: statuses.append(str(getattr(status, "value", status))))
        assert statuses[:1] == [expect], (self.name, statuses)
        self.channel = ch

    def _on_sync(self) -> None:
        self._syncs += 1

    def _on(self, kind: str, key: str, presences: list[dict[str, Any]]) -> None:
        self._seen.append(Seen(kind, str(key), _presences([dict(p) for p in presences], "presence_ref")))

    async def track(self, payload: dict[str, Any]) -> None:
        await self.channel.track(payload)  # realtime-py awaits no reply

    async def untrack(self) -> None:
        await self.channel.untrack()

    async def leave(self) -> None:
        channel = self.channel
        await channel.unsubscribe()
        # realtime-py routes frames to one channel per topic and checks no join_ref: a channel of
        # the same topic made before this one's leave is answered would take the old channel's
        # phx_close as its own (and report CLOSED). So a leave ends once the channel is closed.
        deadline = time.monotonic() + 10
        while not channel.is_closed and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert channel.is_closed, (self.name, "the leave was not answered")

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            await py_close(client)

    async def state(self) -> State:
        return normalize(self.channel.presence_state())

    def seen(self) -> list[Seen]:
        return list(self._seen)

    def syncs(self) -> int:
        return self._syncs


async def poll(
    check: Callable[[], Awaitable[str | None]], timeout: float, what: str, every: float = 0.05
) -> None:
    """Until ``check()`` returns None (it returns what is still wrong), within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        wrong = await check()
        if wrong is None:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s: {wrong}")
        await asyncio.sleep(every)


async def converge(
    members: Sequence[Observer],
    conn: psycopg.Connection[Any],
    topic: str,
    expected: dict[str, list[dict[str, Any]]] | None,
    *,
    private: bool = False,
    timeout: float = 15.0,
) -> State:
    """Wait until ``presenceState()`` of every member equals the table, and the table holds the
    ``expected`` payloads by key (None: whatever it holds); returns the table's state."""
    want = (
        None
        if expected is None
        else {
            key: sorted(orjson.dumps(p, option=orjson.OPT_SORT_KEYS) for p in values)
            for key, values in expected.items()
        }
    )
    table: State = {}

    async def check() -> str | None:
        nonlocal table
        table = await asyncio.to_thread(table_state, conn, topic, private)
        if want is not None and payloads(table) != want:
            return f"table {table}, expected payloads {expected}"
        states = {m.name: await m.state() for m in members}
        differ = {name: state for name, state in states.items() if state != table}
        return f"table {table}, clients that differ {differ}" if differ else None

    await poll(check, timeout, f"presence of {topic!r}")
    return table


async def wait_seen(
    members: Sequence[Member], kind: str, key: str, ref: str, *, timeout: float = 15.0
) -> None:
    """Until every member's ``kind`` callback has fired for the presence ``ref`` under ``key``."""

    async def check() -> str | None:
        missing = [m.name for m in members if not any(s.has(kind, key, ref) for s in m.seen())]
        return f"no {kind} of {key}/{ref} on {missing}" if missing else None

    await poll(check, timeout, f"{kind} callbacks")


def assert_once(members: Sequence[Member]) -> None:
    """No member's channel saw one presence join, or leave, twice."""
    for m in members:
        events = [(s.kind, s.key, ref) for s in m.seen() for ref, _ in s.presences]
        twice = sorted({e for e in events if events.count(e) > 1})
        assert not twice, f"{m.name} saw these more than once: {twice}"


async def wait_synced(members: Sequence[Member], since: dict[str, int], *, timeout: float = 15.0) -> None:
    """Until every member's sync callback has fired again since the counts ``since``."""

    async def check() -> str | None:
        missing = [m.name for m in members if m.syncs() <= since.get(m.name, 0)]
        return f"no new sync on {missing}" if missing else None

    await poll(check, timeout, "sync callbacks")
