"""Fixtures of the reliability suite: clusters that a test may stop."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import psycopg
import pytest
from pg_realtime.embedded import EmbeddedPostgres

from tests.harness import prepare_database

# Enough of a Supabase project for private channels: policies that let `authenticated` read and
# write the topics named `room-*` (on top of the roles and the extension).
PRIVATE_SETUP = """
create policy read_rooms on realtime.messages for select to authenticated
  using ((select realtime.topic()) like 'room-%');
create policy write_rooms on realtime.messages for insert to authenticated
  with check ((select realtime.topic()) like 'room-%');
"""


@pytest.fixture
def private_cluster(fresh_cluster: Callable[[], EmbeddedPostgres]) -> tuple[EmbeddedPostgres, str]:
    """A dedicated cluster (it may be stopped) whose ``postgres`` database is ready for private channels."""
    cluster = fresh_cluster()
    dsn = cluster.dsn()
    prepare_database(dsn, setup_sql=PRIVATE_SETUP)
    return cluster, dsn


@pytest.fixture
def replicated(
    fresh_cluster: Callable[[], EmbeddedPostgres], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[EmbeddedPostgres, EmbeddedPostgres]]:
    """A primary with the extension and a hot standby streaming from it, both running."""
    primary = fresh_cluster()
    with psycopg.connect(primary.dsn(), autocommit=True) as conn:
        conn.execute("create extension realtime")
    standby = primary.replica(tmp_path_factory.mktemp("pgstandby"))
    try:
        standby.start()
        wait_replayed(primary, standby)
        yield primary, standby
    finally:
        standby.remove()


def wait_replayed(primary: EmbeddedPostgres, standby: EmbeddedPostgres, timeout: float = 30) -> None:
    """Until the standby has replayed everything the primary has written so far."""
    with psycopg.connect(primary.dsn(), autocommit=True) as conn:
        row = conn.execute("select pg_current_wal_insert_lsn()::text").fetchone()
        assert row is not None
        target = row[0]
    deadline = time.monotonic() + timeout
    with psycopg.connect(standby.dsn(), autocommit=True) as conn:
        while True:
            row = conn.execute("select pg_last_wal_replay_lsn() >= %s::pg_lsn", (target,)).fetchone()
            if row is not None and row[0]:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"standby did not replay up to {target}")
            time.sleep(0.02)
