"""A session's join rule: a ``phx_join`` checked in upstream's order, then answered.

The topic, the rate and channel limits, the token (the socket's own too), the read policies of a
private channel (broadcast, and presence when it is enabled), replay, and the presence state;
then the reply, the replayed messages, the presence state and what the channel held meanwhile.
A function of the session it acts on, written as the session's rules are.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import phoenix, reasons
from .auth import AuthError
from .broadcast import row_frame
from .channels import Channel
from .join import JoinRequest, binding_id
from .presence import ClientPresenceLimit, PresenceSnapshot, presence_key
from .queries import PolicyFailed, PresenceSync, ReadCheck, ReplayQuery, Rule, StreamResume, Unavailable
from .rows import Row
from .session_context import POLICY_VIOLATION, Socket
from .session_tokens import RECHECK_INTERVAL_S, expiry

if TYPE_CHECKING:
    from .phoenix import Message

#: The longest subtopic a join may name, in UTF-8 bytes.
MAX_TOPIC_BYTES = 255
#: ``replication_ready``: how long the notice may wait for the reader.
REPLICATION_READY_TIMEOUT_S = 60.0


def join(session: Socket, msg: Message) -> Rule:
    context = session.context
    subtopic = phoenix.subtopic(msg.topic)
    if subtopic is None:
        session.unmatched(msg)
        return
    if not subtopic:
        session.reply(msg, "error", {"reason": reasons.TOPIC_NAME_REQUIRED})
        return
    if len(subtopic.encode()) > MAX_TOPIC_BYTES:
        context.refused("topic_length")
        session.reply(msg, "error", {"reason": reasons.TOPIC_NAME_TOO_LONG})
        return
    request = JoinRequest.parse(msg.payload)
    previous = session.channels.get(msg.topic)
    if previous is not None:
        # A second join of a joined topic replaces the first, which is closed first.
        session.close_channel(previous)
        session.leave(previous)

    def refuse(reason: str, metric: str, detail: str = "") -> Rule:
        context.refused(metric)
        context.log_refusal(metric, msg.topic, detail or reason)
        context.on_refused_join(subtopic, request.private, metric, detail or reason)
        if context.stream_paused():
            # The diagnostics now watch the topic, to explain the messages this client misses:
            # a reader paused for want of channels reads again before the refusal goes out.
            yield StreamResume()
        frame = phoenix.encode_reply(
            session.vsn, msg.join_ref, msg.ref, msg.topic, "error", {"reason": reason}
        )
        delay = context.limits.refused_join_delay_s
        if delay and not session.closing:
            # As the reference server: a refused client retries no faster than this, while
            # its other frames go on being handled.
            session.defer(frame, delay)
        else:
            session.send(frame)

    if not session.joins.allow() or not context.joins.allow():
        context.refused("joins_per_second")
        context.log_refusal("joins_per_second", msg.topic, reasons.TOO_MANY_JOINS)
        session.reply(msg, "error", {"reason": reasons.TOO_MANY_JOINS})
        # The reference server also drops the socket of a client that joins too fast.
        session.begin_close(POLICY_VIOLATION)
        return
    limit = context.limits.max_channels
    if limit and len(session.channels) >= limit:
        yield from refuse(reasons.TOO_MANY_CHANNELS, "channels_per_client")
        return
    token = request.token_or(session.token)
    try:
        # Every join checks its token now, the socket's own included: `exp` is the only way a
        # JWT is revoked, so a socket kept alive must not outlive the token it connected with.
        claims = context.verifier.verify(token, session.now)
    except AuthError as exc:
        yield from refuse(exc.reason, "invalid_token")
        return
    channel = Channel(
        peer=session,
        topic=msg.topic,
        subtopic=subtopic,
        join_ref=msg.join_ref if msg.join_ref is not None else msg.ref,
        private=request.private,
        broadcast_self=request.broadcast_self,
        broadcast_ack=request.broadcast_ack,
        presence_enabled=request.presence_enabled,
        token=token,
        claims=claims,
        expires_at=expiry(claims),
        recheck_at=session.now + RECHECK_INTERVAL_S,
        presence_key=presence_key(request.presence_key),
        presence_calls=ClientPresenceLimit(
            context.limits.presence_max_calls, context.limits.presence_window_s
        ),
    )
    if request.private:
        # As upstream: with presence enabled the presence read is checked too, and either
        # read lets the channel join (a presence-only channel gets no broadcasts).
        extensions = ("broadcast", "presence") if request.presence_enabled else ("broadcast",)
        for extension in extensions:
            allowed = yield ReadCheck(subtopic, claims, extension)
            if isinstance(allowed, PolicyFailed):
                # The policy's own error is for the operator's log, never for the client.
                yield from refuse(
                    reasons.unauthorized_read(subtopic),
                    "rls_error",
                    reasons.rls_error(subtopic, allowed.detail),
                )
                return
            if isinstance(allowed, Unavailable):
                yield from refuse(reasons.DATABASE_UNAVAILABLE, "database_unavailable")
                return
            if extension == "broadcast":
                channel.can_read = allowed is True
            else:
                channel.can_read_presence = allowed is True
        if not channel.can_read and not channel.can_read_presence:
            yield from refuse(reasons.unauthorized_read(subtopic), "unauthorized")
            return
    replayed: list[Row] = []
    if request.replay is not None:
        if not request.private:
            yield from refuse(reasons.REPLAY_PUBLIC, "replay")
            return
        window = request.replay_window()
        if window is None:
            yield from refuse(reasons.REPLAY_INVALID, "replay")
            return
        # The channel takes live messages from before the replay query on, held back until
        # the join reply and the replayed rows are out: a message committed meanwhile is
        # neither lost nor, being in the replay too, sent twice.
        channel.held = []
        yield from _register(session, channel)
        rows = yield ReplayQuery(subtopic, *window)
        if not isinstance(rows, list):
            session.leave(channel)
            channel.held = None
            yield from refuse(reasons.REPLAY_FAILED, "replay")
            return
        replayed = rows
    snapshot: PresenceSnapshot | None = None
    # As upstream: past the server's presence rate the join succeeds and the channel is then
    # shut down, instead of getting its presence state.
    wants_state = request.presence_enabled and channel.receives_presence
    overloaded = wants_state and not context.presence_events.allow()
    if wants_state and not overloaded:
        # The presence state comes with the number of the last event it holds: the diffs held
        # meanwhile that it already holds are dropped, the later ones sent after it.
        if channel.held is None:
            channel.held = []
        yield from _register(session, channel)
        answer = yield PresenceSync(subtopic, request.private)
        if not isinstance(answer, PresenceSnapshot):
            session.abandon_join(channel)
            yield from refuse(reasons.DATABASE_UNAVAILABLE, "database_unavailable")
            return
        snapshot = answer
    if session.closing:
        return
    yield from _register(session, channel)
    if session.closing:
        return
    bindings = [{**binding, "id": binding_id(binding)} for binding in request.postgres_changes]
    session.reply(msg, "ok", {"postgres_changes": bindings})
    if bindings:
        session.system(channel, "postgres_changes", "ok", reasons.POSTGRES_CHANGES_NOT_SERVED)
    if replayed:
        channel.replayed = {row.id for row in replayed}
    for row in replayed:
        frame = row_frame(session.vsn, row, replayed=True)
        if frame is not None:
            session.send(frame)
    # As upstream: the replayed messages first, then the presence state.
    if snapshot is not None:
        session.push(channel, "presence_state", snapshot.state)
    session.release(channel, snapshot)
    if overloaded:
        context.refused("presence_events_per_second")
        session.shutdown_channel(channel, reasons.TOO_MANY_PRESENCE_MESSAGES)
        return
    if request.replication_ready:
        channel.ready_deadline = session.now + REPLICATION_READY_TIMEOUT_S
        session.announce_ready(channel)


def _register(session: Socket, channel: Channel) -> Rule:
    """Register the channel for live messages; if the reader paused because no channel was
    joined, have it resume first: it reads from a fresh snapshot, taken after the channel is
    registered and before anything is replayed, loaded or answered."""
    session.register(channel)
    if session.context.stream_paused():
        # A failure needs no answer here: the reader is then down, which the channel hears of
        # as for any outage (replication_ready), and it reads from a fresh snapshot once back.
        yield StreamResume()
