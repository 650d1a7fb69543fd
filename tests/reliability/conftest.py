"""Fixtures of the reliability suite: clusters that a test may stop."""

from __future__ import annotations

from collections.abc import Callable

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
