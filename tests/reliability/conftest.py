"""Fixtures of the reliability suite: clusters that a test may stop."""

from __future__ import annotations

from collections.abc import Callable

import psycopg
import pytest
from pg_realtime.cli import ensure_supabase_roles
from pg_realtime.embedded import EmbeddedPostgres

# Enough of a Supabase project for private channels: the extension, and policies that let
# `authenticated` read and write the topics named `room-*` (the roles come first).
PRIVATE_SETUP = """
create extension if not exists realtime;
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
    with psycopg.connect(dsn, autocommit=True) as conn:
        ensure_supabase_roles(conn)
        conn.execute(PRIVATE_SETUP)
    return cluster, dsn
