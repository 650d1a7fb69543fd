"""Headless Chromium for the end-to-end tests, driven through ``tests/clients/js/inspector_e2e.js``.

The browser is the system's (Debian's ``chromium`` package); playwright-core only drives it, so
nothing is downloaded. :class:`Browser` starts the Node driver and exposes its commands:
``await browser.call("click", selector="#join")``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import shutil
from collections import deque
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
JS_DIR = ROOT / "tests" / "clients" / "js"
DRIVER = JS_DIR / "inspector_e2e.js"
ARTIFACTS = ROOT / "test-artifacts"


def chromium_path() -> str:
    """The system Chromium, or an AssertionError that says how to install it."""
    found = os.environ.get("CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    assert found, "headless Chromium is needed: apt-get install -y chromium"
    return found


class BrowserError(Exception):
    """A driver command failed, or the driver died."""


class Browser:
    """A Node process running the Playwright driver, with one page."""

    def __init__(self, call_timeout: float = 30.0) -> None:
        self.call_timeout = call_timeout
        self.proc: asyncio.subprocess.Process | None = None
        self.events: list[dict[str, Any]] = []
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._stderr: deque[str] = deque(maxlen=200)
        self._tasks: list[asyncio.Task[None]] = []
        self._ready: asyncio.Future[None] | None = None

    @property
    def stderr(self) -> str:
        return "\n".join(self._stderr)

    @property
    def page_errors(self) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("event") in ("pageerror", "error")]

    async def start(self) -> dict[str, Any]:
        assert (JS_DIR / "node_modules" / "playwright-core").is_dir(), (
            "playwright-core is missing: run 'make node-clients'"
        )
        executable = chromium_path()
        env = {**os.environ, "NODE_NO_WARNINGS": "1"}
        self.proc = await asyncio.create_subprocess_exec(
            "node",
            str(DRIVER),
            cwd=str(JS_DIR),
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            limit=16 * 1024 * 1024,
        )
        self._ready = asyncio.get_running_loop().create_future()
        self._tasks = [asyncio.create_task(self._read_stdout()), asyncio.create_task(self._read_stderr())]
        await asyncio.wait_for(asyncio.shield(self._ready), 20)
        result: dict[str, Any] = await self.call("launch", executablePath=executable)
        return result

    async def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while raw := await self.proc.stdout.readline():
            try:
                msg = json.loads(raw)
            except ValueError:
                self._stderr.append(f"[stdout] {raw!r}")
                continue
            if "event" in msg:
                if msg["event"] == "ready" and self._ready is not None and not self._ready.done():
                    self._ready.set_result(None)
                else:
                    self.events.append(msg)
                continue
            future = self._pending.pop(msg.get("id"), None)
            if future is None or future.done():
                continue
            if msg.get("ok"):
                future.set_result(msg.get("result"))
            else:
                future.set_exception(BrowserError(str(msg.get("error"))))
        failure = BrowserError(f"the browser driver exited\n--- stderr ---\n{self.stderr}")
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(failure)
        for future in self._pending.values():
            if not future.done():
                future.set_exception(failure)
        self._pending.clear()

    async def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        while raw := await self.proc.stderr.readline():
            self._stderr.append(raw.decode(errors="replace").rstrip())

    async def call(self, cmd: str, timeout: float | None = None, **args: Any) -> Any:
        assert self.proc is not None and self.proc.stdin is not None
        ident = next(self._ids)
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[ident] = future
        self.proc.stdin.write(json.dumps({"id": ident, "cmd": cmd, **args}).encode() + b"\n")
        await self.proc.stdin.drain()
        try:
            return await asyncio.wait_for(future, timeout or self.call_timeout)
        except BrowserError as exc:
            raise BrowserError(f"{cmd} {args}: {exc}\n--- page events ---\n{self.events[-20:]}") from None

    async def screenshot(self, name: str) -> Path:
        ARTIFACTS.mkdir(exist_ok=True)
        path = ARTIFACTS / name
        await self.call("screenshot", path=str(path))
        return path

    async def close(self) -> None:
        proc = self.proc
        if proc is None:
            return
        if proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.call("exit", timeout=10)
        with contextlib.suppress(Exception):
            assert proc.stdin is not None
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.proc = None
