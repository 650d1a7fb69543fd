"""Drive the official Supabase clients against a server under test.

JavaScript (realtime-js, supabase-js) runs in a Node process, ``tests/clients/js/driver.js``,
controlled by JSON lines: :class:`JsDriver` starts it and exposes its commands as coroutines.
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
import itertools
import json
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

JS_DIR = Path(__file__).resolve().parent / "js"
DRIVER_JS = JS_DIR / "driver.js"

Event = dict[str, Any]
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


class JsError(Exception):
    """A command answered ``ok: false``, or the driver process failed."""

    def __init__(self, message: str, *, cmd: dict[str, Any] | None = None, stderr: str = "") -> None:
        self.error = message
        self.cmd = cmd
        self.stderr = stderr
        text = message if cmd is None else f"{cmd.get('cmd')}: {message}"
        if stderr:
            text += f"\n--- node stderr (tail) ---\n{stderr}"
        super().__init__(text)


class JsDriver:
    """A ``node driver.js`` process. Use as ``async with JsDriver() as d: ...``."""

    def __init__(
        self,
        *,
        node: str = "node",
        call_timeout: float = 15.0,
        env: dict[str, str] | None = None,
        stderr_lines: int = 400,
    ) -> None:
        self.node = node
        self.call_timeout = call_timeout
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._events: list[Event] = []
        self._waiters: list[tuple[EventPred | None, asyncio.Future[Event]]] = []
        self._stderr: deque[str] = deque(maxlen=stderr_lines)
        self._tasks: list[asyncio.Task[None]] = []
        self._ready: asyncio.Future[Event] | None = None
        self._dead: str | None = None
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

    async def start(self, timeout: float = 15.0) -> None:
        env = {**os.environ, **(self.env or {})}
        env.setdefault("NODE_NO_WARNINGS", "1")
        self.proc = await asyncio.create_subprocess_exec(
            self.node,
            str(DRIVER_JS),
            cwd=str(JS_DIR),
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024,
        )
        loop = asyncio.get_running_loop()
        self._ready = loop.create_future()
        self._tasks = [
            asyncio.create_task(self._read_stdout(), name="js-driver-stdout"),
            asyncio.create_task(self._read_stderr(), name="js-driver-stderr"),
        ]
        try:
            await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except TimeoutError:
            await self.close()
            raise JsError(f"driver not ready within {timeout}s", stderr=self.stderr) from None

    async def close(self, timeout: float = 5.0) -> None:
        """Ask the driver to exit (disconnecting its clients), then make sure the process is gone."""
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None and self._dead is None:
            with contextlib.suppress(Exception):
                await self.call({"cmd": "exit"}, timeout=timeout)
        if proc.stdin is not None:
            with contextlib.suppress(Exception):
                proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 2.0)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        for task in self._tasks:
            if not task.done():
                task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if proc.stdin is not None:
            with contextlib.suppress(Exception):
                await proc.stdin.wait_closed()
        self._fail_all("driver closed")
        self.proc = None

    @property
    def stderr(self) -> str:
        """The last lines the driver wrote to stderr (library warnings and logs)."""
        return "\n".join(self._stderr)

    # -- I/O --------------------------------------------------------------------------------------

    async def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        reader = self.proc.stdout
        while True:
            try:
                raw = await reader.readline()
            except (ValueError, asyncio.LimitOverrunError) as e:
                self._stderr.append(f"[stdout] unreadable line: {e}")
                continue
            if not raw:
                break
            line = raw.decode("utf-8", "replace").rstrip("\n")
            if not line.strip():
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                self._stderr.append(f"[stdout, not JSON] {line}")
                continue
            if not isinstance(msg, dict):
                self._stderr.append(f"[stdout, not an object] {line}")
            elif "event" in msg:
                self._dispatch_event(msg)
            elif "id" in msg:
                fut = self._pending.pop(msg["id"], None) if isinstance(msg["id"], int) else None
                if fut is None:
                    self._stderr.append(f"[stdout, unmatched reply] {line}")
                elif not fut.done():
                    fut.set_result(msg)
            else:
                self._stderr.append(f"[stdout, unknown] {line}")
        rc = await self.proc.wait()
        self._dead = f"driver process exited with code {rc}"
        self._fail_all(self._dead)

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        reader = self.proc.stderr
        while True:
            try:
                raw = await reader.readline()
            except (ValueError, asyncio.LimitOverrunError):
                continue
            if not raw:
                break
            self._stderr.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def _dispatch_event(self, event: Event) -> None:
        kind = event.get("event")
        if kind == "ready" and self._ready is not None and not self._ready.done():
            self._ready.set_result(event)
            return
        if kind == "error":
            self.node_errors.append(event)
        for i, (pred, fut) in enumerate(self._waiters):
            if fut.done():
                continue
            if pred is None or pred(event):
                del self._waiters[i]
                fut.set_result(event)
                return
        self._events.append(event)

    def _fail_all(self, reason: str) -> None:
        err = JsError(reason, stderr=self.stderr)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()
        for _, fut in self._waiters:
            if not fut.done():
                fut.set_exception(err)
        self._waiters.clear()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(err)

    # -- commands and events ----------------------------------------------------------------------

    async def call(self, cmd: dict[str, Any], timeout: float | None = None) -> Any:
        """Send one command; return its ``result`` or raise :class:`JsError` (``ok: false``)."""
        if self.proc is None or self.proc.stdin is None or self._dead is not None:
            raise JsError(self._dead or "driver not running", cmd=cmd, stderr=self.stderr)
        msg_id = next(self._ids)
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        self.proc.stdin.write(json.dumps({**cmd, "id": msg_id}).encode() + b"\n")
        try:
            await self.proc.stdin.drain()
        except (ConnectionError, BrokenPipeError) as e:
            self._pending.pop(msg_id, None)
            raise JsError(f"cannot write to the driver: {e}", cmd=cmd, stderr=self.stderr) from e
        limit = self.call_timeout if timeout is None else timeout
        try:
            reply = await asyncio.wait_for(fut, limit)
        except TimeoutError:
            self._pending.pop(msg_id, None)
            raise TimeoutError(
                f"no reply to {cmd.get('cmd')!r} within {limit}s\n--- node stderr (tail) ---\n{self.stderr}"
            ) from None
        if not reply.get("ok"):
            raise JsError(str(reply.get("error")), cmd=cmd, stderr=self.stderr)
        return reply.get("result")

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
    ) -> str:
        """``client.channel(name, {config})`` with broadcast bindings for ``events``; returns the handle."""
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
