"""Every limit, configured small, answered with the reference server's exact words.

Defaults (see docs/operations.md): payload 3000 KB, 100 channels per socket, 5 MB frames, 60 s idle,
and no connection or rate limits. Payload size and channels per socket at join are also covered in
tests/sidecar/test_protocol.py and test_rest.py; this file covers the rest.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.sidecar.test_delivery import decode_db_frame, run_sql
from tests.sidecar.test_phoenix import kind3
from tests.sidecar.wire import RawSocket, reply_of

from .support import bearer, is_close, is_event, wait_for

pytestmark = pytest.mark.asyncio

TOO_MANY_MESSAGES = "Too many messages per second"


def broadcast(n: int) -> dict[str, object]:
    return {"type": "broadcast", "event": "e", "payload": {"n": n}}


async def rest_batch(
    http: aiohttp.ClientSession, server, messages: int, topic: str = "room"
) -> aiohttp.ClientResponse:
    body = {"messages": [{"topic": topic, "event": "rest", "payload": {"i": i}} for i in range(messages)]}
    async with http.post(f"{server.url}/api/broadcast", json=body, headers=bearer(server)) as response:
        await response.read()
        return response


async def expect_rate_shutdown(ws: RawSocket, topic: str = "realtime:room") -> None:
    """The reference server's channel shutdown: a system error, then phx_close with ref = join_ref."""
    system = await ws.recv_until(lambda f: is_event(f, "system"))
    assert system == [
        "1",
        None,
        topic,
        "system",
        {"extension": "system", "status": "error", "message": TOO_MANY_MESSAGES, "channel": "room"},
    ]
    assert await ws.recv() == ["1", "1", topic, "phx_close", {}]


async def test_frame_over_the_limit_closes_the_socket_with_1009(make_server):
    server = await make_server(None, max_frame_bytes=2000)
    async with await RawSocket.connect(server.url, server.token()) as ws:
        await ws.join("room")
        await ws.send(
            "realtime:room", "broadcast", {"type": "broadcast", "event": "e", "payload": "x" * 1500}
        )
        await ws.send(
            "realtime:room", "broadcast", {"type": "broadcast", "event": "e", "payload": "x" * 2500}
        )
        frame = await ws.recv_until(is_close)
        assert frame.type == aiohttp.WSMsgType.CLOSE and frame.data == 1009
    await wait_for(lambda: not server.server.connections, what="socket gone")
    assert server.server.registry.channel_count == 0
    # REST bodies have the same bound (aiohttp's client_max_size): 413.
    async with aiohttp.ClientSession() as http:
        body = {"messages": [{"topic": "room", "event": "e", "payload": {"x": "y" * 3000}}]}
        async with http.post(f"{server.url}/api/broadcast", json=body, headers=bearer(server)) as response:
            assert response.status == 413


async def test_idle_timeout_closes_silent_sockets_only(make_server):
    server = await make_server(None, idle_timeout_s=0.5)
    async with (
        await RawSocket.connect(server.url, server.token()) as silent,
        await RawSocket.connect(server.url, server.token()) as chatty,
        await RawSocket.connect(server.url, server.token()) as pinging,
    ):
        for ws in (silent, chatty, pinging):
            await ws.join("room")
        for ref in range(8):  # 1.6 s of Phoenix heartbeats, and of WebSocket pings, every 0.2 s
            await chatty.send("phoenix", "heartbeat", {}, ref=str(ref))
            assert reply_of(await chatty.recv())["status"] == "ok"
            await pinging.ws.ping()
            await asyncio.sleep(0.2)
        frame = await silent.recv_until(is_close, timeout=1)
        assert frame.type == aiohttp.WSMsgType.CLOSE and frame.data == 1000
        await wait_for(lambda: len(server.server.connections) == 2, what="silent socket gone")
        assert server.server.registry.channel_count == 2


async def test_too_many_connected_users_is_refused_before_the_upgrade(make_server):
    server = await make_server(None, max_connections=2)
    first = await RawSocket.connect(server.url, server.token())
    second = await RawSocket.connect(server.url, server.token())
    async with aiohttp.ClientSession() as http:
        url = f"{server.url}/realtime/v1/websocket?apikey={server.token()}&vsn=2.0.0"
        async with http.get(url, headers={"Connection": "Upgrade", "Upgrade": "websocket"}) as response:
            assert response.status == 429
            assert await response.json() == {"error": "Too many connected users"}
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url)
        assert refused.value.status == 429
        await first.close()
        await wait_for(lambda: len(server.server.connections) == 1, what="a slot freed")
        third = await RawSocket.connect(server.url, server.token())
        assert reply_of(await third.join("room"))["status"] == "ok"
    await second.close()
    await third.close()


async def test_too_many_joins_per_second_refuses_and_disconnects(make_server):
    server = await make_server(None, max_joins_per_second=3)
    async with await RawSocket.connect(server.url, server.token()) as ws:
        for topic in ("a", "b", "c"):
            assert reply_of(await ws.join(topic))["status"] == "ok"
        assert reply_of(await ws.join("d")) == {
            "status": "error",
            "response": {"reason": "ClientJoinRateLimitReached: Too many joins per second"},
        }
        frame = await ws.recv_until(is_close)
        assert frame.type == aiohttp.WSMsgType.CLOSE and frame.data == 1008
    await wait_for(lambda: not server.server.connections, what="socket gone")
    assert server.server.registry.channel_count == 0
    await asyncio.sleep(1.05)  # the next second
    async with await RawSocket.connect(server.url, server.token()) as ws:
        assert reply_of(await ws.join("a"))["status"] == "ok"


async def test_a_socket_sending_too_fast_loses_the_channel_not_the_socket(make_server):
    server = await make_server(None, max_client_events_per_second=3)
    async with (
        await RawSocket.connect(server.url, server.token()) as sender,
        await RawSocket.connect(server.url, server.token()) as receiver,
    ):
        await sender.join("room")
        await receiver.join("room")
        for n in range(4):
            await sender.send("realtime:room", "broadcast", broadcast(n), ref=str(10 + n), join_ref="1")
        await expect_rate_shutdown(sender)
        got = [(await receiver.recv())[4]["payload"]["n"] for _ in range(3)]
        assert got == [0, 1, 2]
        await receiver.expect_silence()
        # The socket itself stays, and so does every other socket's channel.
        await sender.send("phoenix", "heartbeat", {}, ref="99")
        assert reply_of(await sender.recv()) == {"status": "ok", "response": {}}
        assert server.server.registry.channel_count == 1
        # The limit is per socket: the receiver may still send.
        await receiver.send("realtime:room", "broadcast", broadcast(9), ref="5", join_ref="1")
        await receiver.expect_silence()  # self is false, and nobody else listens now
        assert server.server.registry.channel_count == 1


async def test_server_wide_events_per_second_for_sockets_and_rest(make_server):
    server = await make_server(None, max_events_per_second=4)
    async with (
        aiohttp.ClientSession() as http,
        await RawSocket.connect(server.url, server.token()) as a,
        await RawSocket.connect(server.url, server.token()) as b,
        await RawSocket.connect(server.url, server.token()) as listener,
    ):
        for ws in (a, b, listener):
            await ws.join("room")
        await a.send("realtime:room", "broadcast", broadcast(1), join_ref="1")
        await a.send("realtime:room", "broadcast", broadcast(2), join_ref="1")
        await b.send("realtime:room", "broadcast", broadcast(3), join_ref="1")
        await b.send("realtime:room", "broadcast", broadcast(4), join_ref="1")
        assert [(await listener.recv())[4]["payload"]["n"] for _ in range(4)] == [1, 2, 3, 4]
        # The server's budget for this second is spent, whoever sends next.
        await b.send("realtime:room", "broadcast", broadcast(5), join_ref="1")
        await expect_rate_shutdown(b)
        response = await rest_batch(http, server, 1)
        assert response.status == 429
        assert await response.json() == {"message": "You have exceeded your rate limit"}
        single = f"{server.url}/api/broadcast/room/events/e"
        async with http.post(single, json={"n": 6}, headers=bearer(server)) as response:
            assert response.status == 429
            assert await response.json() == {"message": "You have exceeded your rate limit"}
        await listener.expect_silence()
        await asyncio.sleep(1.05)
        # A new second: REST and sockets are served again; a batch larger than the budget is not.
        assert (await rest_batch(http, server, 4)).status == 202
        assert [(await listener.recv())[4]["payload"]["i"] for _ in range(4)] == [0, 1, 2, 3]
        await asyncio.sleep(1.05)
        too_big = await rest_batch(http, server, 5)
        assert too_big.status == 429
        assert await too_big.json() == {
            "message": "Too many messages to broadcast, please reduce the batch size"
        }
        await a.send("realtime:room", "broadcast", broadcast(7), join_ref="1")
        assert (await listener.recv())[4]["payload"]["n"] == 7


async def test_committed_database_messages_are_never_dropped_by_a_limit(make_server, db_dsn):
    server = await make_server(db_dsn, max_events_per_second=5, max_client_events_per_second=5)
    async with (
        aiohttp.ClientSession() as http,
        await RawSocket.connect(server.url, server.token()) as v2,
        await RawSocket.connect(server.url, server.token(), vsn="1.0.0") as v1,
    ):
        await v2.join("room")
        await v1.join("room")
        # The limit is live: REST is refused past five messages in this second...
        assert (await rest_batch(http, server, 5)).status == 202
        assert (await rest_batch(http, server, 1)).status == 429
        for ws in (v2, v1):
            for _ in range(5):
                await ws.recv()
        # ...yet every committed row is delivered, however many and however fast.
        run_sql(
            db_dsn,
            "select realtime.send(jsonb_build_object('n', n), 'row', 'room', false)"
            " from generate_series(1, 200) as n",
        )
        for ws in (v2, v1):
            numbers = [decode_db_frame(await ws.recv())[2]["n"] for _ in range(200)]
            assert numbers == list(range(1, 201))
        metrics_refused = server.server.metrics.registry.get_sample_value(
            "realtime_refusals_total", {"reason": "events_per_second"}
        )
        assert metrics_refused == 1


async def test_oversized_single_rest_and_binary_push_are_refused(make_server):
    server = await make_server(None, max_payload_kb=1)
    async with (
        aiohttp.ClientSession() as http,
        await RawSocket.connect(server.url, server.token()) as sender,
        await RawSocket.connect(server.url, server.token()) as receiver,
    ):
        await sender.join("room", {"broadcast": {"ack": True}})
        await receiver.join("room")
        single = f"{server.url}/api/broadcast/room/events/e"
        async with http.post(single, json={"x": "y" * 1500}, headers=bearer(server)) as response:
            assert response.status == 422
            assert await response.json() == {"errors": {"payload": ["Payload size exceeds tenant limit"]}}
        headers = {**bearer(server), "Content-Type": "application/octet-stream"}
        async with http.post(single, data=b"\x00" * 1001, headers=headers) as response:
            assert response.status == 422
        async with http.post(single, data=b"\x00" * 1000, headers=headers) as response:
            assert response.status == 202
        for ws in (sender, receiver):  # REST goes to every subscriber; kind 4: the one that fit
            assert (await ws.recv())[0] == 4
        # A kind 3 binary push over the limit, with ack: the bare-string error reply, nothing relayed.
        await sender.send_raw(kind3(b"1", b"7", b"realtime:room", b"big", b"", 0, b"\x01" * 1001))
        assert await sender.recv() == [
            "1",
            "7",
            "realtime:room",
            "phx_reply",
            {"status": "error", "response": "payload_size_exceeded"},
        ]
        await receiver.expect_silence()


async def test_leaving_frees_a_channel_slot_and_the_limit_is_per_socket(make_server):
    server = await make_server(None, max_channels_per_client=2)
    async with (
        await RawSocket.connect(server.url, server.token()) as ws,
        await RawSocket.connect(server.url, server.token()) as other,
    ):
        assert reply_of(await ws.join("a"))["status"] == "ok"
        assert reply_of(await ws.join("b"))["status"] == "ok"
        assert reply_of(await ws.join("c"))["response"] == {
            "reason": "ChannelRateLimitReached: Too many channels"
        }
        assert reply_of(await other.join("c"))["status"] == "ok"
        await ws.send("realtime:a", "phx_leave", {}, ref="20", join_ref="1")
        await ws.recv_until(lambda f: is_event(f, "phx_close"))
        assert reply_of(await ws.join("c"))["status"] == "ok"
        # Joining a topic again replaces the channel; it does not take a second slot.
        assert reply_of(await ws.join("c"))["status"] == "ok"
        assert server.server.registry.channel_count == 3


async def test_zero_turns_the_payload_limit_off(make_server):
    server = await make_server(None, max_payload_kb=0)
    async with (
        aiohttp.ClientSession() as http,
        await RawSocket.connect(server.url, server.token()) as sender,
        await RawSocket.connect(server.url, server.token()) as receiver,
    ):
        await sender.join("room", {"broadcast": {"ack": True}})
        await receiver.join("room")
        big = {"type": "broadcast", "event": "e", "payload": {"x": "y" * 100_000}}
        await sender.send("realtime:room", "broadcast", big, ref="2", join_ref="1")
        assert reply_of(await sender.recv()) == {"status": "ok", "response": {}}
        assert (await receiver.recv())[4] == big
        batch = {"messages": [{"topic": "room", "event": "e", "payload": {"x": "y" * 100_000}}]}
        async with http.post(f"{server.url}/api/broadcast", json=batch, headers=bearer(server)) as response:
            assert response.status == 202
