"""A session's token and read-policy rules: an ``access_token`` refresh and the periodic re-check.

Functions of the session they act on, written as its rules are (generators that yield requests).
A private channel's reads are checked again for broadcast and, once it was checked, for presence;
a read that was allowed and is no longer ends the channel, as upstream.
"""

from __future__ import annotations

import logging
from collections.abc import Generator
from typing import Any

from . import reasons
from .auth import AuthError
from .channels import Channel
from .logs import printable
from .queries import Answer, PolicyFailed, ReadCheck, Request, Rule, Unavailable
from .session_context import Socket

log = logging.getLogger("pg_realtime")

#: Joined channels have their token and read policy checked again this often (as upstream).
RECHECK_INTERVAL_S = 300.0


def expiry(claims: dict[str, Any]) -> float | None:
    """When a token with these claims expires (epoch seconds), None without a numeric ``exp``."""
    exp = claims.get("exp")
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def read_checks(
    session: Socket, channel: Channel, claims: dict[str, Any]
) -> Generator[Request, Answer, tuple[bool, bool | None] | Unavailable]:
    """The read policies of a joined private channel for ``claims``: (broadcast, presence),
    presence None when it was never checked. A broken policy reads as no."""
    extensions = ("broadcast", "presence") if channel.can_read_presence is not None else ("broadcast",)
    results: list[bool] = []
    for extension in extensions:
        answer = yield ReadCheck(channel.subtopic, claims, extension)
        if isinstance(answer, Unavailable):
            return answer
        if isinstance(answer, PolicyFailed):
            log.warning(
                "RlsPolicyError: read check on %s failed: %s", printable(channel.subtopic), answer.detail
            )
        results.append(answer is True)
    return results[0], (results[1] if len(results) > 1 else None)


def revoked(channel: Channel, broadcast: bool, presence: bool | None) -> bool:
    """Whether a read that was allowed is no longer (or nothing is readable any more)."""
    if channel.can_read and not broadcast:
        return True
    if channel.can_read_presence and presence is False:
        return True
    return not broadcast and not presence


def refresh_token(session: Socket, channel: Channel, payload: Any) -> Rule:
    token = payload.get("access_token") if isinstance(payload, dict) else None
    # Ignored, never answered: null, unchanged, and the non-JWT `sb_` keys.
    if token is None or not isinstance(token, str) or token == channel.token or token.startswith("sb_"):
        return
    try:
        claims = session.context.verifier.verify(token, session.now) if token else None
    except AuthError as exc:
        session.shutdown_channel(channel, exc.message)
        return
    if claims is None:
        session.shutdown_channel(channel, reasons.INVALID_JWT)
        return
    if channel.private:
        result = yield from read_checks(session, channel, claims)
        if isinstance(result, Unavailable):
            # The policies cannot be evaluated now. Fail closed on the new claims: the channel
            # keeps its old token, permission and expiry until a refresh can be checked.
            log.warning(
                "UnableToConnectToProject: read re-check on %s postponed: %s",
                channel.subtopic,
                result.detail,
            )
            return
        if session.channels.get(channel.topic) is not channel:
            return
        broadcast, presence = result
        if revoked(channel, broadcast, presence):
            channel.can_read = False
            session.shutdown_channel(channel, reasons.no_read_permission(channel.subtopic))
            return
        channel.can_read = broadcast
        if presence is not None:
            channel.can_read_presence = presence
        # Re-checked on the next send or track, with the new claims.
        channel.can_write = None
        channel.can_write_presence = None
    channel.token = token
    channel.claims = claims
    channel.expires_at = expiry(claims)
    channel.recheck_at = session.now + RECHECK_INTERVAL_S


def recheck(session: Socket, channel: Channel) -> Rule:
    """The periodic check of a joined channel: its token still verifies (a changed secret or
    JWKS), and a private channel's user may still read."""
    channel.recheck_at = session.now + RECHECK_INTERVAL_S
    try:
        claims = session.context.verifier.verify(channel.token, session.now)
    except AuthError as exc:
        session.shutdown_channel(channel, exc.message)
        return
    if not channel.private:
        return
    result = yield from read_checks(session, channel, claims)
    if session.channels.get(channel.topic) is not channel:
        return
    if isinstance(result, Unavailable):
        return  # checked again at the next period
    if revoked(channel, *result):
        channel.can_read = False
        session.shutdown_channel(channel, reasons.no_read_permission(channel.subtopic))
