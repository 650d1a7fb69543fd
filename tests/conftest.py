"""Fixtures shared by the whole suite: a real PostgreSQL and per-test databases.

The run starts its own throwaway cluster (as the ``postgres`` OS user when we are root)
unless ``REALTIME_TEST_DATABASE_URL`` names a superuser connection to an existing server.
The extension is installed once into a template database; every test that asks for
``db_dsn`` gets a fresh database cloned from it.
"""

from __future__ import annotations

import asyncio
import filecmp
import itertools
import os
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from aiohttp import web
from pg_realtime.auth import sign
from pg_realtime.cli import ensure_supabase_roles
from pg_realtime.config import Settings
from pg_realtime.embedded import EmbeddedPostgres
from pg_realtime.server import RealtimeServer
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from pytest_postgresql.janitor import DatabaseJanitor

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE_DB = "realtime_template"


def _extension_script() -> Path:
    version = next(
        line.split("=", 1)[1].strip().strip("'")
        for line in (ROOT / "realtime.control").read_text().splitlines()
        if line.startswith("default_version")
    )
    return ROOT / "sql" / f"realtime--{version}.sql"


def _check_extension_installed() -> None:
    """Fail early, with the fix, when the installed extension is not the one in sql/src."""
    subprocess.run(["make", "-s", "-C", str(ROOT), "all"], check=True, capture_output=True)
    built = _extension_script()
    sharedir = subprocess.run(["pg_config", "--sharedir"], check=True, capture_output=True, text=True)
    installed = Path(sharedir.stdout.strip()) / "extension" / built.name
    if not installed.exists() or not filecmp.cmp(built, installed, shallow=False):
        pytest.exit(
            f"the installed extension ({installed}) differs from sql/src: run 'make install' "
            "(or 'sudo make install') and try again",
            returncode=2,
        )


def _with_dbname(dsn: str, dbname: str) -> str:
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo(**params)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A superuser DSN (database ``postgres``) of the server the suite runs against."""
    _check_extension_installed()
    external = os.environ.get("REALTIME_TEST_DATABASE_URL")
    if external:
        yield external
        return
    cluster = EmbeddedPostgres(tmp_path_factory.mktemp("pg"), fast=True)
    dsn = cluster.start()
    try:
        yield dsn
    finally:
        cluster.remove()


@pytest.fixture(scope="session")
def pg_template(pg_server: str) -> str:
    """Name of a template database with the Supabase roles and the extension installed."""
    with psycopg.connect(pg_server, autocommit=True) as conn:
        ensure_supabase_roles(conn)
        conn.execute(f"drop database if exists {TEMPLATE_DB}")
        conn.execute(f"create database {TEMPLATE_DB}")
    with psycopg.connect(_with_dbname(pg_server, TEMPLATE_DB), autocommit=True) as conn:
        conn.execute("create extension realtime")
    return TEMPLATE_DB


_db_counter = itertools.count()


@pytest.fixture
def db_dsn(pg_server: str, pg_template: str) -> Iterator[str]:
    """A fresh database cloned from the template, dropped after the test."""
    params = conninfo_to_dict(pg_server)
    name = f"t_{os.getpid()}_{next(_db_counter)}"
    janitor = DatabaseJanitor(
        user=str(params.get("user", "postgres")),
        host=str(params.get("host", "127.0.0.1")),
        port=str(params.get("port", 5432)),
        password=str(params["password"]) if params.get("password") else None,
        dbname=name,
        template_dbname=pg_template,
    )
    janitor.init()
    try:
        yield _with_dbname(pg_server, name)
    finally:
        janitor.drop()


@pytest.fixture
def db(db_dsn: str) -> Iterator[psycopg.Connection]:
    """An autocommit superuser connection to a fresh database."""
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def fresh_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[[], EmbeddedPostgres]]:
    """Start dedicated clusters (for tests that restart the server or need a bare cluster)."""
    _check_extension_installed()
    started: list[EmbeddedPostgres] = []

    def start() -> EmbeddedPostgres:
        cluster = EmbeddedPostgres(tmp_path_factory.mktemp("pgfresh"), fast=True)
        cluster.start()
        started.append(cluster)
        return cluster

    yield start
    for cluster in started:
        cluster.remove()


# -- the sidecar, served in-process on a free port ----------------------------------------------

TEST_JWT_SECRET = "test-secret-with-at-least-32-bytes-of-entropy!!"


@dataclass
class LiveServer:
    """A running `pg-realtime` server bound to 127.0.0.1 on a free port."""

    server: RealtimeServer
    runner: web.AppRunner
    port: int
    db_dsn: str | None
    secret: str = TEST_JWT_SECRET

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/realtime/v1/websocket"

    def token(self, role: str = "anon", expires_in: float = 3600, **claims: Any) -> str:
        now = int(time.time())
        body: dict[str, Any] = {"role": role, "iat": now, "exp": now + int(expires_in), **claims}
        return sign(body, self.secret)

    async def wait_live(self, timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while self.server.stream is not None and not self.server.stream.live:
            if time.monotonic() > deadline:
                raise TimeoutError(f"stream not live: {self.server.stream.reason}")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        await self.runner.cleanup()


ServerFactory = Callable[..., Awaitable[LiveServer]]


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    """Start servers with chosen settings: ``await make_server(db_dsn, max_channels_per_client=2)``.

    ``port`` (0: any free one) lets a test restart a server in place on the port it had;
    ``wait_live=False`` returns before the stream is live (for servers it must refuse).
    """
    started: list[LiveServer] = []

    async def start(
        database_url: str | None, port: int = 0, wait_live: bool = True, **overrides: Any
    ) -> LiveServer:
        settings = Settings(jwt_secret=TEST_JWT_SECRET, port=port, **overrides)
        server = RealtimeServer(settings, database_url=database_url)
        runner = web.AppRunner(server.app, handle_signals=False, shutdown_timeout=2)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", port, reuse_address=True)
        await site.start()
        live = LiveServer(server, runner, runner.addresses[0][1], database_url)
        started.append(live)
        if database_url and wait_live:
            await live.wait_live()
        return live

    yield start
    for live in started:
        await live.stop()


@pytest.fixture
async def live_server(make_server: ServerFactory, db_dsn: str) -> LiveServer:
    """A server on a fresh database, its stream live."""
    return await make_server(db_dsn)
