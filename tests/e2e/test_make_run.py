"""`pg-realtime serve` on its embedded PostgreSQL, and `make run` from a clean clone.

The CLI tests run the installed console script as a separate process, the way a person would:
they read its banner, copy-paste its two demo lines into a shell while a realtime-py subscriber
listens, press Ctrl-C (SIGINT) and start it again on the same data.
"""

from __future__ import annotations

import asyncio
import contextlib
import filecmp
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import psycopg
import pytest
from pg_realtime.embedded import free_port

from tests.clients.drivers import py_subscribe
from tests.harness import TEST_JWT_SECRET, ServerProcess, pg_realtime_command

ROOT = Path(__file__).resolve().parents[2]
PUBLIC: dict[str, Any] = {
    "broadcast": {"self": False, "ack": False},
    "presence": {"key": "", "enabled": False},
    "private": False,
}


def healthz(port: int) -> int | None:
    """The status of GET /healthz, None while nothing answers (for `make run`, not a server we start)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except OSError:
        return None


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def postgres_processes_using(path: Path) -> list[int]:
    """PIDs of processes whose command line mentions ``path`` (a cluster's data directory)."""
    found = []
    needle = str(path).encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if needle in cmdline and b"postgres" in cmdline:
            found.append(int(entry.name))
    return found


@dataclass
class Banner:
    anon: str
    service: str
    database_url: str
    psql: str
    curl: str


def parse_banner(text: str) -> Banner:
    def field(label: str) -> str:
        match = re.search(rf"^\s+{label}:\s+(\S+)\s*$", text, re.M)
        assert match, f"the banner shows the {label}:\n{text}"
        return match.group(1)

    lines = [line.strip() for line in text.splitlines()]
    psql = [line for line in lines if line.startswith("psql ")]
    curl = [line for line in lines if line.startswith("curl ")]
    assert len(psql) == 1 and len(curl) == 1, f"one psql and one curl line:\n{text}"
    return Banner(field("anon key"), field("service_role key"), field("database"), psql[0], curl[0])


def stop_clusters(*data_dirs: Path) -> None:
    """After a failure: stop clusters a killed server left running (they run in their own session)."""
    from pg_realtime.embedded import EmbeddedPostgres

    for data_dir in data_dirs:
        if (data_dir / "pgdata" / "postmaster.pid").exists():
            with contextlib.suppress(Exception):
                EmbeddedPostgres(data_dir).stop("immediate")


@contextlib.asynccontextmanager
async def serving(
    argv: list[str], port: int, workdir: Path, env: dict[str, str] | None = None, clusters: str = ""
) -> AsyncIterator[ServerProcess]:
    """Run ``argv``; on the way out kill it if still running and stop the clusters matching ``clusters``."""
    served = await ServerProcess.start(argv, port, workdir, env=env)
    try:
        yield served
    finally:
        if served.proc.returncode is None:
            await served.kill()
            if clusters:
                await asyncio.to_thread(stop_clusters_matching, clusters)


def stop_clusters_matching(pattern: str) -> None:
    stop_clusters(*Path("/").glob(pattern.lstrip("/")))


async def shell(line: str) -> subprocess.CompletedProcess[str]:
    """Run a line as a person pasting it into bash would."""
    result = await asyncio.to_thread(
        subprocess.run, ["bash", "-c", line], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, f"{line}\nexit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result


# -- the CLI on its embedded PostgreSQL ------------------------------------------------------------


async def test_embedded_serve_prints_working_demo_lines_and_reuses_its_data(tmp_path):
    data_dir = tmp_path / "data"
    port = free_port()
    argv = [*pg_realtime_command(), "serve", "--port", str(port), "--data-dir", str(data_dir)]

    async with serving(argv, port, tmp_path, clusters=str(data_dir)) as served:
        await served.wait_ready()
        banner = parse_banner(served.output)
        assert f"http://127.0.0.1:{port}" in served.output

        # A JWT secret kept in the data directory, readable by its owner only; the keys use it.
        secret_file = data_dir / "jwt_secret"
        assert secret_file.stat().st_mode & 0o777 == 0o600
        secret = secret_file.read_text().strip()
        assert jwt.decode(banner.anon, secret, algorithms=["HS256"])["role"] == "anon"
        assert jwt.decode(banner.service, secret, algorithms=["HS256"])["role"] == "service_role"

        # The database has the extension and the Supabase roles.
        with psycopg.connect(banner.database_url, autocommit=True) as conn:
            roles = conn.execute(
                "select rolname from pg_roles where rolname in ('anon', 'authenticated', 'service_role')"
            ).fetchall()
            assert sorted(r[0] for r in roles) == ["anon", "authenticated", "service_role"]
            assert conn.execute("select 1 from pg_extension where extname = 'realtime'").fetchone()
            conn.execute("create table kept_across_runs (id int)")

        # The two copy-paste lines reach a subscriber of 'room1'.
        client, _, got = await py_subscribe(f"http://127.0.0.1:{port}", banner.anon, "room1", PUBLIC)
        try:
            await shell(banner.psql)
            message = await asyncio.wait_for(got.get(), 10)
            assert message["event"] == "greeting"
            assert message["payload"]["hello"] == "world"
            result = await shell(banner.curl)
            assert re.search(r"^HTTP/1.1 202", result.stdout, re.M), result.stdout
            message = await asyncio.wait_for(got.get(), 10)
            assert message == {"event": "greeting", "payload": {"hello": "rest"}}
        finally:
            await client.close()

        # Ctrl-C stops the server and the cluster; the data stays.
        pgdata = data_dir / "pgdata"
        db_port = int((data_dir / "port").read_text())
        assert await served.interrupt() == 0, served.log
        assert not (pgdata / "postmaster.pid").exists()
        assert not port_open(db_port) and not port_open(port)
        assert postgres_processes_using(pgdata) == []

    # The next run reuses the cluster, its data and its secret.
    async with serving(argv, port, tmp_path, clusters=str(data_dir)) as served:
        await served.wait_ready()
        banner = parse_banner(served.output)
        assert jwt.decode(banner.anon, secret, algorithms=["HS256"])["role"] == "anon"
        with psycopg.connect(banner.database_url, autocommit=True) as conn:
            assert conn.execute("select to_regclass('kept_across_runs') is not null").fetchone() == (True,)
        assert await served.interrupt() == 0, served.log
        assert not (pgdata / "postmaster.pid").exists()


async def test_ephemeral_cluster_is_deleted_at_exit(tmp_path):
    # Deep on purpose: the cluster's Unix socket path would exceed its 107-byte limit here.
    scratch = tmp_path / ("a-rather-deep-scratch-directory-" * 3)
    scratch.mkdir()
    port = free_port()
    argv = [*pg_realtime_command(), "serve", "--port", str(port), "--ephemeral"]
    async with serving(
        argv, port, tmp_path, env={"TMPDIR": str(scratch)}, clusters=f"{scratch}/pg-realtime-*"
    ) as served:
        await served.wait_ready()
        clusters = list(scratch.glob("pg-realtime-*"))
        assert len(clusters) == 1 and (clusters[0] / "pgdata" / "PG_VERSION").exists()
        assert not (tmp_path / ".data").exists()
        parse_banner(served.output)
        assert await served.interrupt() == 0, served.log
    assert list(scratch.glob("pg-realtime-*")) == []
    assert postgres_processes_using(clusters[0]) == []


async def test_with_a_database_url_nothing_is_embedded(tmp_path, db_dsn):
    port = free_port()
    argv = [
        *pg_realtime_command(),
        "serve",
        "--port",
        str(port),
        "--database-url",
        db_dsn,
        "--jwt-secret",
        TEST_JWT_SECRET,
    ]
    async with serving(argv, port, tmp_path, env={"TMPDIR": str(tmp_path)}) as served:
        await served.wait_ready()
        assert "anon key" not in served.output
        assert not (tmp_path / ".data").exists()
        assert list(tmp_path.glob("pg-realtime-*")) == []
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/") as response:
            page = await response.text()
        assert '"demo": false' in page or '"demo":false' in page
        assert "eyJ" not in page  # no key in the page
        assert await served.interrupt() == 0, served.log


# -- make run, from a clean clone --------------------------------------------------------------------


def _sharedir() -> Path:
    out = subprocess.run(["pg_config", "--sharedir"], check=True, capture_output=True, text=True)
    return Path(out.stdout.strip())


def _descendants(pid: int) -> list[int]:
    found: list[int] = []
    queue = [pid]
    while queue:
        current = queue.pop()
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in children:
                found.append(int(child))
                queue.append(int(child))
    return found


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_make_run_from_a_clean_clone(tmp_path):
    """`git clone` the committed HEAD, `make run`, see /healthz answer 200, Ctrl-C.

    The clone builds its own virtualenv (pip, from the package index) and its extension script.
    Installing that script over the one the rest of the suite uses is safe only when the two are
    the same (as in CI, which runs on a commit); otherwise it is installed into a staging
    directory (DESTDIR) and the server uses the installed extension.
    """
    budget = 8 * 60
    started = time.monotonic()
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "--quiet", str(ROOT), str(clone)], check=True, timeout=120)
    assert not (clone / ".venv").exists() and not (clone / ".data").exists()

    env = {
        k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS", "VIRTUAL_ENV")
    }
    venv_bin = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if p != venv_bin)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env["TMPDIR"] = str(scratch)

    subprocess.run(
        ["make", "-s", "-C", str(clone), "all"], check=True, capture_output=True, env=env, timeout=60
    )
    built = next((clone / "sql").glob("realtime--*.sql"))
    installed = _sharedir() / "extension" / built.name
    make_vars: list[str] = []
    staging: Path | None = None
    if not (installed.exists() and filecmp.cmp(built, installed, shallow=False)):
        staging = tmp_path / "staging"
        (staging / str(_sharedir()).lstrip("/") / "extension").mkdir(parents=True)
        make_vars.append(f"DESTDIR={staging}")

    port = free_port()
    log_path = tmp_path / "make-run.log"
    with log_path.open("wb") as log_file:
        make = subprocess.Popen(
            ["make", "-C", str(clone), "run", f"RUN_ARGS=--port {port} --ephemeral", *make_vars],
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        deadline = started + budget
        while healthz(port) != 200:
            assert make.poll() is None, f"make run exited {make.returncode}:\n{log_path.read_text()[-6000:]}"
            assert time.monotonic() < deadline, (
                f"no /healthz 200 after {budget}s:\n{log_path.read_text()[-6000:]}"
            )
            time.sleep(0.5)
        output = log_path.read_text()
        banner = parse_banner(output)
        assert f"http://127.0.0.1:{port}" in output
        assert (clone / ".venv" / "bin" / "pg-realtime").exists()
        if staging is not None:
            assert filecmp.cmp(built, staging / str(installed).lstrip("/"), shallow=False)
        clusters = list(scratch.glob("pg-realtime-*"))
        assert len(clusters) == 1
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
            assert response.status == 200 and b"pg-realtime" in response.read()

        # Ctrl-C reaches the server (make passes on its exit status).
        servers = [pid for pid in _descendants(make.pid) if any("pg-realtime" in a for a in _cmdline(pid))]
        assert len(servers) == 1, [(pid, _cmdline(pid)) for pid in _descendants(make.pid)]
        os.kill(servers[0], signal.SIGINT)
        assert make.wait(60) == 0, log_path.read_text()[-6000:]
        assert not port_open(port)
        assert not port_open(int(banner.database_url.rsplit(":", 1)[1].split("/")[0]))
        assert list(scratch.glob("pg-realtime-*")) == []
        assert postgres_processes_using(clusters[0]) == []
    finally:
        if make.poll() is None:
            os.killpg(make.pid, signal.SIGKILL)
            make.wait()
            stop_clusters(*scratch.glob("pg-realtime-*"))
        shutil.rmtree(clone, ignore_errors=True)
