"""The one JWT minter of the tests and the benchmarks."""

from __future__ import annotations

import time
from typing import Any

from pg_realtime.auth import sign


def mint_token(secret: str, role: str | None = "anon", expires_in: float | None = 3600, **claims: Any) -> str:
    """An HS256 token signed with ``secret``: ``role``, ``iat``, ``exp`` and then ``claims``.

    ``role=None`` or ``expires_in=None`` leaves that claim out (tokens the server must refuse). A
    whole ``expires_in`` gives a whole ``exp`` (as real issuers do); a fractional one gives a
    fractional ``exp``, for tokens that expire within a fraction of a second. A negative one gives
    a token that has already expired. ``claims`` may override any of the three.
    """
    now = time.time()
    body: dict[str, Any] = {}
    if role is not None:
        body["role"] = role
    body["iat"] = int(now)
    if expires_in is not None:
        whole = float(expires_in).is_integer()
        body["exp"] = int(now) + int(expires_in) if whole else now + expires_in
    body.update(claims)
    return sign(body, secret)
