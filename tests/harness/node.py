"""The line-based JSON protocol to a Node child process, shared by every Node driver.

A driver script reads one command a line, ``{"id": n, "cmd": name, ...}``, and answers each with
``{"id": n, "ok": true, "result": r}`` or ``{"id": n, "ok": false, "error": "message"}``;
commands may run concurrently. Anything else it prints is an event ``{"event": kind, ...}``:
``ready`` once at start-up, then whatever the script reports (given to :meth:`NodeDriver.on_event`).
``exit`` makes it answer and leave.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
from collections import deque
from pathlib import Path
from typing import Any

JS_DIR = Path(__file__).resolve().parent.parent / "clients" / "js"

Event = dict[str, Any]


class NodeDriverError(Exception):
    """A command answered ``ok: false``, or the driver process failed."""


class NodeDriver:
    """A ``node <script>`` process in ``tests/clients/js``. Subclasses add the script's commands."""

    def __init__(
        self,
        script: Path,
        *,
        node: str = "node",
        call_timeout: float = 15.0,
        env: dict[str, str] | None = None,
        stderr_lines: int = 400,
        line_limit: int = 64 * 1024 * 1024,
    ) -> None:
        self.script = script
        self.node = node
        self.call_timeout = call_timeout
        self.env = env
        self.line_limit = line_limit
        self.proc: asyncio.subprocess.Process | None = None
        self.ready_event: Event | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Event]] = {}
        self._stderr: deque[str] = deque(maxlen=stderr_lines)
        self._tasks: list[asyncio.Task[None]] = []
        self._ready: asyncio.Future[Event] | None = None
        self._dead: str | None = None

    # -- what subclasses refine -------------------------------------------------------------------

    def error(self, message: str, cmd: dict[str, Any] | None = None) -> Exception:
        """The exception for a failed command (``cmd``) or a failed driver (``cmd`` None)."""
        text = message if cmd is None else f"{cmd.get('cmd')}: {message}"
        return NodeDriverError(f"{text}\n--- node stderr (tail) ---\n{self.stderr}")

    def on_event(self, event: Event) -> None:
        """An event other than ``ready``; by default dropped."""

    def on_failure(self, error: Exception) -> None:
        """The driver is gone: fail whatever the subclass is waiting for."""

    # -- lifecycle --------------------------------------------------------------------------------

    @property
    def stderr(self) -> str:
        """The last lines the driver wrote to stderr (library warnings and logs)."""
        return "\n".join(self._stderr)

    async def start(self, timeout: float = 15.0) -> Event:
        """Start the process; returns its ``ready`` event."""
        env = {**os.environ, **(self.env or {})}
        env.setdefault("NODE_NO_WARNINGS", "1")
        self.proc = await asyncio.create_subprocess_exec(
            self.node,
            str(self.script),
            cwd=str(JS_DIR),
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=self.line_limit,
        )
        self._ready = asyncio.get_running_loop().create_future()
        self._tasks = [
            asyncio.create_task(self._read_stdout(), name=f"{self.script.stem}-stdout"),
            asyncio.create_task(self._read_stderr(), name=f"{self.script.stem}-stderr"),
        ]
        try:
            self.ready_event = await asyncio.wait_for(asyncio.shield(self._ready), timeout)
        except TimeoutError:
            await self.close()
            raise self.error(f"driver not ready within {timeout}s") from None
        return self.ready_event

    async def close(self, timeout: float = 5.0) -> None:
        """Ask the driver to exit, then make sure the process is gone."""
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None and self._dead is None:
            with contextlib.suppress(Exception):
                await self.request({"cmd": "exit"}, timeout=timeout)
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

    # -- commands ---------------------------------------------------------------------------------

    async def request(self, cmd: dict[str, Any], timeout: float | None = None) -> Any:
        """Send one command; return its ``result`` or raise :meth:`error` (``ok: false``)."""
        if self.proc is None or self.proc.stdin is None or self._dead is not None:
            raise self.error(self._dead or "driver not running", cmd)
        msg_id = next(self._ids)
        fut: asyncio.Future[Event] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = fut
        self.proc.stdin.write(json.dumps({**cmd, "id": msg_id}).encode() + b"\n")
        try:
            await self.proc.stdin.drain()
        except (ConnectionError, BrokenPipeError) as e:
            self._pending.pop(msg_id, None)
            raise self.error(f"cannot write to the driver: {e}", cmd) from e
        limit = self.call_timeout if timeout is None else timeout
        try:
            reply = await asyncio.wait_for(fut, limit)
        except TimeoutError:
            self._pending.pop(msg_id, None)
            raise TimeoutError(
                f"no reply to {cmd.get('cmd')!r} within {limit}s\n--- node stderr (tail) ---\n{self.stderr}"
            ) from None
        if not reply.get("ok"):
            raise self.error(str(reply.get("error")), cmd)
        return reply.get("result")

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
                if msg["event"] == "ready" and self._ready is not None and not self._ready.done():
                    self._ready.set_result(msg)
                else:
                    self.on_event(msg)
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

    def _fail_all(self, reason: str) -> None:
        err = self.error(reason)
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._pending.clear()
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(err)
        self.on_failure(err)
