"""What every benchmark shares: a PostgreSQL, server subprocesses, load generators, tables, plots.

Everything listens on 127.0.0.1. Servers and load generators run as subprocesses, so the
process being measured never shares its interpreter (or its event loop) with the one that
measures it. Tokens, database preparation and server processes are those of the test suite
(``tests.harness``), so a benchmark starts what the tests start.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import subprocess
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from pg_realtime.embedded import EmbeddedPostgres, free_port, pg_bindir

from tests.harness import ServerProcess, pg_realtime_command, prepare_database, server_process

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
JWT_SECRET = "bench-secret-with-at-least-32-bytes-of-entropy!!"

#: Same for every variant of every benchmark: durable commits (the default) and no checkpoint
#: in the middle of a 10-second run.
POSTGRES_SETTINGS = {
    "max_connections": "300",
    "max_wal_size": "8GB",
    "checkpoint_timeout": "30min",
    "shared_buffers": "256MB",
}


def log(message: str) -> None:
    print(f"  . {message}", file=sys.stderr, flush=True)


# -- PostgreSQL ---------------------------------------------------------------------------------


class Postgres:
    """One embedded cluster for the whole run; each benchmark gets its own database in it."""

    def __init__(self, data_dir: Path) -> None:
        self.cluster = EmbeddedPostgres(data_dir, settings=dict(POSTGRES_SETTINGS))
        self._started = False

    def start(self) -> None:
        if not self._started:
            log("starting PostgreSQL")
            self.cluster.start()
            self._started = True

    @property
    def port(self) -> int:
        return self.cluster.port

    def version(self) -> str:
        self.start()
        with psycopg.connect(self.cluster.dsn()) as conn:
            row = conn.execute("show server_version").fetchone()
            return str(row[0]) if row else "?"

    def database(self, name: str, extension: bool = True, wait_s: float = 600) -> str:
        """A fresh database ``name`` (with the roles, the extension and its grants), as a DSN.

        The extension may be in the middle of being changed when the run starts; CREATE
        EXTENSION is retried for up to ``wait_s`` seconds before giving up.
        """
        self.start()
        with psycopg.connect(self.cluster.dsn(), autocommit=True) as conn:
            conn.execute(f"drop database if exists {name} with (force)")
            conn.execute(f"create database {name}")
        dsn = self.cluster.dsn(name)
        if extension:
            prepare_database(dsn, wait_s=wait_s, log=log)
        return dsn

    def stop(self) -> None:
        if self._started:
            self.cluster.remove()
            self._started = False


def pgbench_path() -> str:
    candidate = pg_bindir() / "pgbench"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("pgbench")
    if found is None:
        raise RuntimeError("pgbench not found: install the PostgreSQL client tools")
    return found


@dataclasses.dataclass
class PgbenchResult:
    tps: float
    transactions: int
    latency_ms: float
    failed: int


def pgbench(
    pg: Postgres,
    dbname: str,
    script: str,
    clients: int,
    seconds: float,
    rate: float | None = None,
    workdir: Path | None = None,
    options: str = "",
) -> PgbenchResult:
    """Run pgbench with one custom script over TCP; ``rate`` throttles to that many tps.

    ``options`` are server settings for its sessions (PGOPTIONS), e.g. ``-c synchronous_commit=off``.
    """
    workdir = workdir or Path(os.environ.get("TMPDIR", "/tmp"))
    script_file = workdir / f"pgbench-{os.getpid()}-{abs(hash(script))}.sql"
    script_file.write_text(script)
    argv = [
        pgbench_path(),
        "-h",
        "127.0.0.1",
        "-p",
        str(pg.port),
        "-U",
        "postgres",
        "-n",
        "-M",
        "prepared",
        "-f",
        str(script_file),
        "-c",
        str(clients),
        "-j",
        str(min(clients, 2)),
        "-T",
        str(max(1, round(seconds))),
    ]
    if rate is not None:
        argv += ["-R", str(rate)]
    argv.append(dbname)
    env = {**os.environ, "PGOPTIONS": options} if options else None
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"pgbench failed: {done.stderr.strip() or done.stdout.strip()}")
    out = done.stdout

    def grab(pattern: str, default: float = 0.0) -> float:
        match = re.search(pattern, out)
        return float(match.group(1)) if match else default

    return PgbenchResult(
        tps=grab(r"tps = ([\d.]+) \(without initial connection time\)"),
        transactions=int(grab(r"number of transactions actually processed: (\d+)")),
        latency_ms=grab(r"latency average = ([\d.]+) ms"),
        failed=int(grab(r"number of failed transactions: (\d+)")),
    )


# -- servers ------------------------------------------------------------------------------------


def rss_kb(pid: int) -> int:
    """Resident set size of a process, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def sidecar_backends(dsn: str) -> list[int]:
    """The PostgreSQL backends of the sidecar: its reader and its pool's sessions."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "select pid from pg_stat_activity where application_name like 'pg-realtime%%'"
        ).fetchall()
    assert any(rows), "the sidecar is not connected"
    return [int(pid) for (pid,) in rows]


def sidecar_cpu_seconds(server_pid: int, backends: list[int]) -> float:
    """CPU time used so far by the sidecar's process and by those of its backends still running."""
    total = cpu_seconds(server_pid)
    for pid in backends:
        with contextlib.suppress(FileNotFoundError):
            total += cpu_seconds(pid)
    return total


def run_queue_seconds(pid: int) -> float:
    """Time a process has spent runnable but waiting for a CPU (``/proc/<pid>/schedstat``)."""
    return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9


def realtime_server(
    dsn: str, workdir: Path, *extra: str
) -> contextlib.AbstractAsyncContextManager[ServerProcess]:
    """`pg-realtime serve` against ``dsn``; ready once its stream is live (/healthz 200)."""
    port = free_port()
    argv = [
        *pg_realtime_command(),
        "serve",
        "--database-url",
        dsn,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--jwt-secret",
        JWT_SECRET,
        "--log-level",
        "warning",
        # A load generator is thousands of clients from one address, publishing as fast as it can:
        # the abuse limits that stop one such client are lifted here (a later flag in ``extra`` wins).
        *LOAD_GENERATOR_LIMITS,
        *extra,
    ]
    return server_process(argv, port, workdir, cwd=ROOT, secret=JWT_SECRET)


LOAD_GENERATOR_LIMITS = (
    "--max-connections-per-address",
    "0",
    "--max-client-events-per-second",
    "0",
    "--max-connections",
    "1000000",
)


def other_server(
    name: str, argv: Sequence[str], workdir: Path, port: int, env: dict[str, str] | None = None
) -> contextlib.AbstractAsyncContextManager[ServerProcess]:
    """A server that is not pg-realtime, ready once its /ready answers at all."""
    return server_process(
        argv,
        port,
        workdir,
        name=name,
        ready_path="/ready",
        ready=lambda status: status < 500,
        env=env,
        cwd=ROOT,
        secret=JWT_SECRET,
    )


def bare_server(workdir: Path) -> contextlib.AbstractAsyncContextManager[ServerProcess]:
    """The bare aiohttp relay of bench._bare (the WebSocket library's own ceiling)."""
    port = free_port()
    argv = [sys.executable, "-m", "bench._bare", "--port", str(port)]
    return other_server("bare-aiohttp", argv, workdir, port)


# -- load generators ----------------------------------------------------------------------------


class LoadGen:
    """A bench._loadgen worker: WebSocket clients in their own process, driven by JSON lines."""

    def __init__(self, config: dict[str, Any], workdir: Path) -> None:
        self.config = {"workdir": str(workdir), **config}
        self.proc: asyncio.subprocess.Process | None = None
        self.ready: dict[str, Any] = {}

    async def __aenter__(self) -> LoadGen:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench._loadgen",
            json.dumps(self.config),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=str(ROOT),
            limit=2**24,
        )
        self.ready = await self._read(timeout=300)
        if not self.ready.get("ready"):
            raise RuntimeError(f"load generator failed to start: {self.ready}")
        return self

    async def _read(self, timeout: float) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdout is not None
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise RuntimeError("load generator exited")
        result: dict[str, Any] = json.loads(line)
        if "error" in result:
            raise RuntimeError(f"load generator: {result['error']}")
        return result

    async def call(self, op: str, timeout: float = 300, **args: Any) -> dict[str, Any]:
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, **args}).encode() + b"\n")
        await self.proc.stdin.drain()
        return await self._read(timeout)

    async def latencies_ms(self) -> np.ndarray:
        """Every latency sample since the last reset, in milliseconds."""
        report = await self.call("report")
        path = report.get("latency_file")
        if not path:
            return np.empty(0)
        return _load_samples(Path(path))

    async def __aexit__(self, *exc: object) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(Exception):
            assert self.proc.stdin is not None
            self.proc.stdin.write(b'{"op":"quit"}\n')
            await self.proc.stdin.drain()
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


def _load_samples(path: Path) -> np.ndarray:
    samples = np.fromfile(path, dtype=np.float64) * 1000.0
    path.unlink(missing_ok=True)
    return samples


# -- numbers, tables, plots ---------------------------------------------------------------------


def percentiles(samples: np.ndarray, points: Iterable[float] = (50, 95, 99)) -> list[float]:
    if samples.size == 0:
        return [float("nan") for _ in points]
    return [float(v) for v in np.percentile(samples, list(points))]


def fmt(value: float, digits: int = 1) -> str:
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.{digits}f}"


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def figure(width: float = 8, height: float = 4.5) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(width, height), dpi=100)
    return fig, ax


def save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def machine() -> dict[str, str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    import aiohttp as _aiohttp

    return {
        "cpu": f"{os.cpu_count()} x {cpu}",
        "memory": f"{mem_kb / 1024 / 1024:.0f} GiB",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "aiohttp": _aiohttp.__version__,
        "picows": importlib.metadata.version("picows"),
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
    }


@dataclasses.dataclass
class Result:
    """What one benchmark reports: markdown for the results page and a one-line verdict."""

    name: str
    title: str
    markdown: str
    verdict: str
    plot: Path | None = None


@dataclasses.dataclass
class Context:
    pg: Postgres
    workdir: Path
    out_dir: Path
    quick: bool

    def seconds(self, full: float, quick: float) -> float:
        return quick if self.quick else full
