"""Presence through the official clients, unchanged: realtime-js (Node) and realtime-py (here),
two members of a topic on one sidecar, then on two sidecars of one database.

After every step (track, a second track, an update, untrack, leaving the channel, joining again,
closing the socket) each member's ``presenceState()`` must equal the others' and the
``realtime.presences`` table, and the ``sync``/``join``/``leave`` callbacks must have fired for
exactly the presences that joined and left, each step one presence_diff (one sync).

Private presence: a token whose role may only read presence joins a private channel and sees
the presences, but no broadcasts; its track, without the presence write, is an error, and
nobody sees it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from realtime import AsyncRealtimeClient

from tests.harness import LiveServer

from .drivers import JsDriver, py_close, ws_url
from .presence import (
    JsMember,
    Member,
    PyMember,
    State,
    StateOf,
    assert_once,
    converge,
    fetch,
    wait_seen,
    wait_synced,
)

pytestmark = pytest.mark.asyncio

TOPIC = "lobby"

#: (first member, second member): a client kind and, for realtime-js, its protocol version.
PAIRS = [
    (("js", "2.0.0"), ("js", "1.0.0")),
    (("py", None), ("py", None)),
    (("js", "2.0.0"), ("py", None)),
]
PAIR_IDS = ["js-js", "py-py", "js-py"]


def syncs(members: list[Member]) -> dict[str, int]:
    return {m.name: m.syncs() for m in members}


async def one_sync_each(members: list[Member], mark: dict[str, int]) -> None:
    """Every member synced once more since ``mark``: the step was one presence_diff."""
    await wait_synced(members, mark)
    assert syncs(members) == {name: n + 1 for name, n in mark.items()}


def only_ref(table: State, key: str) -> str:
    [(ref, _payload)] = table[key]
    return ref


async def presence_steps(a: Member, b: Member, db: Any) -> None:
    both = [a, b]
    for m in both:
        await m.subscribe()
    # The join with presence enabled brings a presence_state (empty), hence a sync.
    await wait_synced(both, {})
    await converge(both, db, TOPIC, {})

    # a tracks: everyone sees a join of a's presence.
    mark = syncs(both)
    await a.track({"name": "a", "n": 1})
    table = await converge(both, db, TOPIC, {"a": [{"name": "a", "n": 1}]})
    a1 = only_ref(table, "a")
    await wait_seen(both, "join", "a", a1)
    await one_sync_each(both, mark)

    # b tracks too.
    mark = syncs(both)
    await b.track({"name": "b"})
    table = await converge(both, db, TOPIC, {"a": [{"name": "a", "n": 1}], "b": [{"name": "b"}]})
    b1 = only_ref(table, "b")
    assert only_ref(table, "a") == a1
    await wait_seen(both, "join", "b", b1)
    await one_sync_each(both, mark)

    # a updates its payload: a join of the new meta and a leave of the old one, under a new ref.
    mark = syncs(both)
    await a.track({"name": "a", "n": 2})
    table = await converge(both, db, TOPIC, {"a": [{"name": "a", "n": 2}], "b": [{"name": "b"}]})
    a2 = only_ref(table, "a")
    assert a2 != a1
    assert await fetch(db, "select meta->>'phx_ref_prev' from realtime.presences where ref = %s", (a2,)) == [
        (a1,)
    ]
    await wait_seen(both, "join", "a", a2)
    await wait_seen(both, "leave", "a", a1)
    await one_sync_each(both, mark)
    for m in both:
        joins = [s for s in m.seen() if s.kind == "join" and s.key == "a"]
        leaves = [s for s in m.seen() if s.kind == "leave" and s.key == "a"]
        assert [[ref for ref, _ in s.presences] for s in joins] == [[a1], [a2]], m.name
        assert [[ref for ref, _ in s.presences] for s in leaves] == [[a1]], m.name
        assert joins[-1].presences == [(a2, {"name": "a", "n": 2})], m.name
        assert leaves[-1].presences == [(a1, {"name": "a", "n": 1})], m.name

    # a untracks: a leave of its presence.
    mark = syncs(both)
    await a.untrack()
    await converge(both, db, TOPIC, {"b": [{"name": "b"}]})
    await wait_seen(both, "leave", "a", a2)
    await one_sync_each(both, mark)
    assert_once(both)

    # a tracks again, then leaves the channel (unsubscribe): b sees a leave.
    await a.track({"name": "a", "n": 3})
    table = await converge(both, db, TOPIC, {"a": [{"name": "a", "n": 3}], "b": [{"name": "b"}]})
    a3 = only_ref(table, "a")
    await wait_seen(both, "join", "a", a3)
    mark = syncs([b])
    await a.leave()
    await converge([b], db, TOPIC, {"b": [{"name": "b"}]})
    await wait_seen([b], "leave", "a", a3)
    await one_sync_each([b], mark)
    assert_once(both)

    # a joins again on the same socket: its presence_state holds b; then it tracks once more.
    await a.subscribe()
    await converge(both, db, TOPIC, {"b": [{"name": "b"}]})
    await wait_seen([a], "join", "b", b1)
    await a.track({"name": "a", "n": 4})
    table = await converge(both, db, TOPIC, {"a": [{"name": "a", "n": 4}], "b": [{"name": "b"}]})
    a4 = only_ref(table, "a")
    await wait_seen(both, "join", "a", a4)

    # b's socket closes: a sees b leave.
    mark = syncs([a])
    await b.close()
    await converge([a], db, TOPIC, {"a": [{"name": "a", "n": 4}]})
    await wait_seen([a], "leave", "b", b1)
    await one_sync_each([a], mark)
    assert_once([a])

    # a's socket closes: nobody is left, in the table either.
    await a.close()
    await converge([], db, TOPIC, {})
    assert await fetch(db, "select count(*) from realtime.messages") == [(0,)]


@pytest.mark.parametrize("pair", PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize("sidecars", [1, 2], ids=["one-sidecar", "two-sidecars"])
async def test_presence_through_the_official_clients(
    make_server: Any, db_dsn: str, db: Any, pair: Any, sidecars: int
) -> None:
    first: LiveServer = await make_server(db_dsn)
    second: LiveServer = await make_server(db_dsn) if sidecars == 2 else first
    async with contextlib.AsyncExitStack() as stack:
        js: JsDriver | None = None
        members: list[Member] = []
        for (kind, vsn), name, server in zip(pair, ("a", "b"), (first, second), strict=True):
            if kind == "js":
                if js is None:
                    js = await stack.enter_async_context(JsDriver(call_timeout=30))
                members.append(JsMember(js, name, server.url, server.token(), TOPIC, name, vsn=vsn))
            else:
                py = PyMember(name, server.url, server.token(), TOPIC, name)
                stack.push_async_callback(py.close)
                members.append(py)
        await presence_steps(members[0], members[1], db)


STAGE_POLICIES = """
create policy stage_presence_read on realtime.messages for select to authenticated
  using (extension = 'presence' and (select realtime.topic()) = 'stage');
create policy stage_presence_write on realtime.messages for insert to authenticated
  with check (extension = 'presence' and (select realtime.topic()) = 'stage'
              and current_setting('request.jwt.claim.sub', true) = 'speaker');
create policy stage_broadcast_read on realtime.messages for select to authenticated
  using (extension = 'broadcast' and (select realtime.topic()) = 'stage'
         and current_setting('request.jwt.claim.sub', true) = 'speaker');
create policy stage_broadcast_write on realtime.messages for insert to authenticated
  with check (extension = 'broadcast' and (select realtime.topic()) = 'stage'
              and current_setting('request.jwt.claim.sub', true) = 'speaker');
"""


async def test_private_presence_read_only_sees_presence_but_no_broadcasts_and_cannot_track(
    make_server: Any, db_dsn: str, db: Any
) -> None:
    db.execute(STAGE_POLICIES)  # before the server starts: it may hold realtime.messages meanwhile
    s: LiveServer = await make_server(db_dsn)
    config = {"private": True, "broadcast": {"self": True, "ack": True}}
    async with JsDriver(call_timeout=30) as js:
        # The speaker may read and write both; the viewer has nothing but the presence read.
        speaker = JsMember(
            js,
            "speaker",
            s.url,
            s.token(),
            "stage",
            "speaker",
            config=config,
            access_token=s.token("authenticated", sub="speaker"),
        )
        viewer = JsMember(
            js,
            "viewer",
            s.url,
            s.token(),
            "stage",
            "viewer",
            config=config,
            access_token=s.token("authenticated", sub="viewer"),
        )
        both: list[Member] = [speaker, viewer]
        for m in both:
            await m.subscribe()
        await wait_synced(both, {})
        await converge(both, db, "stage", {}, private=True)

        # The viewer sees the speaker's presence (in the private set of the topic).
        await speaker.track({"user": "speaker"})
        table = await converge(both, db, "stage", {"speaker": [{"user": "speaker"}]}, private=True)
        await wait_seen(both, "join", "speaker", only_ref(table, "speaker"))
        assert await fetch(db, "select count(*) from realtime.presences where not private") == [(0,)]

        # Broadcasts reach the speaker (over the socket and from SQL), never the viewer.
        assert await js.send(speaker.handle, "hello", {"n": 1}) == "ok"
        await fetch(db, "select realtime.send('{\"n\": 2}'::jsonb, 'from-sql', 'stage', true)")
        got = sorted([(await js.next_broadcast(speaker.handle))["event"] for _ in range(2)])
        assert got == ["from-sql", "hello"]
        handle = viewer.handle
        await js.no_event(lambda e: e.get("event") == "broadcast" and e.get("channel") == handle, within=1.0)

        # Without the presence write the viewer's track is refused, and nobody sees it: after the
        # speaker's next change (its diff comes after anything the viewer could have caused) the
        # states still hold the speaker alone.
        assert await viewer.track_reply({"user": "viewer"}) == "error"
        await speaker.track({"user": "speaker", "n": 2})
        table = await converge(both, db, "stage", {"speaker": [{"user": "speaker", "n": 2}]}, private=True)
        await wait_seen(both, "join", "speaker", only_ref(table, "speaker"))
        for m in both:
            assert all(seen.key == "speaker" for seen in m.seen()), (m.name, m.seen())
        assert await fetch(db, "select count(*) from realtime.presences where key = 'viewer'") == [(0,)]


async def test_a_first_track_enables_presence_for_clients_that_did_not_ask_for_it(
    live_server: LiveServer, db: Any
) -> None:
    """Neither client has presence callbacks or ``presence.enabled``: their first track enables
    presence, which brings the presence_state, so ``presenceState()`` fills as the table does."""
    s = live_server
    async with contextlib.AsyncExitStack() as stack:
        js = await stack.enter_async_context(JsDriver(call_timeout=30))
        await js.connect(s.url, s.token(), client="plain")
        handle = await js.channel(TOPIC, client="plain", config={"presence": {"key": "js"}})
        assert (await js.subscribe(handle))["status"] == "SUBSCRIBED"
        client = AsyncRealtimeClient(f"{ws_url(s.url)}/realtime/v1", s.token(), timeout=5)
        stack.push_async_callback(py_close, client)
        options: Any = {"config": {"presence": {"key": "py", "enabled": False}}}
        ch = client.channel(TOPIC, options)
        statuses: list[str] = []
        await ch.subscribe(lambda status, _error: statuses.append(str(getattr(status, "value", status))))
        assert statuses == ["SUBSCRIBED"]

        async def js_state() -> Any:
            return await js.call({"cmd": "presenceState", "channel": handle})

        async def py_state() -> Any:
            return ch.presence_state()

        assert await js.track(handle, {"who": "js"}) == "ok"
        await ch.track({"who": "py"})
        await converge(
            [StateOf("js", js_state), StateOf("py", py_state)],
            db,
            TOPIC,
            {"js": [{"who": "js"}], "py": [{"who": "py"}]},
        )
