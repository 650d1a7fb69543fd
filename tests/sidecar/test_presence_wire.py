"""Presence on the wire, frame by frame, on one sidecar: upstream's replies, state and diffs."""

from __future__ import annotations

from typing import Any

import pytest
from pg_realtime import reasons

from tests.harness.database import scalar

from .wire import RawSocket, reply_of

pytestmark = pytest.mark.asyncio

PRESENCE = {
    "broadcast": {"self": False, "ack": False},
    "presence": {"enabled": True, "key": "k1"},
    "private": False,
}


def presence_config(key: str = "", enabled: bool = True, private: bool = False) -> dict[str, Any]:
    return {
        "broadcast": {"self": False, "ack": False},
        "presence": {"enabled": enabled, "key": key},
        "private": private,
    }


async def push(ws: RawSocket, subtopic: str, payload: Any, join_ref: str = "1") -> dict[str, Any]:
    ref = ws.next_ref()
    await ws.send(f"realtime:{subtopic}", "presence", payload, ref=ref, join_ref=join_ref)
    frame = await ws.recv_until(lambda f: isinstance(f, list) and f[3] == "phx_reply" and f[1] == ref)
    return reply_of(frame)


async def next_event(ws: RawSocket, event: str, timeout: float = 5.0) -> list[Any]:
    frame = await ws.recv_until(lambda f: isinstance(f, list) and f[3] == event, timeout=timeout)
    assert isinstance(frame, list)
    return frame


def refs(state: dict[str, Any]) -> dict[str, list[str]]:
    return {key: sorted(meta["phx_ref"] for meta in entry["metas"]) for key, entry in state.items()}


async def test_track_update_untrack_and_the_state_of_a_later_join(live_server, db):
    async with (
        await RawSocket.connect(live_server.url, live_server.token()) as alice,
        await RawSocket.connect(live_server.url, live_server.token()) as bob,
    ):
        assert reply_of(await alice.join("room", presence_config("alice")))["status"] == "ok"
        state = await next_event(alice, "presence_state")
        assert state[0] == "1" and state[1] is None and state[4] == {}

        assert await push(alice, "room", {"type": "presence", "event": "track", "payload": {"at": 1}}) == {
            "status": "ok",
            "response": {},
        }
        diff = (await next_event(alice, "presence_diff"))[4]
        assert diff["leaves"] == {}
        [meta] = diff["joins"]["alice"]["metas"]
        assert meta["at"] == 1 and isinstance(meta["phx_ref"], str) and "phx_ref_prev" not in meta
        first_ref = meta["phx_ref"]

        # A later join gets the state from the database, and the tracker's own join is in it.
        assert reply_of(await bob.join("room", presence_config("bob")))["status"] == "ok"
        state = (await next_event(bob, "presence_state"))[4]
        assert state == {"alice": {"metas": [{"at": 1, "phx_ref": first_ref}]}}

        # The same payload again changes nothing; another is an update: one diff, the new meta
        # (with phx_ref_prev) in joins and the old one in leaves.
        assert (await push(alice, "room", {"event": "track", "payload": {"at": 1}}))["status"] == "ok"
        assert (await push(alice, "room", {"event": "TRACK", "payload": {"at": 2}}))["status"] == "ok"
        for ws in (alice, bob):
            diff = (await next_event(ws, "presence_diff"))[4]
            [new] = diff["joins"]["alice"]["metas"]
            assert new["at"] == 2 and new["phx_ref_prev"] == first_ref and new["phx_ref"] != first_ref
            assert diff["leaves"] == {"alice": {"metas": [{"at": 1, "phx_ref": first_ref}]}}
        assert scalar(db, "select count(*) from realtime.presences") == 1

        assert await push(alice, "room", {"event": "untrack"}) == {"status": "ok", "response": {}}
        for ws in (alice, bob):
            diff = (await next_event(ws, "presence_diff"))[4]
            assert diff["joins"] == {} and list(diff["leaves"]) == ["alice"]
        assert scalar(db, "select count(*) from realtime.presences") == 0
        # Presence events stay out of realtime.messages.
        assert scalar(db, "select count(*) from realtime.messages") == 0


async def test_leaving_and_closing_remove_the_presence(live_server):
    async with await RawSocket.connect(live_server.url, live_server.token()) as watcher:
        await watcher.join("room", presence_config("w"))
        await next_event(watcher, "presence_state")
        for how in ("leave", "close"):
            ws = await RawSocket.connect(live_server.url, live_server.token())
            await ws.join("room", presence_config(how))
            await next_event(ws, "presence_state")
            assert (await push(ws, "room", {"event": "track", "payload": {"how": how}}))["status"] == "ok"
            joined = (await next_event(watcher, "presence_diff"))[4]
            assert list(joined["joins"]) == [how]
            if how == "leave":
                await ws.send("realtime:room", "phx_leave", {}, ref="9", join_ref="1")
                await ws.close()
            else:
                await ws.close()
            left = (await next_event(watcher, "presence_diff"))[4]
            assert left["joins"] == {} and list(left["leaves"]) == [how]


async def test_presence_pushes_as_upstream_answers_them(live_server):
    async with await RawSocket.connect(live_server.url, live_server.token()) as ws:
        await ws.join("room", presence_config("k"))
        await next_event(ws, "presence_state")
        # No event: nothing to do, ok. A payload that is not a map: upstream's text.
        assert await push(ws, "room", {"payload": {}}) == {"status": "ok", "response": {}}
        assert await push(ws, "room", {"event": "track", "payload": [1]}) == {
            "status": "error",
            "response": {"reason": reasons.PRESENCE_PAYLOAD_NOT_MAP},
        }
        assert await push(ws, "room", {"event": "wave"}) == {"status": "error", "response": {}}


async def test_a_fresh_key_per_join_when_none_is_given(live_server):
    async with await RawSocket.connect(live_server.url, live_server.token()) as ws:
        await ws.join("room", presence_config(""))
        await next_event(ws, "presence_state")
        assert (await push(ws, "room", {"event": "track", "payload": {}}))["status"] == "ok"
        diff = (await next_event(ws, "presence_diff"))[4]
        [key] = diff["joins"]
        assert len(key) == 36 and key[14] == "1"  # a version 1 UUID, as upstream


async def test_public_and_private_room_are_separate_presence_sets(live_server, db):
    db.execute(
        "create policy p_read on realtime.messages for select to anon using (true);"
        "create policy p_write on realtime.messages for insert to anon with check (true)"
    )
    async with (
        await RawSocket.connect(live_server.url, live_server.token()) as public,
        await RawSocket.connect(live_server.url, live_server.token()) as private,
    ):
        await public.join("room", presence_config("pub"))
        await next_event(public, "presence_state")
        assert reply_of(await private.join("room", presence_config("priv", private=True)))["status"] == "ok"
        await next_event(private, "presence_state")
        assert (await push(private, "room", {"event": "track", "payload": {}}))["status"] == "ok"
        assert list((await next_event(private, "presence_diff"))[4]["joins"]) == ["priv"]
        await public.expect_silence(0.5)
        assert scalar(db, "select private from realtime.presences") is True


async def test_a_track_that_enables_presence_sends_the_state(live_server):
    async with (
        await RawSocket.connect(live_server.url, live_server.token()) as first,
        await RawSocket.connect(live_server.url, live_server.token()) as late,
    ):
        await first.join("room", presence_config("first"))
        await next_event(first, "presence_state")
        assert (await push(first, "room", {"event": "track", "payload": {"n": 1}}))["status"] == "ok"
        await next_event(first, "presence_diff")
        await late.join("room", presence_config("late", enabled=False))
        assert (await push(late, "room", {"event": "track", "payload": {"n": 2}}))["status"] == "ok"
        state = (await next_event(late, "presence_state"))[4]
        assert "first" in state


async def test_the_sixth_presence_push_in_the_window_closes_the_channel(live_server):
    async with await RawSocket.connect(live_server.url, live_server.token()) as ws:
        await ws.join("room", presence_config("k"))
        await next_event(ws, "presence_state")
        for n in range(5):
            assert (await push(ws, "room", {"event": "track", "payload": {"n": n}}))["status"] == "ok"
        await ws.send(
            "realtime:room", "presence", {"event": "track", "payload": {"n": 5}}, ref="99", join_ref="1"
        )
        system = await next_event(ws, "system")
        assert system[4] == {
            "extension": "system",
            "status": "error",
            "message": reasons.CLIENT_PRESENCE_RATE_LIMIT,
            "channel": "room",
        }
        assert (await next_event(ws, "phx_close"))[0] == "1"


# -- private presence: the same row-level security, with extension = 'presence' -------------------

PRESENCE_POLICIES = """
create policy presence_read on realtime.messages for select to authenticated
  using (topic = (select realtime.topic()) and extension = 'presence'
         and (select realtime.topic()) in ('lobby', 'stage'));
create policy broadcast_read on realtime.messages for select to authenticated
  using (topic = (select realtime.topic()) and extension = 'broadcast'
         and (select realtime.topic()) = 'stage');
create policy presence_write on realtime.messages for insert to authenticated
  with check (topic = (select realtime.topic()) and extension = 'presence'
              and (select realtime.topic()) = 'stage');
"""


async def private_socket(server: Any, subtopic: str, key: str, enabled: bool = True) -> tuple[RawSocket, Any]:
    ws = await RawSocket.connect(server.url, server.token())
    token = server.token("authenticated", sub=key)
    reply = reply_of(await ws.join(subtopic, presence_config(key, enabled, private=True), access_token=token))
    return ws, reply


async def test_a_presence_only_read_joins_and_sees_presence_but_no_broadcasts(live_server, db):
    db.execute(PRESENCE_POLICIES)
    writer, reply = await private_socket(live_server, "stage", "writer")
    assert reply["status"] == "ok"
    await next_event(writer, "presence_state")
    # lobby: presence read only. The join succeeds on it (upstream: broadcast OR presence read).
    watcher, reply = await private_socket(live_server, "lobby", "watcher")
    assert reply["status"] == "ok"
    assert (await next_event(watcher, "presence_state"))[4] == {}
    # Without presence enabled, a presence-only read is no read at all.
    blind, reply = await private_socket(live_server, "lobby", "blind", enabled=False)
    assert reply["status"] == "error"
    await blind.close()
    try:
        # A stored private broadcast on lobby reaches nobody (no broadcast read there).
        db.execute("select realtime.send('{\"a\": 1}', 'e', 'lobby', true)")
        await watcher.expect_silence(0.5)
        # stage: read both, write presence: the track is stored and seen.
        assert (await push(writer, "stage", {"event": "track", "payload": {"w": 1}}))["status"] == "ok"
        diff = (await next_event(writer, "presence_diff"))[4]
        assert list(diff["joins"]) == ["writer"]
    finally:
        await writer.close()
        await watcher.close()


async def test_without_presence_write_the_track_is_an_error_and_nobody_sees_it(live_server, db):
    db.execute(PRESENCE_POLICIES)
    watcher, _ = await private_socket(live_server, "lobby", "watcher")
    tracker, _ = await private_socket(live_server, "lobby", "tracker")
    try:
        await next_event(watcher, "presence_state")
        await next_event(tracker, "presence_state")
        assert await push(tracker, "lobby", {"event": "track", "payload": {"t": 1}}) == {
            "status": "error",
            "response": {},
        }
        await watcher.expect_silence(0.5)
        await tracker.expect_silence(0.1)
        assert scalar(db, "select count(*) from realtime.presences") == 0
    finally:
        await watcher.close()
        await tracker.close()


async def test_a_private_track_that_enables_presence_checks_the_presence_read(live_server, db):
    db.execute(PRESENCE_POLICIES)
    # stage: broadcast read lets the join through without presence; the track then checks
    # presence read and write, and the state follows.
    ws, reply = await private_socket(live_server, "stage", "late", enabled=False)
    try:
        assert reply["status"] == "ok"
        assert (await push(ws, "stage", {"event": "track", "payload": {"l": 1}}))["status"] == "ok"
        state = (await next_event(ws, "presence_state"))[4]
        # The client's own join is in the state, or in a diff around it (it is applied either way).
        if "late" not in state:
            diff = (await next_event(ws, "presence_diff"))[4]
            assert list(diff["joins"]) == ["late"]
    finally:
        await ws.close()


async def test_a_presence_the_database_cannot_store_is_refused_and_others_go_on(live_server):
    async with await RawSocket.connect(live_server.url, live_server.token()) as ws:
        await ws.join("room", presence_config("k"))
        await next_event(ws, "presence_state")
        # PostgreSQL's jsonb holds no NUL character.
        assert await push(ws, "room", {"event": "track", "payload": {"name": "a\u0000b"}}) == {
            "status": "error",
            "response": {},
        }
        assert await push(ws, "room", {"event": "track", "payload": {"name": "a\\u0000b"}}) == {
            "status": "ok",
            "response": {},
        }
        diff = (await next_event(ws, "presence_diff"))[4]
        assert diff["joins"]["k"]["metas"][0]["name"] == "a\\u0000b"
