"""What each path does while PostgreSQL is away, and that it all comes back.

Public channels never touch the database: client broadcasts and public REST are relayed inside
the server and keep working. Everything that needs the database (private joins, private REST,
RLS write checks) is refused at once with the reference server's reason instead of waiting for a
connection; /healthz answers 503 meanwhile. Delivery of what committed during the outage is
covered by tests/sidecar/test_delivery.py.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from tests.sidecar.test_delivery import decode_db_frame
from tests.sidecar.wire import RawSocket, reply_of

from .support import bearer, sample, scrape, wait_for

pytestmark = pytest.mark.asyncio

PRIVATE = {"broadcast": {"self": False, "ack": True}, "private": True}
UNREACHABLE = "UnableToConnectToProject: Realtime was unable to connect to the project database"


async def healthz(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(f"{url}/healthz") as response:
        return response.status


async def test_public_paths_keep_working_and_private_ones_fail_fast(private_cluster, make_server):
    cluster, dsn = private_cluster
    server = await make_server(dsn)
    user = server.token("authenticated")
    async with (
        aiohttp.ClientSession() as http,
        await RawSocket.connect(server.url, server.token()) as public_sender,
        await RawSocket.connect(server.url, server.token(), vsn="1.0.0") as public_receiver,
        await RawSocket.connect(server.url, user) as private_sender,
        await RawSocket.connect(server.url, user) as private_receiver,
        await RawSocket.connect(server.url, user) as unchecked_sender,
    ):
        await public_sender.join("lobby")
        await public_receiver.join("lobby")
        for ws in (private_sender, private_receiver, unchecked_sender):
            assert reply_of(await ws.join("room-1", PRIVATE))["status"] == "ok"
        # The sender's write permission is checked (and cached) before the outage.
        body = {"type": "broadcast", "event": "e", "payload": {"n": 0}}
        await private_sender.send("realtime:room-1", "broadcast", body, ref="10", join_ref="1")
        assert reply_of(await private_sender.recv())["status"] == "ok"
        assert (await private_receiver.recv())[4] == body
        assert (await unchecked_sender.recv())[4] == body

        await asyncio.to_thread(cluster.stop, "fast")
        await wait_for(lambda: not server.server.stream.live, what="stream down")
        assert await healthz(http, server.url) == 503
        assert sample(await scrape(server), "realtime_stream_up") == 0

        # Public client broadcasts are relayed in-process.
        body = {"type": "broadcast", "event": "e", "payload": {"n": 1}}
        await public_sender.send("realtime:lobby", "broadcast", body, ref="2", join_ref="1")
        assert (await public_receiver.recv())["payload"] == body

        # Public REST, batch and single.
        batch = {"messages": [{"topic": "lobby", "event": "rest", "payload": {"n": 2}}]}
        async with http.post(f"{server.url}/api/broadcast", json=batch, headers=bearer(server)) as r:
            assert r.status == 202
        assert (await public_receiver.recv())["payload"]["payload"] == {"n": 2}
        single = f"{server.url}/api/broadcast/lobby/events/one"
        async with http.post(single, json={"n": 3}, headers=bearer(server)) as r:
            assert r.status == 202
        assert decode_db_frame(await public_receiver.recv())[2] == {"n": 3}

        # A new private join is refused at once with the reference reason.
        async with await RawSocket.connect(server.url, user) as late:
            started = time.monotonic()
            reply = reply_of(await late.join("room-1", PRIVATE))
            elapsed = time.monotonic() - started
        assert reply == {"status": "error", "response": {"reason": UNREACHABLE}}
        assert elapsed < 3, f"the refusal waited {elapsed:.1f}s for the database"
        refusals = sample(await scrape(server), "realtime_refusals_total", reason="database_unavailable")
        assert refusals == 1

        # Private single REST: 422 as upstream; a batch skips its private topics and still answers 202.
        private_single = f"{server.url}/api/broadcast/room-1/events/e?private=true"
        async with http.post(private_single, json={"n": 4}, headers=bearer(server, "authenticated")) as r:
            assert r.status == 422
            assert await r.json() == {"message": "Tenant database unavailable"}
        mixed = {
            "messages": [
                {"topic": "room-1", "event": "e", "payload": {"n": 5}, "private": True},
                {"topic": "lobby", "event": "e", "payload": {"n": 6}},
            ]
        }
        async with http.post(
            f"{server.url}/api/broadcast", json=mixed, headers=bearer(server, "authenticated")
        ) as r:
            assert r.status == 202
        assert (await public_receiver.recv())["payload"]["payload"] == {"n": 6}

        # Private channels joined before the outage stay joined. A sender whose write permission is
        # cached keeps relaying; one that was never checked cannot be checked now, so its message is
        # dropped (as a denied write is).
        body = {"type": "broadcast", "event": "e", "payload": {"n": 7}}
        await private_sender.send("realtime:room-1", "broadcast", body, ref="11", join_ref="1")
        assert reply_of(await private_sender.recv())["status"] == "ok"
        assert (await private_receiver.recv())[4] == body
        assert (await unchecked_sender.recv())[4] == body
        await unchecked_sender.send(
            "realtime:room-1", "broadcast", {"type": "broadcast", "event": "e", "payload": {"n": 8}}, ref="3"
        )
        await unchecked_sender.expect_silence()
        await private_receiver.expect_silence()

        # The database comes back: health, private joins and private REST recover.
        await asyncio.to_thread(cluster.start)
        await server.wait_live(timeout=30)
        assert await healthz(http, server.url) == 200
        assert sample(await scrape(server), "realtime_stream_up") == 1
        async with await RawSocket.connect(server.url, user) as again:
            assert reply_of(await again.join("room-1", PRIVATE))["status"] == "ok"
        async with http.post(private_single, json={"n": 9}, headers=bearer(server, "authenticated")) as r:
            assert r.status == 202
        assert decode_db_frame(await private_receiver.recv())[2] == {"n": 9}


async def test_presence_while_the_database_is_away_and_after(private_cluster, make_server):
    """Presence lives in the database: while it is away a join with presence enabled to a topic
    this sidecar keeps no state of is refused (a client given no presence_state would never apply
    a diff) and a track is an error that leaves nothing tracked; once it is back both work."""
    cluster, dsn = private_cluster
    server = await make_server(dsn)
    config = {"broadcast": {"self": False}, "presence": {"enabled": True, "key": "k"}, "private": False}

    async def presence_push(ws: RawSocket, ref: str, payload: dict[str, object]) -> dict[str, object]:
        await ws.send("realtime:hall", "presence", payload, ref=ref, join_ref="1")
        frame = await ws.recv_until(lambda f: isinstance(f, list) and f[3] == "phx_reply" and f[1] == ref, 10)
        return reply_of(frame)

    async with await RawSocket.connect(server.url, server.token()) as watcher:
        assert reply_of(await watcher.join("hall", config))["status"] == "ok"
        assert (await watcher.recv())[3] == "presence_state"
        await asyncio.to_thread(cluster.stop, "fast")
        await wait_for(lambda: not server.server.stream.live, what="stream down")
        async with await RawSocket.connect(server.url, server.token()) as late:
            # A topic whose presence state this sidecar keeps is served from it (what changes
            # meanwhile comes as diffs once the reader catches up); any other is refused.
            assert reply_of(await late.join("hall", config))["status"] == "ok"
            assert (await late.recv())[3:] == ["presence_state", {}]
            reply = await late.join("elsewhere", {**config, "presence": {"enabled": True, "key": "x"}})
            assert reply_of(reply) == {"status": "error", "response": {"reason": UNREACHABLE}}
        assert await presence_push(watcher, "5", {"event": "track", "payload": {"down": True}}) == {
            "status": "error",
            "response": {},
        }
        await asyncio.to_thread(cluster.start)
        await wait_for(lambda: server.server.stream.live, timeout=30, what="stream live")
        # The failed track left nothing behind, and a new one is stored and seen.
        await watcher.expect_silence(1.0)
        assert await presence_push(watcher, "6", {"event": "track", "payload": {"up": True}}) == {
            "status": "ok",
            "response": {},
        }
        diff = await watcher.recv_until(lambda f: isinstance(f, list) and f[3] == "presence_diff", 10)
        assert [meta["up"] for meta in diff[4]["joins"]["k"]["metas"]] == [True]
        async with await RawSocket.connect(server.url, server.token()) as later:
            assert reply_of(await later.join("hall", config))["status"] == "ok"
            state = await later.recv_until(lambda f: isinstance(f, list) and f[3] == "presence_state", 10)
            assert [meta["up"] for meta in state[4]["k"]["metas"]] == [True]
