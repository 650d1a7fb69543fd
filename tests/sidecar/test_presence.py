"""Presence with plain values: refs, metas, visibility in a snapshot, a topic's state, the limit,
and a session's presence rules (requests out, answers in, frames queued)."""

from __future__ import annotations

from typing import Any

from pg_realtime import reasons
from pg_realtime.channels import Channel
from pg_realtime.limits import RateWindow
from pg_realtime.phoenix import Message
from pg_realtime.presence import (
    ClientPresenceLimit,
    PresenceSnapshot,
    TopicPresence,
    group,
    meta,
    new_ref,
    presence_key,
    visible_in,
)
from pg_realtime.queries import PresenceSync, PresenceTrack, ReadCheck, Unavailable, WriteCheck

from .test_session import NOW, World, frames, join, reply, token


def test_refs_are_unique_and_url_safe() -> None:
    refs = [new_ref() for _ in range(2000)]
    assert len(set(refs)) == len(refs)
    assert all(len(ref) == 16 and ref.replace("-", "").replace("_", "").isalnum() for ref in refs)


def test_keys_as_upstream_reads_them() -> None:
    assert presence_key("user-1") == "user-1"
    assert presence_key(7) == "7"
    fresh = {presence_key(""), presence_key(None)}
    assert len(fresh) == 2 and all(len(key) == 36 for key in fresh)


def test_a_meta_carries_its_ref_and_after_an_update_the_one_it_replaces() -> None:
    assert meta({"a": 1}, "r1") == {"a": 1, "phx_ref": "r1"}
    assert meta({"a": 2, "phx_ref": "forged", "phx_ref_prev": "x"}, "r2", "r1") == {
        "a": 2,
        "phx_ref": "r2",
        "phx_ref_prev": "r1",
    }
    assert group([("k", {"phx_ref": "1"}), ("k", {"phx_ref": "2"}), ("j", {"phx_ref": "3"})]) == {
        "k": {"metas": [{"phx_ref": "1"}, {"phx_ref": "2"}]},
        "j": {"metas": [{"phx_ref": "3"}]},
    }


def test_visibility_in_a_snapshot_as_postgres_decides_it() -> None:
    snapshot = "100:105:101,103"
    assert visible_in(snapshot, 99)
    assert visible_in(snapshot, 100)
    assert not visible_in(snapshot, 101)
    assert visible_in(snapshot, 102)
    assert not visible_in(snapshot, 103)
    assert not visible_in(snapshot, 105)
    assert not visible_in("7:7:", 7)


def diff(
    joins: dict[str, list[str]] | None = None, leaves: dict[str, list[str]] | None = None
) -> dict[str, Any]:
    return {
        "joins": {k: {"metas": [{"phx_ref": r} for r in refs]} for k, refs in (joins or {}).items()},
        "leaves": {k: {"metas": [{"phx_ref": r} for r in refs]} for k, refs in (leaves or {}).items()},
    }


def test_a_load_applies_only_the_events_its_snapshot_does_not_hold() -> None:
    topic = TopicPresence(pending=[])
    # Read while loading: one committed before the snapshot (in it), one after, one in progress then.
    topic.pending = [(90, diff({"a": ["r1"]})), (120, diff({"b": ["r2"]})), (101, diff({"c": ["r3"]}))]
    topic.load("100:110:101", [("r1", "a", {"phx_ref": "r1"})])
    assert topic.pending is None
    assert topic.state() == {
        "a": {"metas": [{"phx_ref": "r1"}]},
        "b": {"metas": [{"phx_ref": "r2"}]},
        "c": {"metas": [{"phx_ref": "r3"}]},
    }
    # An update is one diff: joins first, then leaves.
    topic.apply(diff({"a": ["r4"]}, {"a": ["r1"]}))
    assert topic.state()["a"] == {"metas": [{"phx_ref": "r4"}]}
    topic.apply(diff(leaves={"b": ["r2"], "c": ["r3"]}))
    assert topic.state() == {"a": {"metas": [{"phx_ref": "r4"}]}}
    assert topic.count() == 1


def test_the_client_limit_is_upstreams_fixed_window() -> None:
    limit = ClientPresenceLimit(5, 30.0)
    assert all(limit.allow(NOW + i) for i in range(5))
    assert not limit.allow(NOW + 10)
    assert not limit.allow(NOW + 30)  # the window ends 30 s after its first push
    assert limit.allow(NOW + 30.5)


# -- a session's presence rules ---------------------------------------------------------------------
class Sink:
    def __init__(self) -> None:
        self.untracked: list[Channel] = []

    def untrack(self, channel: Channel) -> None:
        self.untracked.append(channel)


def presence_world() -> tuple[World, Sink]:
    world = World()
    sink = Sink()
    object.__setattr__(world.context, "presence", sink)
    return world, sink


def pending_of(session: Any) -> Any:
    return session.pending


def presence_push(session: Any, payload: Any, ref: str = "5") -> None:
    session.receive(Message("1", ref, "realtime:room", "presence", payload), 0, NOW)


def test_a_join_with_presence_waits_for_the_state_and_sends_it_after_the_reply() -> None:
    world, _ = presence_world()
    session = world.session()
    join(session, "room", {"presence": {"enabled": True, "key": "me"}})
    assert session.pending == PresenceSync("room", False)
    channel = session.channels["realtime:room"]
    # Diffs that arrive meanwhile are held with their event numbers.
    world.registry.presence_out("room", False, lambda vsn: '{"held":1}', 1)
    world.registry.presence_out("room", False, lambda vsn: '{"held":2}', 2)
    assert channel.held is not None and len(channel.held) == 2
    session.answer(PresenceSnapshot({"other": {"metas": [{"phx_ref": "x"}]}}, 1), NOW)
    queued = frames(session)
    assert reply(queued[0]) == ("ok", {"postgres_changes": []})
    assert queued[1]["event"] == "presence_state"
    assert queued[1]["payload"] == {"other": {"metas": [{"phx_ref": "x"}]}}
    assert queued[2:] == [{"held": 2}]  # event 1 is in the state already
    assert channel.held is None


def test_a_state_that_cannot_be_read_refuses_the_join() -> None:
    world, _ = presence_world()
    session = world.session()
    join(session, "room", {"presence": {"enabled": True}})
    session.answer(Unavailable("down"), NOW)
    [refusal] = frames(session)
    assert reply(refusal) == ("error", {"reason": reasons.DATABASE_UNAVAILABLE})
    assert world.registry.count("room", False) == 0


def test_track_update_noop_untrack_and_leave() -> None:
    world, sink = presence_world()
    session = world.session()
    join(session, "room", {"presence": {"enabled": True, "key": "me"}})
    session.answer(PresenceSnapshot({}, 0), NOW)
    frames(session)
    channel = session.channels["realtime:room"]
    presence_push(session, {"type": "presence", "event": "track", "payload": {"a": 1}})
    assert session.pending == PresenceTrack(channel, "me", {"a": 1})
    session.answer(True, NOW)
    assert [reply(f) for f in frames(session)] == [("ok", {})]
    # The same payload again asks nothing.
    presence_push(session, {"event": "track", "payload": {"a": 1}})
    assert session.pending is None
    assert [reply(f) for f in frames(session)] == [("ok", {})]
    presence_push(session, {"event": "untrack"})
    assert sink.untracked == [channel]
    assert [reply(f) for f in frames(session)] == [("ok", {})]
    session.receive(Message("1", "9", "realtime:room", "phx_leave", {}), 0, NOW)
    assert sink.untracked == [channel, channel]


def test_a_failed_store_is_an_error_reply_and_no_presence() -> None:
    world, sink = presence_world()
    session = world.session()
    join(session, "room", {"presence": {"enabled": True}})
    session.answer(PresenceSnapshot({}, 0), NOW)
    frames(session)
    presence_push(session, {"event": "track", "payload": {}})
    session.answer(Unavailable("down"), NOW)
    assert [reply(f) for f in frames(session)] == [("error", {})]
    # Not tracked: what the failed batch may have stored is removed.
    assert sink.untracked == [session.channels["realtime:room"]]


def test_a_private_join_reads_both_and_a_track_checks_presence_write() -> None:
    world, _ = presence_world()
    session = world.session()
    join(
        session,
        "room",
        {"private": True, "presence": {"enabled": True}},
        access_token=token("authenticated"),
    )
    assert isinstance(session.pending, ReadCheck) and session.pending.extension == "broadcast"
    session.answer(False, NOW)
    assert pending_of(session) == ReadCheck("room", pending_of(session).claims, "presence")
    session.answer(True, NOW)
    assert pending_of(session) == PresenceSync("room", True)
    session.answer(PresenceSnapshot({}, 0), NOW)
    channel = session.channels["realtime:room"]
    assert not channel.receives_broadcasts and channel.receives_presence
    frames(session)
    presence_push(session, {"event": "track", "payload": {"t": 1}})
    assert isinstance(session.pending, WriteCheck) and session.pending.extension == "presence"
    session.answer(False, NOW)
    assert [reply(f) for f in frames(session)] == [("error", {})]


def test_limits_close_the_channel_with_upstreams_texts() -> None:
    world, _ = presence_world()
    session = world.session()
    join(session, "room", {"presence": {"enabled": True}})
    session.answer(PresenceSnapshot({}, 0), NOW)
    frames(session)
    big = {"blob": "x" * 10}
    object.__setattr__(world.context, "limits", type(world.context.limits)(max_payload_bytes=8))
    presence_push(session, {"event": "track", "payload": big})
    system, close = frames(session)
    assert system["payload"]["message"] == reasons.TRACK_SIZE_EXCEEDED
    assert close["event"] == "phx_close"
    assert "realtime:room" not in session.channels


def test_past_the_servers_presence_rate_a_join_succeeds_and_its_channel_is_shut_down() -> None:
    world, _ = presence_world()
    object.__setattr__(world.context, "presence_events", RateWindow(1))
    first, second = world.session(), world.session()
    join(first, "room", {"presence": {"enabled": True}})
    first.answer(PresenceSnapshot({}, 0), NOW)
    join(second, "room", {"presence": {"enabled": True}})
    assert second.pending is None
    ok, system, close = frames(second)
    assert reply(ok)[0] == "ok"
    assert system["event"] == "system" and system["payload"]["message"] == reasons.TOO_MANY_PRESENCE_MESSAGES
    assert close["event"] == "phx_close"
