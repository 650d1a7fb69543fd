"""Fixtures of the cluster suite: several `pg-realtime serve` processes on one database, HAProxy
in front of them (configured from deploy/haproxy.cfg, so that the shipped file is the one tested)."""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from tests.harness import TEST_JWT_SECRET, Endpoint, ServerExited, ServerProcess, pg_realtime_command

ROOT = Path(__file__).resolve().parents[2]
HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"
#: The sidecars' payload limit in these tests (KB); the largest payload tested is exactly this.
MAX_PAYLOAD_KB = 100


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def haproxy_config(listen_port: int, sidecar_ports: list[int]) -> str:
    """deploy/haproxy.cfg with its bind address and server lines pointed at this test's processes."""
    text = HAPROXY_CFG.read_text()
    text, binds = re.subn(r"(?m)^(\s*)bind \S+", lambda m: f"{m.group(1)}bind 127.0.0.1:{listen_port}", text)
    assert binds == 1, "deploy/haproxy.cfg: expected one bind line"
    # The shipped maxconn needs a file-descriptor limit a test machine may not grant.
    text = re.sub(r"(?m)^(\s*)maxconn \d+", lambda m: f"{m.group(1)}maxconn 200", text)
    lines = text.splitlines()
    servers = [i for i, line in enumerate(lines) if line.strip().startswith("server ")]
    assert servers, "deploy/haproxy.cfg: expected server lines"
    parts = lines[servers[0]].split(None, 3)
    options = parts[3] if len(parts) > 3 else ""  # the options of the first server line, as shipped
    indent = lines[servers[0]][: len(lines[servers[0]]) - len(lines[servers[0]].lstrip())]
    ours = [
        f"{indent}server sidecar{n} 127.0.0.1:{port} {options}".rstrip()
        for n, port in enumerate(sidecar_ports, 1)
    ]
    lines[servers[0] : servers[-1] + 1] = ours
    return "\n".join(lines) + "\n"


@dataclass
class Fleet:
    """Three sidecars on one database and HAProxy in front of them."""

    dsn: str
    workdir: Path
    ports: list[int]
    sidecars: list[ServerProcess | None] = field(default_factory=list)
    proxy: Endpoint | None = None
    haproxy: asyncio.subprocess.Process | None = None

    def sidecar(self, n: int) -> ServerProcess:
        served = self.sidecars[n]
        assert served is not None, f"sidecar {n} is not running"
        return served

    async def start_sidecar(self, n: int) -> ServerProcess:
        argv = [
            *pg_realtime_command(),
            "serve",
            "--database-url",
            self.dsn,
            "--port",
            str(self.ports[n]),
            "--trusted-proxies",
            "127.0.0.1/32",
            "--refused-join-delay-ms",
            "0",
            "--max-payload-kb",
            str(MAX_PAYLOAD_KB),
            "--max-client-events-per-second",
            "0",
        ]
        served = await ServerProcess.start(
            argv,
            self.ports[n],
            self.workdir,
            name=f"sidecar{n}",
            env={"REALTIME_JWT_SECRET": TEST_JWT_SECRET},
        )
        try:
            await served.wait_ready()
        except ServerExited:
            await served.kill()
            raise
        self.sidecars[n] = served
        return served

    async def start_haproxy(self) -> Endpoint:
        port = free_port()
        cfg = self.workdir / "haproxy.cfg"
        cfg.write_text(haproxy_config(port, self.ports))
        haproxy = shutil.which("haproxy") or "/usr/sbin/haproxy"
        log = (self.workdir / "haproxy.log").open("wb")
        self.haproxy = await asyncio.create_subprocess_exec(
            haproxy, "-db", "-f", str(cfg), stdout=log, stderr=log
        )
        self.proxy = Endpoint(port=port)
        async with aiohttp.ClientSession() as http:
            for _ in range(400):
                if self.haproxy.returncode is not None:
                    raise RuntimeError(f"haproxy exited: {(self.workdir / 'haproxy.log').read_text()}")
                with contextlib.suppress(aiohttp.ClientError, OSError):
                    async with http.get(f"{self.proxy.url}/healthz") as response:
                        if response.status == 200:
                            return self.proxy
                await asyncio.sleep(0.05)
        raise RuntimeError(f"haproxy not ready: {(self.workdir / 'haproxy.log').read_text()}")

    async def stop(self) -> None:
        if self.haproxy is not None and self.haproxy.returncode is None:
            self.haproxy.terminate()
            await self.haproxy.wait()
        for served in self.sidecars:
            if served is not None:
                await served.stop()


@pytest.fixture
async def fleet(db_dsn: str, tmp_path: Path) -> AsyncIterator[Fleet]:
    """Three sidecars on ``db_dsn`` (private channels of topics ``room-*`` open to
    ``authenticated``) and HAProxy in front of them."""
    import psycopg

    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(PRIVATE_SETUP)
    fleet = Fleet(db_dsn, tmp_path, [free_port() for _ in range(3)], [None, None, None])
    try:
        await asyncio.gather(*(fleet.start_sidecar(n) for n in range(3)))
        await fleet.start_haproxy()
        yield fleet
    finally:
        await fleet.stop()


PRIVATE_SETUP = """
create policy read_rooms on realtime.messages for select to authenticated
  using ((select realtime.topic()) like 'room-%');
create policy write_rooms on realtime.messages for insert to authenticated
  with check ((select realtime.topic()) like 'room-%');
"""
