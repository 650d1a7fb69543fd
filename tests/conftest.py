"""Fixtures shared by the whole suite: a real PostgreSQL and per-test databases.

The run starts its own throwaway cluster (as the ``postgres`` OS user when we are root)
unless ``REALTIME_TEST_DATABASE_URL`` names a superuser connection to an existing server.
The extension is installed once into a template database; every test that asks for
``db_dsn`` gets a fresh database cloned from it.
"""

from __future__ import annotations

import filecmp
import itertools
import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pg_realtime.embedded import EmbeddedPostgres
from psycopg.conninfo import conninfo_to_dict
from pytest_postgresql.janitor import DatabaseJanitor

from tests.harness import (
    LiveServer,
    prepare_database,
    serve_in_process,
    server_settings,
    with_dbname,
)

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
        conn.execute(f"drop database if exists {TEMPLATE_DB}")
        conn.execute(f"create database {TEMPLATE_DB}")
    prepare_database(with_dbname(pg_server, TEMPLATE_DB))
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
        yield with_dbname(pg_server, name)
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

ServerFactory = Callable[..., Awaitable[LiveServer]]


@pytest.fixture
async def make_server() -> AsyncIterator[ServerFactory]:
    """Start servers with chosen settings: ``await make_server(db_dsn, max_channels_per_client=2)``.

    ``port`` (0: any free one) lets a test restart a server in place on the port it had;
    ``wait_live=False`` returns before the stream is live (for servers it must refuse). The
    suite's cluster is an embedded one, as under `make run`: the inspector is in demo mode.
    """
    started: list[LiveServer] = []

    async def start(
        database_url: str | None, port: int = 0, wait_live: bool = True, **overrides: Any
    ) -> LiveServer:
        # Every default limit applies except the delays of refused joins (5 s) and handshakes (2 s),
        # which would make each test of a refusal wait; the tests of those delays set them.
        overrides.setdefault("refused_join_delay_ms", 0)
        overrides.setdefault("refused_connect_delay_ms", 0)
        live = await serve_in_process(server_settings(database_url, port=port, **overrides), wait_live)
        started.append(live)
        return live

    yield start
    for live in started:
        await live.stop()


@pytest.fixture
async def live_server(make_server: ServerFactory, db_dsn: str) -> LiveServer:
    """A server on a fresh database, its stream live."""
    return await make_server(db_dsn)
