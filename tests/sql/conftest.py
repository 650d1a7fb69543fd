"""Helpers for the extension's tests: captured server notices and UTC dates."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg.errors import Diagnostic

WARN_PREFIX = "WarnSendingBroadcastMessage: "


class Notices:
    """The notices (WARNING, NOTICE...) a connection received, in order."""

    def __init__(self, conn: psycopg.Connection) -> None:
        #: (severity, primary message); a Diagnostic is only readable inside the handler.
        self.received: list[tuple[str, str]] = []
        conn.add_notice_handler(self._receive)

    def _receive(self, diag: Diagnostic) -> None:
        self.received.append((str(diag.severity_nonlocalized), str(diag.message_primary)))

    @property
    def warnings(self) -> list[str]:
        return [message for severity, message in self.received if severity == "WARNING"]

    def clear(self) -> None:
        self.received.clear()


@pytest.fixture
def notices(db: psycopg.Connection) -> Iterator[Notices]:
    yield Notices(db)


def utc_today(conn: psycopg.Connection) -> dt.date:
    """The UTC day of the server's clock (the day partitions are named after)."""
    row = conn.execute("select pg_catalog.timezone('utc', pg_catalog.now())::date").fetchone()
    assert row is not None and isinstance(row[0], dt.date)
    return row[0]


def partition_name(day: dt.date) -> str:
    return f"realtime.messages_{day:%Y_%m_%d}"


def drop_partition(conn: psycopg.Connection, name: str) -> None:
    """Drop a partition by hand: it belongs to the extension, so it leaves the extension first."""
    conn.execute(f"alter extension realtime drop table {name}")
    conn.execute(f"drop table {name}")


def partitions(conn: psycopg.Connection) -> list[str]:
    """The range partitions of realtime.messages, oldest first."""
    return [r[0] for r in conn.execute("select partition_name::text from realtime.messages_partitions()")]


def count(conn: psycopg.Connection, sql: str, params: tuple[object, ...] = ()) -> int:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


def xids_taken(conn: psycopg.Connection, work: Callable[[], object]) -> int:
    """How many transaction ids (top-level and subtransaction) ``work`` takes in one transaction.

    Transaction ids are handed out in order, so the ids read in a transaction before and in one
    after enclose exactly those taken in between (the suite's cluster runs one test at a time).
    """
    before = count(conn, "select pg_current_xact_id()::text::bigint")
    with conn.transaction():
        work()
    after = count(conn, "select pg_current_xact_id()::text::bigint")
    return after - before - 1
