"""The channel rules of one socket, tested with plain values: frames in, requests out, answers in.

No server, no socket, no database: a ``Session`` is built on a registry and a verifier, fed
decoded messages, and its requests are answered by the test. Time is given explicitly.
"""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pg_realtime import reasons
from pg_realtime.auth import Verifier, sign
from pg_realtime.broadcast import Broadcaster
from pg_realtime.channels import Registry
from pg_realtime.limits import RateWindow, SessionLimits
from pg_realtime.metrics import Metrics
from pg_realtime.phoenix import Message, PayloadEncoding, UserBroadcast, Vsn
from pg_realtime.queries import PolicyFailed, ReadCheck, ReplayQuery, Unavailable, WriteCheck
from pg_realtime.rows import Row
from pg_realtime.session import Session, SessionContext

SECRET = "session-test-secret-with-plenty-of-entropy!"
NOW = 1_800_000_000.0


def token(role: str = "anon", exp: float = NOW + 3600, **claims: Any) -> str:
    return sign({"role": role, "exp": exp, **claims}, SECRET)


class World:
    """A registry shared by sessions, as a server's sessions share one."""

    def __init__(self, limits: SessionLimits | None = None, joins: int = 0, events: int = 0) -> None:
        self.registry = Registry()
        self.metrics = Metrics()
        self.refusals: list[str] = []
        self.slow: list[bool] = []
        self.context = SessionContext(
            registry=self.registry,
            verifier=Verifier.from_config(SECRET, None),
            relay=Broadcaster(self.registry, self.metrics),
            limits=limits or SessionLimits(),
            joins=RateWindow(joins),
            events=RateWindow(events),
            refused=self.refusals.append,
            slow_consumer=lambda: self.slow.append(True),
        )

    def session(self, vsn: Vsn = Vsn.V1, socket_token: str | None = None) -> Session:
        raw = socket_token or token()
        return Session(self.context, vsn, raw, self.context.verifier.verify(raw, NOW), now=NOW)


def frames(session: Session) -> list[dict[str, Any]]:
    """What the session queued, as V1 JSON objects."""
    return [orjson.loads(frame) for frame in session.outbox.take_all()]


def join(session: Session, subtopic: str, config: dict[str, Any] | None = None, **payload: Any) -> None:
    session.receive(
        Message("1", "1", f"realtime:{subtopic}", "phx_join", {"config": config or {}, **payload}), 0, NOW
    )


def reply(frame: dict[str, Any]) -> tuple[str, Any]:
    assert frame["event"] == "phx_reply", frame
    return frame["payload"]["status"], frame["payload"]["response"]


def broadcast(session: Session, subtopic: str, event: str = "e", ref: str = "2", **data: Any) -> None:
    payload = {"type": "broadcast", "event": event, "payload": data}
    session.receive(
        Message("1", ref, f"realtime:{subtopic}", "broadcast", payload), len(orjson.dumps(payload)), NOW
    )


# -- joins ------------------------------------------------------------------------------------------
def test_heartbeat_is_answered() -> None:
    session = World().session()
    session.receive(Message(None, "7", "phoenix", "heartbeat", {}), 0, NOW)
    [frame] = frames(session)
    assert frame["topic"] == "phoenix" and frame["ref"] == "7" and reply(frame) == ("ok", {})


def test_public_join_is_ok_and_registers_the_channel() -> None:
    world = World()
    session = world.session()
    join(session, "room")
    [frame] = frames(session)
    assert reply(frame) == ("ok", {"postgres_changes": []})
    assert session.pending is None
    assert list(session.channels) == ["realtime:room"]
    assert world.registry.channel_count == 1


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("realtime:", {}, reasons.TOPIC_NAME_REQUIRED),
        ("room", {}, reasons.UNMATCHED_TOPIC),
        (
            "realtime:room",
            {"access_token": "not-a-jwt"},
            "MalformedJWT: The token provided is not a valid JWT",
        ),
    ],
)
def test_refused_joins_say_why_and_register_nothing(topic: str, payload: dict[str, Any], reason: str) -> None:
    world = World()
    session = world.session()
    session.receive(Message("1", "1", topic, "phx_join", payload), 0, NOW)
    [frame] = frames(session)
    assert reply(frame) == ("error", {"reason": reason})
    assert not session.channels and world.registry.channel_count == 0


def test_the_channel_limit_refuses_one_more() -> None:
    world = World(SessionLimits(max_channels=2))
    session = world.session()
    for name in ("a", "b", "c"):
        join(session, name)
    replies = [reply(frame) for frame in frames(session)]
    assert replies[:2] == [("ok", {"postgres_changes": []})] * 2
    assert replies[2] == ("error", {"reason": reasons.TOO_MANY_CHANNELS})
    assert world.refusals == ["channels_per_client"]


def test_joining_too_fast_refuses_and_closes_the_socket() -> None:
    world = World(joins=1)
    session = world.session()
    join(session, "a")
    join(session, "b")
    replies = [reply(frame) for frame in frames(session)]
    assert replies == [("ok", {"postgres_changes": []}), ("error", {"reason": reasons.TOO_MANY_JOINS})]
    assert session.closing and session.close_code == 1008
    assert not session.channels and world.registry.channel_count == 0


def test_a_second_join_of_a_topic_replaces_the_first() -> None:
    world = World()
    session = world.session()
    join(session, "room")
    first = session.channels["realtime:room"]
    session.receive(Message("5", "5", "realtime:room", "phx_join", {"config": {}}), 0, NOW)
    close, ok = frames(session)[1:]
    assert close["event"] == "phx_close" and close["ref"] == "1"
    assert reply(ok)[0] == "ok"
    assert session.channels["realtime:room"] is not first and world.registry.channel_count == 1


def test_a_private_join_asks_for_a_read_check_with_the_join_token() -> None:
    world = World()
    session = world.session()
    user = token("authenticated", sub="u1")
    join(session, "room-1", {"private": True}, access_token=user)
    assert frames(session) == []
    request = session.pending
    assert isinstance(request, ReadCheck)
    assert request.subtopic == "room-1" and request.claims["sub"] == "u1"
    with pytest.raises(RuntimeError):
        session.receive(Message(None, "9", "phoenix", "heartbeat", {}), 0, NOW)
    session.answer(True, NOW)
    [frame] = frames(session)
    assert reply(frame) == ("ok", {"postgres_changes": []})
    channel = session.channels["realtime:room-1"]
    assert channel.private and channel.can_read is True


@pytest.mark.parametrize(
    ("answer", "reason", "metric"),
    [
        (False, reasons.unauthorized_read("room-1"), "unauthorized"),
        (Unavailable("connection refused"), reasons.DATABASE_UNAVAILABLE, "database_unavailable"),
        (PolicyFailed("division by zero"), reasons.unauthorized_read("room-1"), "rls_error"),
    ],
)
def test_a_private_join_is_refused_by_the_answer(answer: Any, reason: str, metric: str) -> None:
    world = World()
    session = world.session()
    join(session, "room-1", {"private": True})
    session.answer(answer, NOW)
    [frame] = frames(session)
    assert reply(frame) == ("error", {"reason": reason})
    assert world.refusals == [metric] and not session.channels


# -- replay -----------------------------------------------------------------------------------------
def stored(n: int) -> Row:
    return Row(f"id-{n}", "room-1", "e", True, orjson.dumps({"n": n}).decode(), None, NOW - 10)


def test_replay_follows_the_read_check_and_sends_rows_after_the_reply() -> None:
    session = World().session()
    join(session, "room-1", {"private": True, "broadcast": {"replay": {"since": 1000, "limit": 500}}})
    session.answer(True, NOW)
    assert session.pending == ReplayQuery("room-1", 1000, 25)  # the hard limit, whatever is asked
    session.answer([stored(1), stored(2)], NOW)
    ok, first, second = frames(session)
    assert reply(ok)[0] == "ok"
    assert first["payload"] == {
        "event": "e",
        "payload": {"n": 1},
        "type": "broadcast",
        "meta": {"id": "id-1", "replayed": True},
    }
    assert second["payload"]["meta"] == {"id": "id-2", "replayed": True}


@pytest.mark.parametrize(
    ("config", "answers", "reason"),
    [
        ({"broadcast": {"replay": {"since": 1}}}, [], reasons.REPLAY_PUBLIC),
        ({"private": True, "broadcast": {"replay": {"since": "yesterday"}}}, [True], reasons.REPLAY_INVALID),
        (
            {"private": True, "broadcast": {"replay": {"since": 1}}},
            [True, Unavailable("x")],
            reasons.REPLAY_FAILED,
        ),
    ],
)
def test_replay_refusals(config: dict[str, Any], answers: list[Any], reason: str) -> None:
    session = World().session()
    join(session, "room-1", config)
    for answer in answers:
        session.answer(answer, NOW)
    [frame] = frames(session)
    assert reply(frame) == ("error", {"reason": reason})
    assert not session.channels


# -- broadcasts -------------------------------------------------------------------------------------
def test_self_and_ack() -> None:
    world = World()
    sender, other = world.session(), world.session()
    join(sender, "room", {"broadcast": {"self": False, "ack": True}})
    join(other, "room")
    frames(sender), frames(other)
    broadcast(sender, "room", n=1)
    assert [reply(f) for f in frames(sender)] == [("ok", {})]  # the ack, not its own message
    [received] = frames(other)
    assert received["event"] == "broadcast"
    assert received["payload"] == {"type": "broadcast", "event": "e", "payload": {"n": 1}}

    join(sender, "room", {"broadcast": {"self": True}})
    frames(sender)
    broadcast(sender, "room", n=2)
    [echo] = frames(sender)  # no ack asked this time
    assert echo["event"] == "broadcast" and echo["payload"]["payload"] == {"n": 2}


def test_private_broadcast_checks_write_once_and_drops_a_denied_one_silently() -> None:
    world = World()
    sender, reader = world.session(), world.session()
    for session in (sender, reader):
        join(session, "room-1", {"private": True, "broadcast": {"ack": True}})
        session.answer(True, NOW)
        frames(session)
    broadcast(sender, "room-1", n=1)
    assert session.pending is None and sender.pending == WriteCheck("room-1", sender.claims)
    sender.answer(True, NOW)
    assert [reply(f) for f in frames(sender)] == [("ok", {})]
    assert [f["payload"]["payload"] for f in frames(reader)] == [{"n": 1}]
    broadcast(sender, "room-1", n=2)
    assert sender.pending is None  # the answer is kept for the channel

    denied = world.session()
    join(denied, "room-1", {"private": True, "broadcast": {"ack": True}})
    denied.answer(True, NOW)
    frames(denied), frames(reader)
    broadcast(denied, "room-1", n=3)
    denied.answer(False, NOW)
    assert frames(denied) == [] and [f["payload"]["payload"] for f in frames(reader)] == []
    assert "unauthorized_write" in world.refusals


def test_a_private_broadcast_does_not_reach_public_subscribers() -> None:
    world = World()
    sender, public = world.session(), world.session()
    join(sender, "room-1", {"private": True, "broadcast": {"self": True}})
    sender.answer(True, NOW)
    join(public, "room-1")
    frames(sender), frames(public)
    broadcast(sender, "room-1", n=1)
    sender.answer(True, NOW)
    assert len(frames(sender)) == 1 and frames(public) == []


def test_an_oversized_broadcast_is_refused_with_ack() -> None:
    world = World(SessionLimits(max_payload_bytes=10))
    session = world.session()
    join(session, "room", {"broadcast": {"ack": True}})
    frames(session)
    broadcast(session, "room", text="x" * 20)
    [frame] = frames(session)
    assert reply(frame) == ("error", reasons.PAYLOAD_SIZE_EXCEEDED)


def test_a_binary_broadcast_is_relayed_to_v2_sockets() -> None:
    world = World()
    sender, receiver = world.session(Vsn.V2), world.session(Vsn.V2)
    for session in (sender, receiver):
        session.receive(Message("1", "1", "realtime:room", "phx_join", {"config": {}}), 0, NOW)
        session.outbox.take_all()
    message = UserBroadcast("blob", b"\x00\x01", PayloadEncoding.BINARY)
    sender.receive(Message("1", None, "realtime:room", "broadcast", message), 2, NOW)
    [frame] = receiver.outbox.take_all()
    assert isinstance(frame, bytes) and frame[0] == 4 and frame.endswith(b"blob\x00\x01")


def test_too_many_events_shut_the_channel_down() -> None:
    world = World(SessionLimits(max_events_per_second=1))
    session = world.session()
    join(session, "room")
    frames(session)
    broadcast(session, "room", ref="2")
    broadcast(session, "room", ref="3")
    system, close = frames(session)
    assert system["event"] == "system" and system["payload"]["message"] == reasons.TOO_MANY_MESSAGES
    assert close["event"] == "phx_close" and not session.channels


# -- tokens -----------------------------------------------------------------------------------------
def test_token_expiry_shuts_the_channel_down_at_its_deadline() -> None:
    world = World()
    session = world.session()
    join(session, "room", access_token=token(exp=NOW + 30))
    frames(session)
    assert session.next_deadline() == NOW + 30
    session.tick(NOW + 29)
    assert frames(session) == [] and session.channels
    session.tick(NOW + 32)
    system, close = frames(session)
    assert system["payload"] == {
        "extension": "system",
        "status": "error",
        "message": "Token has expired 2 seconds ago",
        "channel": "room",
    }
    assert close["event"] == "phx_close" and not session.channels
    assert session.next_deadline() == NOW + 3600  # no channel left: the socket token's own expiry
    assert world.refusals == ["token_expired"]


def test_a_refreshed_token_moves_the_deadline() -> None:
    session = World().session()
    join(session, "room", access_token=token(exp=NOW + 30))
    later = token(exp=NOW + 600)
    session.receive(Message("1", "3", "realtime:room", "access_token", {"access_token": later}), 0, NOW)
    assert frames(session)[1:] == []  # a refresh is never answered
    assert session.channels["realtime:room"].expires_at == NOW + 600
    assert session.next_deadline() == NOW + 300  # the periodic check comes first now
    assert session.channels["realtime:room"].token == later


def test_an_invalid_refreshed_token_shuts_the_channel_down() -> None:
    session = World().session()
    join(session, "room")
    frames(session)
    session.receive(Message("1", "3", "realtime:room", "access_token", {"access_token": "garbage"}), 0, NOW)
    system, close = frames(session)
    assert system["payload"]["message"] == "The token provided is not a valid JWT"
    assert close["event"] == "phx_close" and not session.channels


def test_a_private_refresh_rechecks_read_and_revokes() -> None:
    session = World().session()
    join(session, "room-1", {"private": True})
    session.answer(True, NOW)
    frames(session)
    session.receive(
        Message("1", "3", "realtime:room-1", "access_token", {"access_token": token("anon", exp=NOW + 60)}),
        0,
        NOW,
    )
    assert isinstance(session.pending, ReadCheck) and session.pending.claims["role"] == "anon"
    session.answer(False, NOW)
    system, close = frames(session)
    assert system["payload"]["message"] == reasons.no_read_permission("room-1")
    assert close["event"] == "phx_close" and not session.channels


def test_a_private_refresh_keeps_the_old_token_while_the_database_is_away() -> None:
    """Fail closed: new claims are not taken on trust; the old ones keep their expiry."""
    session = World().session()
    old = token(exp=NOW + 30)
    join(session, "room-1", {"private": True}, access_token=old)
    session.answer(True, NOW)
    frames(session)
    fresh = token(exp=NOW + 600)
    session.receive(Message("1", "3", "realtime:room-1", "access_token", {"access_token": fresh}), 0, NOW)
    session.answer(Unavailable("connection refused"), NOW)
    assert frames(session) == []
    assert session.channels["realtime:room-1"].token == old
    assert session.next_deadline() == NOW + 30


# -- leaving and closing ----------------------------------------------------------------------------
def test_leave_replies_closes_and_unregisters() -> None:
    world = World()
    session = world.session()
    join(session, "room")
    session.receive(Message("1", "4", "realtime:room", "phx_leave", {}), 0, NOW)
    ok, close = frames(session)[1:]
    assert reply(ok) == ("ok", {}) and close["event"] == "phx_close"
    assert not session.channels and world.registry.channel_count == 0


def test_frames_for_an_unjoined_topic_get_unmatched_topic() -> None:
    session = World().session()
    broadcast(session, "room")
    [frame] = frames(session)
    assert reply(frame) == ("error", {"reason": reasons.UNMATCHED_TOPIC})


def test_a_socket_that_stops_reading_is_closed_as_a_slow_consumer() -> None:
    world = World(SessionLimits(outbox_limit_bytes=300))
    reader, writer = world.session(), world.session()
    join(reader, "room")
    join(writer, "room")
    for n in range(20):
        broadcast(writer, "room", n=n, padding="x" * 20)
    assert reader.closing and reader.close_code == 1008 and reader.slow_consumer
    assert world.slow == [True] and not reader.channels
    assert world.registry.channel_count == 1  # the writer's channel stays


def test_begin_close_leaves_every_channel() -> None:
    world = World()
    session = world.session()
    for name in ("a", "b"):
        join(session, name)
    session.begin_close(1001)
    assert session.closing and session.close_code == 1001
    assert not session.channels and world.registry.channel_count == 0
    broadcast(World().session(), "a")  # another world: nothing reaches a closed session
    assert session.outbox.closed


# -- wire parity ------------------------------------------------------------------------------------
def live_row(world: World, n: int) -> Row:
    row = stored(n)
    world.context.relay.rows([row])  # type: ignore[attr-defined]  # the Broadcaster's database path
    return row


def test_live_copies_of_replayed_rows_are_sent_once_and_nothing_between_is_lost() -> None:
    world = World()
    session = world.session()
    join(session, "room-1", {"private": True, "broadcast": {"replay": {"since": 0}}})
    session.answer(True, NOW)
    assert isinstance(session.pending, ReplayQuery)
    # While the replay query runs, the reader delivers row 2 (also in the replay) and row 3 (not).
    live_row(world, 2)
    live_row(world, 3)
    assert frames(session) == []  # held back until the join is answered
    session.answer([stored(1), stored(2)], NOW)
    ok, *rest = frames(session)
    assert reply(ok)[0] == "ok"
    assert [(f["payload"]["payload"]["n"], f["payload"]["meta"].get("replayed")) for f in rest] == [
        (1, True),
        (2, True),
        (3, None),
    ]
    live_row(world, 2)  # a late live copy of a replayed row
    live_row(world, 4)
    assert [f["payload"]["payload"]["n"] for f in frames(session)] == [4]


def test_a_failed_replay_leaves_no_channel_behind() -> None:
    world = World()
    session = world.session()
    join(session, "room-1", {"private": True, "broadcast": {"replay": {"since": 0}}})
    session.answer(True, NOW)
    live_row(world, 1)
    session.answer(Unavailable("gone"), NOW)
    [frame] = frames(session)
    assert reply(frame) == ("error", {"reason": reasons.REPLAY_FAILED})
    assert not session.channels and world.registry.channel_count == 0


def test_postgres_changes_bindings_are_joined_with_ids_and_announced_once() -> None:
    session = World().session()
    binding = {"event": "*", "schema": "public", "table": "t"}
    join(session, "room", {"postgres_changes": [binding, None]})
    ok, system = frames(session)
    status, response = reply(ok)
    assert status == "ok"
    [answered] = response["postgres_changes"]
    assert {k: v for k, v in answered.items() if k != "id"} == binding and isinstance(answered["id"], int)
    assert system["event"] == "system" and system["payload"]["status"] == "ok"
    assert system["payload"]["message"] == reasons.POSTGRES_CHANGES_NOT_SERVED
    assert session.channels["realtime:room"].receives_broadcasts


def test_replication_ready_waits_for_the_reader_then_times_out() -> None:
    live = {"now": False}
    world = World()
    context = world.context
    object.__setattr__(context, "stream_live", lambda: live["now"])
    session = world.session()
    join(session, "a", {"broadcast": {"replication_ready": True}})
    join(session, "b", {"broadcast": {"replication_ready": True}})
    assert [reply(f)[0] for f in frames(session)] == ["ok", "ok"]
    assert session.next_deadline() == NOW + 0.5  # polled while the reader is not live
    live["now"] = True
    session.receive(Message(None, "h", "phoenix", "heartbeat", {}), 0, NOW)
    session.tick(NOW + 1)
    systems = [f for f in frames(session) if f["event"] == "system"]
    assert [s["payload"]["message"] for s in systems] == ["Replication connection established"] * 2
    live["now"] = False
    join(session, "c", {"broadcast": {"replication_ready": True}})
    frames(session)
    session.tick(NOW + 61)
    system, close = frames(session)
    assert system["payload"]["message"] == "Replication connection was not established in time"
    assert close["event"] == "phx_close" and "realtime:c" not in session.channels


def test_unmatched_topic_replies_carry_no_join_ref() -> None:
    session = World().session(Vsn.V2)
    session.receive(Message("7", "8", "realtime:nowhere", "broadcast", {"type": "broadcast"}), 0, NOW)
    [frame] = session.outbox.take_all()
    assert orjson.loads(frame)[:2] == [None, "8"]


def test_joined_channels_are_checked_again_every_five_minutes() -> None:
    world = World()
    session = world.session()
    join(session, "room-1", {"private": True})
    session.answer(True, NOW)
    join(session, "lobby")
    frames(session)
    assert session.next_deadline() == NOW + 300
    session.tick(NOW + 300)
    assert isinstance(session.pending, ReadCheck) and session.pending.subtopic == "room-1"
    session.answer(True, NOW + 300)
    session.tick(NOW + 300)  # one channel per tick: now the public one, which needs no request
    assert session.pending is None
    assert frames(session) == [] and session.next_deadline() == NOW + 600
    session.tick(NOW + 600)
    session.answer(False, NOW + 600)
    system, close = frames(session)
    assert system["payload"]["message"] == reasons.no_read_permission("room-1")
    assert close["event"] == "phx_close" and list(session.channels) == ["realtime:lobby"]
