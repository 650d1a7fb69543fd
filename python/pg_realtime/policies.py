"""Private channels: the user's own RLS policies on realtime.messages decide, by probe.

Both probes run in a transaction that is always rolled back, so they leave nothing
behind. They run as the sidecar's login role (which must bypass RLS, as owner,
superuser or BYPASSRLS) until ``set_config('role', ...)`` switches to the token's role.

The probe row's ``extension`` is "broadcast" for broadcasts and "presence" for presence, as
upstream's, so policies can tell the two apart.

* read: insert a probe row while still privileged, switch to the user, and see whether
  the SELECT policies let the user see it.
* write: switch to the user, insert without RETURNING (RETURNING would drag the SELECT
  policies in), and treat only SQLSTATE 42501 as a denial.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import orjson
from psycopg import errors as pg_errors
from psycopg_pool import AsyncConnectionPool

from .logs import first_line

log = logging.getLogger(__name__)

_SET_CLAIMS = """
select set_config('role', %(role)s, true),
       set_config('realtime.topic', %(topic)s, true),
       set_config('request.jwt.claims', %(claims)s, true),
       set_config('request.jwt.claim.sub', %(sub)s, true),
       set_config('request.jwt.claim.role', %(role)s, true),
       set_config('request.headers', %(headers)s, true)
"""

# inserted_at is given explicitly so the SELECT can prune to one partition; the probe's row is
# found by its transaction's id, the leading column of the primary key (the id is not indexed).
_INSERT_READ_PROBE = """
insert into realtime.messages (id, topic, extension, inserted_at, updated_at)
values (%(id)s, %(topic)s, %(extension)s, timezone('utc', now()), timezone('utc', now()))
"""
_SELECT_READ_PROBE = """
select 1 from realtime.messages
where xid = pg_current_xact_id() and id = %(id)s and inserted_at = timezone('utc', now())
"""
_INSERT_WRITE_PROBE = """
insert into realtime.messages (topic, extension) values (%(topic)s, %(extension)s)
"""


class PolicyError(Exception):
    """The policies could not be evaluated (a broken policy, an unknown role...)."""


# A token must never make the probe run as a role that bypasses the policies: a superuser, or
# the sidecar's own login (which the deployment guide asks to bypass RLS).
_PRIVILEGED_ROLES = """
select rolname from pg_catalog.pg_roles where rolsuper or rolname = session_user
"""


class Authorizer:
    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool
        self._privileged: frozenset[str] | None = None

    async def _refuses_role(self, conn: Any, claims: dict[str, Any]) -> bool:
        if self._privileged is None:
            cur = await conn.execute(_PRIVILEGED_ROLES)
            self._privileged = frozenset(str(row[0]) for row in await cur.fetchall())
        role = str(claims.get("role", ""))
        if role in self._privileged:
            log.warning("a token names the privileged role %r: refused", role[:64])
            return True
        return False

    @staticmethod
    def _params(
        subtopic: str, claims: dict[str, Any], headers: dict[str, str] | None, extension: str
    ) -> dict[str, Any]:
        sub = claims.get("sub")
        return {
            "extension": extension,
            "role": str(claims.get("role", "")),
            "topic": subtopic,
            "claims": orjson.dumps(claims).decode(),
            "sub": sub if isinstance(sub, str) else ("" if sub is None else orjson.dumps(sub).decode()),
            "headers": orjson.dumps(headers or {}).decode(),
        }

    async def can_read(
        self,
        subtopic: str,
        claims: dict[str, Any],
        headers: dict[str, str] | None = None,
        extension: str = "broadcast",
    ) -> bool:
        params = self._params(subtopic, claims, headers, extension)
        params["id"] = uuid.uuid4()
        try:
            async with self.pool.connection() as conn, conn.transaction(force_rollback=True):
                if await self._refuses_role(conn, claims):
                    return False
                await conn.execute(_INSERT_READ_PROBE, params)
                await conn.execute(_SET_CLAIMS, params)
                cur = await conn.execute(_SELECT_READ_PROBE, params)
                return await cur.fetchone() is not None
        except pg_errors.InsufficientPrivilege:
            # No SELECT grant at all on realtime.messages for that role: no read.
            return False
        except pg_errors.Error as exc:
            raise PolicyError(_describe(exc)) from None

    async def can_write(
        self,
        subtopic: str,
        claims: dict[str, Any],
        headers: dict[str, str] | None = None,
        extension: str = "broadcast",
    ) -> bool:
        params = self._params(subtopic, claims, headers, extension)
        try:
            async with self.pool.connection() as conn, conn.transaction(force_rollback=True):
                if await self._refuses_role(conn, claims):
                    return False
                await conn.execute(_SET_CLAIMS, params)
                try:
                    async with conn.transaction():
                        await conn.execute(_INSERT_WRITE_PROBE, params)
                except pg_errors.InsufficientPrivilege:
                    return False
                return True
        except pg_errors.Error as exc:
            raise PolicyError(_describe(exc)) from None


def _describe(exc: Exception) -> str:
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    return primary or first_line(exc)
