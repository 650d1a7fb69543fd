"""The sidecar's side of the database: the pool, the RLS probes, replay, and maintenance.

A lost connection or an exhausted pool is :class:`DatabaseUnavailable`, never a bug; while the
reader says the database is down, calls fail at once instead of waiting for a pool timeout.
The reader itself (``stream.py``) keeps its own connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from . import stream_queries
from .policies import Authorizer
from .rows import Row

log = logging.getLogger("pg_realtime")

APPLICATION_NAME = "pg-realtime"
MAINTAIN_RETRY_S = 10.0


class DatabaseUnavailable(Exception):
    """The database is not reachable right now."""


@contextlib.contextmanager
def database_errors() -> Iterator[None]:
    """A lost connection or an exhausted pool means the database is unavailable, not a bug."""
    try:
        yield
    except (psycopg.OperationalError, PoolTimeout) as exc:
        raise DatabaseUnavailable(str(exc)) from None


class Database:
    """A connection pool for RLS probes, replay and maintenance (not for the reader)."""

    def __init__(
        self, url: str, pool_size: int, down_reason: Callable[[], str | None] = lambda: None
    ) -> None:
        self.url = url
        #: The reason the database is known to be away right now (from the reader), else None.
        self.down_reason = down_reason
        self.pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
            url,
            min_size=1,
            max_size=max(1, pool_size),
            open=False,
            kwargs={"application_name": APPLICATION_NAME, "prepare_threshold": None},
            timeout=5,
            reconnect_timeout=0,
            # After a database restart the idle connections are dead: test each before lending it.
            check=AsyncConnectionPool.check_connection,
        )
        self.authorizer = Authorizer(self.pool)
        #: Set once the first maintenance run has ended (committed or failed).
        self.maintained = asyncio.Event()

    async def open(self) -> None:
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.pool.close()

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        with database_errors():
            async with self.pool.connection() as conn:
                yield conn

    def fail_fast(self) -> None:
        """Raise DatabaseUnavailable at once while the reader says the database is away."""
        reason = self.down_reason()
        if reason is not None:
            raise DatabaseUnavailable(reason)

    async def can_read(self, subtopic: str, claims: dict[str, Any], extension: str = "broadcast") -> bool:
        self.fail_fast()
        with database_errors():
            return await self.authorizer.can_read(subtopic, claims, extension=extension)

    async def can_write(self, subtopic: str, claims: dict[str, Any], extension: str = "broadcast") -> bool:
        self.fail_fast()
        with database_errors():
            return await self.authorizer.can_write(subtopic, claims, extension=extension)

    async def replay(self, subtopic: str, since_ms: int, limit: int) -> list[Row]:
        async with self.connection() as conn:
            rows = await stream_queries.replay(conn, subtopic, since_ms, limit)
            await conn.rollback()
        return rows

    async def maintain(self, retention: str) -> None:
        async with self.connection() as conn:
            cur = await conn.execute("select realtime.maintain(%s::interval)", (retention,))
            for (action,) in await cur.fetchall():
                # "skipped ..." means a lock was busy; the next run retries.
                level = logging.WARNING if str(action).startswith("skipped") else logging.INFO
                log.log(level, "realtime.maintain: %s", action)
            await conn.commit()

    async def maintain_forever(self, retention: str, interval_s: float) -> None:
        """realtime.maintain() now and every ``interval_s``; a failed run is retried sooner."""
        while True:
            try:
                await self.maintain(retention)
                delay = interval_s
            except (psycopg.Error, DatabaseUnavailable, OSError) as exc:
                log.warning("realtime.maintain() failed, retrying in %.0f s: %s", MAINTAIN_RETRY_S, exc)
                delay = MAINTAIN_RETRY_S
            self.maintained.set()
            await asyncio.sleep(delay)
