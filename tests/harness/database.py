"""The one way to make a database ready for pg-realtime: the Supabase roles, the extension, grants."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import psycopg
from pg_realtime.cli import SUPABASE_ROLES, ensure_supabase_roles
from psycopg.conninfo import conninfo_to_dict, make_conninfo


def with_dbname(dsn: str, dbname: str) -> str:
    """``dsn`` naming another database of the same server."""
    params = conninfo_to_dict(dsn)
    params["dbname"] = dbname
    return make_conninfo("", **params)


def prepare_database(
    dsn: str,
    *,
    setup_sql: str = "",
    wait_s: float = 0,
    retry_every_s: float = 30,
    log: Callable[[str], None] | None = None,
) -> None:
    """What ``pg-realtime serve`` does to its embedded database, done to ``dsn`` (a superuser's).

    The Supabase roles are created where missing (they are cluster-wide), the extension is
    installed if it is not, and each role is granted what sending and receiving needs (again, for
    a role the extension did not see at install time). ``setup_sql`` runs last (policies, ...).

    ``wait_s`` retries CREATE EXTENSION that long, every ``retry_every_s`` seconds, for runs that
    start while the installed extension is being changed.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with psycopg.connect(dsn, autocommit=True) as conn:
                ensure_supabase_roles(conn)
                conn.execute("create extension if not exists realtime")
            break
        except psycopg.Error as exc:
            if time.monotonic() > deadline:
                raise
            if log is not None:
                log(f"CREATE EXTENSION realtime failed ({str(exc).strip()}); retrying in {retry_every_s:g} s")
            time.sleep(retry_every_s)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for role in SUPABASE_ROLES:
            conn.execute("select realtime.grant_access(%s)", (role,))
        if setup_sql:
            conn.execute(setup_sql)


def scalar(conn: psycopg.Connection[Any], query: str, params: Sequence[Any] = ()) -> Any:
    """The first column of the first row ``query`` returns, asserting that it returns a row."""
    row = conn.execute(query, params).fetchone()
    assert row is not None, f"no row from {query!r}"
    return row[0]
