"""Starting pg-realtime for a test or a benchmark: in this process, or as a subprocess.

Both listen on 127.0.0.1 and are reached through an :class:`Endpoint` (its URLs and tokens).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from pg_realtime.config import Settings
from pg_realtime.server import RealtimeServer

from .tokens import mint_token

TEST_JWT_SECRET = "test-secret-with-at-least-32-bytes-of-entropy!!"
WEBSOCKET_PATH = "/realtime/v1/websocket"


@dataclass(kw_only=True)
class Endpoint:
    """Where a server listens and the secret its tokens are signed with."""

    port: int
    secret: str = TEST_JWT_SECRET

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def token(self, role: str | None = "anon", expires_in: float | None = 3600, **claims: Any) -> str:
        """A token this server accepts (see :func:`tests.harness.mint_token`)."""
        return mint_token(self.secret, role, expires_in, **claims)

    def ws_url(self, path: str = WEBSOCKET_PATH, vsn: str = "2.0.0", token: str | None = None) -> str:
        """The WebSocket URL of ``path``, with an anon key unless ``token`` is given."""
        return f"ws://127.0.0.1:{self.port}{path}?apikey={token or self.token()}&vsn={vsn}"


# -- in this process ----------------------------------------------------------------------------


def server_settings(
    database_url: str | None,
    *,
    port: int = 0,
    demo: bool | None = None,
    secret: str = TEST_JWT_SECRET,
    **overrides: Any,
) -> Settings:
    """Settings of a server under test; ``demo`` (default: when there is a database) marks an
    embedded database, as under `make run`, which puts the inspector in demo mode."""
    return Settings(
        jwt_secret=secret,
        port=port,
        database_url=database_url,
        embedded_database=database_url is not None if demo is None else demo,
        **overrides,
    )


@dataclass(kw_only=True)
class LiveServer(Endpoint):
    """A `RealtimeServer` running in this process's event loop."""

    server: RealtimeServer
    runner: web.AppRunner
    db_dsn: str | None

    async def wait_live(self, timeout: float = 10) -> None:
        """Until the server's stream of database messages is live, and its cluster bus up."""
        deadline = time.monotonic() + timeout
        while self.server.stream is not None and not self.server.stream.live:
            if time.monotonic() > deadline:
                raise TimeoutError(f"stream not live: {self.server.stream.reason}")
            await asyncio.sleep(0.01)
        while self.server.bus is not None and self.server.bus.down_reason is not None:
            if time.monotonic() > deadline:
                raise TimeoutError(self.server.bus.down_reason)
            await asyncio.sleep(0.01)
        # The first realtime.maintain() holds locks on realtime.messages until it commits, which
        # needs this event loop: a test's blocking SQL (a CREATE POLICY) meanwhile would wait for it
        # while stopping the loop it waits on. Tests start once it has ended.
        database = self.server.database
        if database is not None:
            await asyncio.wait_for(database.maintained.wait(), max(0.1, deadline - time.monotonic()) + 20)

    async def stop(self) -> None:
        await self.runner.cleanup()


async def serve_in_process(settings: Settings, wait_live: bool = True) -> LiveServer:
    """Serve ``settings`` on 127.0.0.1 (``settings.port``, 0: a free one); live before it returns
    unless ``wait_live`` is False (for a server that must refuse its database)."""
    if settings.jwt_secret is None:
        raise ValueError("a server under test needs a jwt_secret: its tokens are minted with it")
    server = RealtimeServer(settings)
    runner = web.AppRunner(server.app, handle_signals=False, shutdown_timeout=2)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", settings.port, reuse_address=True)
    await site.start()
    server.listening_on("127.0.0.1", runner.addresses[0][1])
    live = LiveServer(
        server=server,
        runner=runner,
        port=runner.addresses[0][1],
        db_dsn=settings.database_url,
        secret=settings.jwt_secret,
    )
    if settings.database_url and wait_live:
        try:
            await live.wait_live()
        except BaseException:
            await live.stop()
            raise
    return live


# -- as a subprocess ----------------------------------------------------------------------------


def pg_realtime_command() -> list[str]:
    """The installed console script (as a person runs it), else the module."""
    script = Path(sys.executable).parent / "pg-realtime"
    return [str(script)] if script.exists() else [sys.executable, "-m", "pg_realtime.cli"]


class ServerExited(RuntimeError):
    """The server process exited, or did not become ready in time."""


def _is_ok(status: int) -> bool:
    return status == 200


@dataclass(kw_only=True)
class ServerProcess(Endpoint):
    """A server subprocess listening on 127.0.0.1:``port``, its stdout and stderr in files."""

    name: str
    proc: asyncio.subprocess.Process
    stdout_path: Path
    stderr_path: Path
    _ready: bool = field(default=False, repr=False)

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        port: int,
        workdir: Path,
        *,
        name: str = "pg-realtime",
        env: dict[str, str] | None = None,
        cwd: Path | None = None,
        secret: str = TEST_JWT_SECRET,
    ) -> ServerProcess:
        """Start ``argv`` (in ``cwd``, default ``workdir``) with ``env`` added to ours."""
        # Named so that no glob of what the server itself makes (pg-realtime-*) matches them.
        stem = workdir / f"log-{name}-{port}-{time.monotonic_ns()}"
        stdout_path, stderr_path = stem.with_suffix(".stdout.log"), stem.with_suffix(".stderr.log")
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=out, stderr=err, cwd=str(cwd or workdir), env={**os.environ, **(env or {})}
            )
        return cls(
            name=name, proc=proc, port=port, secret=secret, stdout_path=stdout_path, stderr_path=stderr_path
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> str:
        """What it wrote to stdout so far."""
        return self.stdout_path.read_text(errors="replace")

    @property
    def log(self) -> str:
        """What it wrote to stderr so far."""
        return self.stderr_path.read_text(errors="replace")

    def describe(self, tail: int = 4000) -> str:
        return f"--- {self.name} stdout ---\n{self.output[-tail:]}\n--- stderr ---\n{self.log[-tail:]}"

    async def wait_ready(
        self, path: str = "/healthz", ready: Callable[[int], bool] = _is_ok, timeout: float = 90
    ) -> None:
        """Poll ``path`` until ``ready(status)``; :class:`ServerExited` if it exits or time runs out."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as http:
            while time.monotonic() < deadline:
                if self.proc.returncode is not None:
                    raise ServerExited(f"{self.name} exited ({self.proc.returncode}):\n{self.describe()}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(f"{self.url}{path}") as response:
                        if ready(response.status):
                            return
                await asyncio.sleep(0.05)
        raise ServerExited(f"{self.name} on port {self.port} not ready within {timeout}s:\n{self.describe()}")

    async def interrupt(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        """Send ``sig`` (Ctrl-C by default) and return the exit status; kill it if it does not stop."""
        self.proc.send_signal(sig)
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            await self.kill()
            raise ServerExited(f"{self.name} did not stop within {timeout}s:\n{self.describe()}") from None

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()

    async def stop(self, timeout: float = 15) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                await self.kill()


@contextlib.asynccontextmanager
async def server_process(
    argv: Sequence[str],
    port: int,
    workdir: Path,
    *,
    ready_path: str = "/healthz",
    ready: Callable[[int], bool] = _is_ok,
    timeout: float = 90,
    name: str = "pg-realtime",
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    secret: str = TEST_JWT_SECRET,
) -> AsyncIterator[ServerProcess]:
    """A started server, ready (``ready(status of GET ready_path)``), stopped on the way out."""
    served = await ServerProcess.start(argv, port, workdir, name=name, env=env, cwd=cwd, secret=secret)
    try:
        await served.wait_ready(ready_path, ready, timeout)
        yield served
    finally:
        await served.stop()


__all__ = [
    "TEST_JWT_SECRET",
    "WEBSOCKET_PATH",
    "Endpoint",
    "LiveServer",
    "ServerExited",
    "ServerProcess",
    "pg_realtime_command",
    "serve_in_process",
    "server_process",
    "server_settings",
]
