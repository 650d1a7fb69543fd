"""A session's presence rules: the ``presence`` push (track, untrack) and the state it may send.

Functions of the session they act on, written as the session's own rules are (generators that
yield requests): upstream's checks in upstream's order, its replies and its texts.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import orjson

from . import reasons
from .channels import Channel
from .logs import printable
from .phoenix import Message
from .presence import PresenceSnapshot
from .queries import PolicyFailed, PresenceSync, PresenceTrack, ReadCheck, Rule, Unavailable, WriteCheck
from .session_context import Socket

log = logging.getLogger("pg_realtime")

#: A NUL character in JSON text (``\u0000`` not itself escaped).
_NUL = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")


def presence(session: Socket, channel: Channel, msg: Message) -> Rule:
    """A ``presence`` push: track or untrack, with upstream's limits, replies and texts."""
    payload = msg.payload
    if not isinstance(payload, dict) or "event" not in payload:
        session.reply(msg, "ok", {})  # as upstream: nothing to do, and nothing wrong
        return
    event = payload["event"]
    if not isinstance(event, str):
        session.reply(msg, "error", {})
        return
    calls = channel.presence_calls
    if calls is not None and not calls.allow(session.now):
        session.context.refused("presence_calls")
        session.shutdown_channel(channel, reasons.CLIENT_PRESENCE_RATE_LIMIT)
        return
    event = event.lower()
    if event == "track":
        yield from track(session, channel, msg, payload)
    elif event == "untrack":
        # As upstream: no policy is consulted to stop being present.
        session.context.presence.untrack(channel)
        channel.presence_payload = None
        session.reply(msg, "ok", {})
    else:
        session.reply(msg, "error", {})


def track(session: Socket, channel: Channel, msg: Message, push: dict[str, Any]) -> Rule:
    context = session.context
    if channel.private and channel.can_write_presence is None:
        # The first track of a private channel checks the presence policies: read, if the join
        # did not (presence was not enabled then), and write.
        if channel.can_read_presence is None:
            allowed = yield ReadCheck(channel.subtopic, channel.claims, "presence")
            if isinstance(allowed, Unavailable | PolicyFailed):
                log.warning(
                    "RlsPolicyError: presence read check on %s failed: %s",
                    printable(channel.subtopic),
                    allowed.detail,
                )
                session.reply(msg, "error", {})
                return
            channel.can_read_presence = allowed is True
        allowed = yield WriteCheck(channel.subtopic, channel.claims, "presence")
        if isinstance(allowed, Unavailable | PolicyFailed):
            log.warning(
                "RlsPolicyError: presence write check on %s failed: %s",
                printable(channel.subtopic),
                allowed.detail,
            )
            session.reply(msg, "error", {})
            return
        channel.can_write_presence = allowed is True
        if session.channels.get(channel.topic) is not channel:
            return
    if channel.private and not channel.can_write_presence:
        context.refused("unauthorized_presence")
        session.reply(msg, "error", {})
        return
    payload = push.get("payload", {})
    if not isinstance(payload, dict):
        session.reply(msg, "error", {"reason": reasons.PRESENCE_PAYLOAD_NOT_MAP})
        return
    if payload == channel.presence_payload:
        session.reply(msg, "ok", {})  # the same payload again: nothing changes
        return
    encoded = orjson.dumps(payload)
    if len(encoded) > context.limits.max_payload_bytes:
        context.refused("payload_size")
        session.shutdown_channel(channel, reasons.TRACK_SIZE_EXCEEDED)
        return
    if _NUL.search(encoded) or "\x00" in channel.subtopic or "\x00" in channel.presence_key:
        # PostgreSQL's text and jsonb cannot hold a NUL character: such a presence cannot be stored.
        context.refused("presence_unstorable")
        session.reply(msg, "error", {})
        return
    if not context.presence_events.allow():
        context.refused("presence_events_per_second")
        session.shutdown_channel(channel, reasons.TOO_MANY_PRESENCE_MESSAGES)
        return
    stored = yield PresenceTrack(channel, channel.presence_key, payload)
    if session.channels.get(channel.topic) is not channel:
        return
    if stored is not True:
        detail = stored.detail if isinstance(stored, Unavailable | PolicyFailed) else stored
        log.warning("UnableToTrackPresence on %s: %s", printable(channel.subtopic), detail)
        # An error means not tracked: whatever the failed batch may have stored is removed (the
        # removal is written as soon as the database takes writes again).
        context.presence.untrack(channel)
        channel.presence_payload = None
        session.reply(msg, "error", {})
        return
    channel.presence_payload = payload
    enabling = not channel.presence_enabled
    channel.presence_enabled = True
    session.reply(msg, "ok", {})
    if enabling and channel.receives_presence:
        # As upstream: the track that enables presence sends the state the join did not.
        yield from sync(session, channel)


def sync(session: Socket, channel: Channel) -> Rule:
    """A presence_state for a joined channel, and then the diffs it does not hold."""
    if not session.context.presence_events.allow():
        session.shutdown_channel(channel, reasons.TOO_MANY_PRESENCE_MESSAGES)
        return
    if channel.held is None:
        channel.held = []
    answer = yield PresenceSync(channel.subtopic, channel.private)
    if session.channels.get(channel.topic) is not channel:
        channel.held = None
        return
    if not isinstance(answer, PresenceSnapshot):
        channel.held = None
        session.shutdown_channel(channel, reasons.DATABASE_UNAVAILABLE)
        return
    session.push(channel, "presence_state", answer.state)
    session.release(channel, answer)
