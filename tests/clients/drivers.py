"""Drive the official Supabase clients against a server under test.

JavaScript (realtime-js, supabase-js) runs in a Node process, ``tests/clients/js/driver.js``,
controlled by JSON lines (the protocol of :class:`tests.harness.node.NodeDriver`): :class:`JsDriver`
starts it and exposes its commands as coroutines.
Python (realtime-py, supabase-py) runs in-process: :func:`py_subscribe` and :func:`sb_subscribe`.

Driver protocol (one JSON object per line):

* command ``{"id": n, "cmd": name, ...}``; reply ``{"id": n, "ok": true, "result": r}`` or
  ``{"id": n, "ok": false, "error": "message"}``. Commands run concurrently.
* events ``{"event": kind, ...}``:

  - ``ready`` ``{pid, node}`` once at start-up (consumed by :meth:`JsDriver.start`);
  - ``broadcast`` ``{channel, filter, msg}``: ``msg`` is what the client hands the callback,
    e.g. ``{"type": "broadcast", "event": "ping", "payload": {...}}``; ``filter`` is the event
    the binding was registered with (one frame fires every matching binding);
  - ``system`` ``{channel, msg}``; ``presence`` ``{channel, kind: sync|join|leave, msg|state}``;
  - ``status`` ``{channel, status, error}``: every subscribe-callback call after the first one
    (the first one is the reply to ``subscribe``);
  - ``socket`` ``{client, state: open|close|error, code?, reason?, wasClean?, error?}``;
  - ``heartbeat`` ``{client, status, latency}`` (with ``heartbeatEvents: true`` at connect);
  - ``frame`` ``{client, dir: connect|in|out, binary, text|b64|url}`` (with ``tap: true``);
  - ``error`` ``{kind, message}``: an unhandled rejection or exception inside Node.

* binary values travel as ``{"__bytes_b64": "..."}`` (see :func:`b64`, :func:`unb64`).

Commands (``client`` defaults to ``"default"``; optional arguments in brackets):

=================  ==================================================================  =======================
command            arguments                                                           result
=================  ==================================================================  =======================
``connect``        client, kind (realtime-js|supabase-js), url (http://host:port),     ``{client, endpoint,
                   apikey, [vsn], [accessToken], [heartbeatIntervalMs], [timeout],     vsn, state}``
                   [logLevel], [params], [options], [tap], [heartbeatEvents],
                   [lazy] (do not open the socket now), [openTimeout] (ms, 5000),
                   [endpoint] (realtime-js base URL as is, instead of url + /realtime/v1)
``channel``        client, name, [channel] (handle, default name), [config],           ``{channel, topic}``
                   [events] (default ["*"]), [presence]
``subscribe``      channel, [timeout]                                                  ``{status, error}``
``send``           channel, event, payload, [binary], [type], [timeout], [extra]       ok|timed out|error
``httpSend``       channel, event, payload, [binary], [timeout]                        ``{success: true}``
``track``          channel, payload, [timeout]                                         ok|timed out|error
``untrack``        channel, [timeout]                                                  ok|timed out|error
``presenceState``  channel                                                             presence state
``setAuth``        client, token (null: back to the token callback)                    the client's token
``unsubscribe``    channel, [timeout]                                                  ok|timed out|error
``removeChannel``  channel                                                             ok|timed out|error
``info``           client                                                              endpoint, state, ...
``disconnect``     client, [code], [reason]                                            ok|timeout
``ping``           (none)                                                              ``"pong"``
``exit``           (none)                                                              ``"bye"``, then exits
=================  ==================================================================  =======================
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import sys
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from tests.harness.node import JS_DIR, Event, NodeDriver, NodeDriverError

DRIVER_JS = JS_DIR / "driver.js"

EventPred = Callable[[Event], bool]

__all__ = [
    "DRIVER_JS",
    "JS_DIR",
    "JsDriver",
    "JsError",
    "PyEvents",
    "PySubscribeError",
    "b64",
    "py_close",
    "py_subscribe",
    "sb_subscribe",
    "unb64",
    "ws_url",
]


def b64(data: bytes) -> str:
    """Base64 text of ``data``, for ``send(..., binary=True)``."""
    return base64.b64encode(data).decode("ascii")


def unb64(value: Any) -> bytes:
    """The bytes of a ``{"__bytes_b64": ...}`` value reported by the driver."""
    if not (isinstance(value, dict) and "__bytes_b64" in value):
        raise TypeError(f"not a binary value: {value!r}")
    return base64.b64decode(value["__bytes_b64"])


def ws_url(url: str) -> str:
    """``http(s)://host:port`` → ``ws(s)://host:port`` (no trailing slash)."""
    url = url.rstrip("/")
    if url.startswith("http"):
        url = "ws" + url[len("http") :]
    return url


# ---------------------------------------------------------------------------------------------
# JavaScript


class JsError(NodeDriverError):
    """A command answered ``ok: false``, or the driver process failed."""

    def __init__(self, message: str, *, cmd: dict[str, Any] | None = None, stderr: str = "") -> None:
        self.error = message
        self.cmd = cmd
        self.stderr = stderr
        text = message if cmd is None else f"{cmd.get('cmd')}: {message}"
        if stderr:
            text += f"\n--- node stderr (tail) ---\n{stderr}"
        super().__init__(text)


class JsDriver(NodeDriver):
    """A ``node driver.js`` process. Use as ``async with JsDriver() as d: ...``."""

    def __init__(
        self,
        *,
        node: str = "node",
        call_timeout: float = 15.0,
        env: dict[str, str] | None = None,
        stderr_lines: int = 400,
    ) -> None:
        super().__init__(DRIVER_JS, node=node, call_timeout=call_timeout, env=env, stderr_lines=stderr_lines)
        self._events: list[Event] = []
        self._waiters: list[tuple[EventPred | None, asyncio.Future[Event]]] = []
        self.node_errors: list[Event] = []

    # -- lifecycle ------------------------------------------------------------------------------

    async def __aenter__(self) -> JsDriver:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()
        if exc is not None and self._stderr:
            # pytest shows captured stderr of a failing test: make the driver's log part of it.
            print(f"--- node driver stderr (tail) ---\n{self.stderr}", file=sys.stderr)

    # -- the protocol's hooks ---------------------------------------------------------------------

    def error(self, message: str, cmd: dict[str, Any] | None = None) -> Exception:
        return JsError(message, cmd=cmd, stderr=self.stderr)

    def on_event(self, event: Event) -> None:
        if event.get("event") == "error":
            self.node_errors.append(event)
        for i, (pred, fut) in enumerate(self._waiters):
            if fut.done():
                continue
            if pred is None or pred(event):
                del self._waiters[i]
                fut.set_result(event)
                return
        self._events.append(event)

    def on_failure(self, error: Exception) -> None:
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(error)
        self._waiters.clear()

    # -- commands and events ----------------------------------------------------------------------

    async def call(self, cmd: dict[str, Any], timeout: float | None = None) -> Any:
        """Send one command; return its ``result`` or raise :class:`JsError` (``ok: false``)."""
        return await self.request(cmd, timeout)

    async def next_event(self, pred: EventPred | None = None, timeout: float = 5.0) -> Event:
        """The oldest unconsumed event matching ``pred`` (any event if None), waiting up to ``timeout``.

        Events that do not match stay queued for later calls.
        """
        for i, event in enumerate(self._events):
            if pred is None or pred(event):
                del self._events[i]
                return event
        if self._dead is not None:
            raise JsError(self._dead, stderr=self.stderr)
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        entry = (pred, fut)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            pending = [e for e in self._events if e.get("event") != "frame"][-10:]
            raise TimeoutError(
                f"no matching event within {timeout}s; unconsumed events (last 10): {pending}"
                f"\n--- node stderr (tail) ---\n{self.stderr}"
            ) from None
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(entry)

    def events(self, pred: EventPred | None = None, *, consume: bool = True) -> list[Event]:
        """All queued events matching ``pred``, without waiting (removed from the queue by default)."""
        matched = [e for e in self._events if pred is None or pred(e)]
        if consume:
            self._events = [e for e in self._events if not (pred is None or pred(e))]
        return matched

    async def no_event(self, pred: EventPred | None = None, within: float = 0.5) -> None:
        """Assert that no event matching ``pred`` arrives within ``within`` seconds."""
        try:
            event = await self.next_event(pred, timeout=within)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected event: {event}")

    # -- wrappers ---------------------------------------------------------------------------------

    async def connect(
        self,
        url: str,
        apikey: str,
        *,
        client: str = "default",
        kind: str = "realtime-js",
        vsn: str | None = "2.0.0",
        access_token: str | None = None,
        heartbeat_interval_ms: int | None = None,
        timeout_ms: int | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Create a realtime-js or supabase-js client and (unless ``lazy=True``) open its socket.

        ``timeout_ms`` is the client's push/join timeout (its ``timeout`` option). ``extra`` goes into
        the command as is (``tap``, ``heartbeatEvents``, ``lazy``, ``openTimeout``, ``logLevel``,
        ``params``, ``options``).
        """
        cmd: dict[str, Any] = {"cmd": "connect", "client": client, "kind": kind, "url": url, "apikey": apikey}
        if vsn is not None:
            cmd["vsn"] = vsn
        if access_token is not None:
            cmd["accessToken"] = access_token
        if heartbeat_interval_ms is not None:
            cmd["heartbeatIntervalMs"] = heartbeat_interval_ms
        if timeout_ms is not None:
            cmd["timeout"] = timeout_ms
        cmd.update(extra)
        result: dict[str, Any] = await self.call(cmd)
        return result

    async def channel(
        self,
        name: str,
        *,
        client: str = "default",
        channel: str | None = None,
        config: dict[str, Any] | None = None,
        events: Iterable[str] = ("*",),
        presence: bool = False,
        postgres_changes: Iterable[dict[str, Any]] = (),
    ) -> str:
        """``client.channel(name, {config})`` with broadcast bindings for ``events`` (and
        ``on('postgres_changes', filter)`` for each of ``postgres_changes``); returns the handle."""
        cmd: dict[str, Any] = {
            "cmd": "channel",
            "client": client,
            "name": name,
            "channel": channel or name,
            "config": config or {},
            "events": list(events),
        }
        if presence:
            cmd["presence"] = True
        if postgres_changes:
            cmd["postgresChanges"] = list(postgres_changes)
        result = await self.call(cmd)
        return str(result["channel"])

    async def subscribe(self, channel: str, *, timeout_ms: int | None = None) -> dict[str, Any]:
        """``{"status": ..., "error": ...}`` of the first subscribe-callback call."""
        cmd: dict[str, Any] = {"cmd": "subscribe", "channel": channel}
        if timeout_ms is not None:
            cmd["timeout"] = timeout_ms
        call_timeout = max(self.call_timeout, (timeout_ms or 10_000) / 1000 + 5)
        result: dict[str, Any] = await self.call(cmd, timeout=call_timeout)
        return result

    async def send(
        self,
        channel: str,
        event: str,
        payload: Any,
        *,
        binary: bool = False,
        timeout_ms: int | None = None,
        type: str = "broadcast",
    ) -> str:
        """``channel.send({type, event, payload})``: ``ok`` / ``timed out`` / ``error``.

        With ``binary=True``, ``payload`` is bytes (or base64 text) and is sent as an ArrayBuffer.
        """
        if isinstance(payload, bytes | bytearray | memoryview):
            payload, binary = b64(bytes(payload)), True
        cmd: dict[str, Any] = {"cmd": "send", "channel": channel, "event": event, "payload": payload}
        if binary:
            cmd["binary"] = True
        if type != "broadcast":
            cmd["type"] = type
        if timeout_ms is not None:
            cmd["timeout"] = timeout_ms
        return str(await self.call(cmd))

    async def http_send(
        self, channel: str, event: str, payload: Any, *, binary: bool = False, timeout_ms: int | None = None
    ) -> Any:
        """``channel.httpSend(event, payload)``: ``{"success": True}``; a rejection raises JsError."""
        if isinstance(payload, bytes | bytearray | memoryview):
            payload, binary = b64(bytes(payload)), True
        cmd: dict[str, Any] = {"cmd": "httpSend", "channel": channel, "event": event, "payload": payload}
        if binary:
            cmd["binary"] = True
        if timeout_ms is not None:
            cmd["timeout"] = timeout_ms
        return await self.call(cmd)

    async def set_auth(self, token: str | None, *, client: str = "default") -> Any:
        return await self.call({"cmd": "setAuth", "client": client, "token": token})

    async def unsubscribe(self, channel: str, *, timeout_ms: int | None = None) -> str:
        cmd: dict[str, Any] = {"cmd": "unsubscribe", "channel": channel}
        if timeout_ms is not None:
            cmd["timeout"] = timeout_ms
        return str(await self.call(cmd))

    async def remove_channel(self, channel: str) -> str:
        return str(await self.call({"cmd": "removeChannel", "channel": channel}))

    async def track(self, channel: str, payload: dict[str, Any]) -> str:
        return str(await self.call({"cmd": "track", "channel": channel, "payload": payload}))

    async def untrack(self, channel: str) -> str:
        return str(await self.call({"cmd": "untrack", "channel": channel}))

    async def info(self, *, client: str = "default") -> dict[str, Any]:
        result: dict[str, Any] = await self.call({"cmd": "info", "client": client})
        return result

    async def disconnect(self, *, client: str = "default") -> Any:
        return await self.call({"cmd": "disconnect", "client": client})

    async def next_broadcast(
        self, channel: str, event: str | None = None, *, filter: str | None = None, timeout: float = 5.0
    ) -> dict[str, Any]:
        """The ``msg`` of the next broadcast delivered on ``channel`` (optionally only user event ``event``,
        or only through the binding registered as ``filter``)."""

        def pred(e: Event) -> bool:
            return (
                e.get("event") == "broadcast"
                and e.get("channel") == channel
                and (event is None or e["msg"].get("event") == event)
                and (filter is None or e.get("filter") == filter)
            )

        found = await self.next_event(pred, timeout)
        msg: dict[str, Any] = found["msg"]
        return msg

    async def next_status(self, channel: str, status: str | None = None, *, timeout: float = 5.0) -> Event:
        """The next ``status`` event of ``channel`` (optionally a given status)."""
        return await self.next_event(
            lambda e: (
                e.get("event") == "status"
                and e.get("channel") == channel
                and (status is None or e.get("status") == status)
            ),
            timeout,
        )

    async def next_socket(
        self, client: str = "default", state: str | None = None, *, timeout: float = 5.0
    ) -> Event:
        """The next ``socket`` event (open / close / error) of ``client``."""
        return await self.next_event(
            lambda e: (
                e.get("event") == "socket"
                and e.get("client") == client
                and (state is None or e.get("state") == state)
            ),
            timeout,
        )


# ---------------------------------------------------------------------------------------------
# Python


class PySubscribeError(Exception):
    def __init__(self, status: str, error: str | None) -> None:
        self.status = status
        self.error = error
        super().__init__(f"subscribe ended with {status}: {error}")


class PyEvents(asyncio.Queue[dict[str, Any]]):
    """Broadcasts as the Python clients hand them to ``on_broadcast`` callbacks
    (``{"event", "payload", "meta"?}``, no ``type``), plus the subscribe statuses and system messages."""

    def __init__(self) -> None:
        super().__init__()
        self.statuses: list[tuple[str, str | None]] = []
        self.status_changed = asyncio.Event()
        self.system: asyncio.Queue[Any] = asyncio.Queue()

    def _on_status(self, status: Any, error: Exception | None) -> None:
        self.statuses.append((str(getattr(status, "value", status)), None if error is None else str(error)))
        self.status_changed.set()

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        return await asyncio.wait_for(self.get(), timeout)

    async def wait_status(self, status: str, timeout: float = 5.0) -> None:
        """Wait until ``status`` is among the recorded statuses."""
        async with asyncio.timeout(timeout):
            while all(s != status for s, _ in self.statuses):
                self.status_changed.clear()
                await self.status_changed.wait()


def _channel_params(config: dict[str, Any] | None) -> dict[str, Any] | None:
    return None if config is None else {"config": config}


async def _subscribe_channel(
    client: Any, name: str, config: dict[str, Any] | None, events: Iterable[str], expect: str | None
) -> tuple[Any, PyEvents]:
    q = PyEvents()
    params = _channel_params(config)
    ch = client.channel(name, params) if params is not None else client.channel(name)
    for ev in events:
        ch.on_broadcast(ev, q.put_nowait)
    ch.on_system(q.system.put_nowait)
    await ch.subscribe(q._on_status)
    if expect is not None:
        status, error = q.statuses[0] if q.statuses else ("NONE", "subscribe returned without a status")
        if status != expect:
            raise PySubscribeError(status, error)
    return ch, q


async def py_subscribe(
    url: str,
    token: str,
    name: str,
    config: dict[str, Any] | None = None,
    events: Iterable[str] = ("*",),
    *,
    expect: str | None = "SUBSCRIBED",
    timeout: int = 5,
    path: str = "/realtime/v1",
    **client_kwargs: Any,
) -> tuple[Any, Any, PyEvents]:
    """A realtime-py ``AsyncRealtimeClient`` subscribed to ``name``: ``(client, channel, events)``.

    ``url`` is the server's ``http://host:port``. ``config`` is the channel ``config`` passed as is
    (None: the library defaults). If the first status is not ``expect`` the client is closed and
    :class:`PySubscribeError` raised (``expect=None`` disables the check; see ``events.statuses``).
    ``path`` is the client's base path (it appends ``/websocket``); ``client_kwargs`` go to
    ``AsyncRealtimeClient`` (``params``, ``hb_interval``, ``auto_reconnect``, ``max_retries``, ...).
    """
    from realtime import AsyncRealtimeClient

    client = AsyncRealtimeClient(f"{ws_url(url)}{path}", token, timeout=timeout, **client_kwargs)
    try:
        ch, q = await _subscribe_channel(client, name, config, events, expect)
    except BaseException:
        await py_close(client)
        raise
    return client, ch, q


async def sb_subscribe(
    url: str,
    key: str,
    name: str,
    config: dict[str, Any] | None = None,
    events: Iterable[str] = ("*",),
    *,
    expect: str | None = "SUBSCRIBED",
    timeout: int = 5,
    access_token: str | None = None,
    **realtime_options: Any,
) -> tuple[Any, Any, PyEvents]:
    """Like :func:`py_subscribe`, through supabase-py: ``(supabase_client, channel, events)``.

    With ``access_token``, ``realtime.set_auth(access_token)`` runs before the join.
    """
    from supabase import AsyncClientOptions, acreate_client

    realtime: dict[str, Any] = {"timeout": timeout, **realtime_options}
    options = AsyncClientOptions(realtime=realtime)  # type: ignore[arg-type]
    sb = await acreate_client(url.rstrip("/"), key, options=options)
    try:
        if access_token is not None:
            await sb.realtime.set_auth(access_token)
        ch, q = await _subscribe_channel(sb, name, config, events, expect)
    except BaseException:
        await py_close(sb)
        raise
    return sb, ch, q


async def py_close(client: Any) -> None:
    """Leave every channel and close the socket of a realtime-py or supabase-py client."""
    realtime = getattr(client, "realtime", client)
    try:
        async with asyncio.timeout(10):
            await realtime.remove_all_channels()
    except Exception:
        await realtime.close()
