"""The Phoenix protocol as the reference server speaks it, frame by frame, over a real socket.

These servers run without a database: public channels, client broadcasts and REST need none.
"""

from __future__ import annotations

import time

import aiohttp
import pytest
from pg_realtime import reasons

from tests.harness import mint_token

from .wire import RawSocket, reply_of

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def server(make_server):
    return await make_server(None)


async def test_heartbeat_is_answered_in_both_formats(server):
    async with await RawSocket.connect(server.url, server.token()) as v2:
        await v2.send("phoenix", "heartbeat", {}, ref="5")
        assert await v2.recv() == [None, "5", "phoenix", "phx_reply", {"status": "ok", "response": {}}]
    async with await RawSocket.connect(server.url, server.token(), vsn="1.0.0") as v1:
        await v1.send("phoenix", "heartbeat", {}, ref=None)
        assert await v1.recv() == {
            "topic": "phoenix",
            "event": "phx_reply",
            "payload": {"status": "ok", "response": {}},
            "ref": None,
        }


async def test_join_replies_with_empty_postgres_changes(server):
    async with await RawSocket.connect(server.url, server.token()) as ws:
        await ws.send("realtime:room1", "phx_join", {"config": {}}, ref="9", join_ref="9")
        assert await ws.recv() == [
            "9",
            "9",
            "realtime:room1",
            "phx_reply",
            {"status": "ok", "response": {"postgres_changes": []}},
        ]
    async with await RawSocket.connect(server.url, server.token(), vsn="1.0.0") as ws:
        await ws.send("realtime:room1", "phx_join", {"config": {}}, ref="1", join_ref="1")
        # V1 output has no join_ref key, and always a ref key.
        assert await ws.recv() == {
            "topic": "realtime:room1",
            "event": "phx_reply",
            "payload": {"status": "ok", "response": {"postgres_changes": []}},
            "ref": "1",
        }


async def test_topics_outside_realtime_and_unjoined_topics_are_unmatched(server):
    async with await RawSocket.connect(server.url, server.token()) as ws:
        await ws.send("room1", "phx_join", {"config": {}}, ref="1", join_ref="1")
        assert reply_of(await ws.recv()) == {"status": "error", "response": {"reason": "unmatched topic"}}
        await ws.send(
            "realtime:never", "broadcast", {"type": "broadcast", "event": "e", "payload": {}}, ref="2"
        )
        assert reply_of(await ws.recv()) == {"status": "error", "response": {"reason": "unmatched topic"}}


async def test_empty_subtopic_needs_a_name(server):
    async with await RawSocket.connect(server.url, server.token()) as ws:
        await ws.send("realtime:", "phx_join", {"config": {}}, ref="1", join_ref="1")
        assert reply_of(await ws.recv())["response"] == {
            "reason": "TopicNameRequired: You must provide a topic name"
        }


async def test_second_join_closes_the_first(server):
    async with await RawSocket.connect(server.url, server.token()) as ws:
        await ws.send("realtime:room", "phx_join", {"config": {}}, ref="1", join_ref="1")
        await ws.recv()
        await ws.send("realtime:room", "phx_join", {"config": {}}, ref="2", join_ref="2")
        assert await ws.recv() == ["1", "1", "realtime:room", "phx_close", {}]
        assert await ws.recv() == [
            "2",
            "2",
            "realtime:room",
            "phx_reply",
            {"status": "ok", "response": {"postgres_changes": []}},
        ]
        assert server.server.registry.channel_count == 1


async def test_leave_replies_then_closes_and_unjoined_leave_only_replies(server):
    async with await RawSocket.connect(server.url, server.token()) as ws:
        await ws.join("room")
        await ws.send("realtime:room", "phx_leave", {}, ref="7", join_ref="1")
        assert await ws.recv() == ["1", "7", "realtime:room", "phx_reply", {"status": "ok", "response": {}}]
        assert await ws.recv() == ["1", "1", "realtime:room", "phx_close", {}]
        await ws.send("realtime:other", "phx_leave", {}, ref="8", join_ref="3")
        assert await ws.recv() == ["3", "8", "realtime:other", "phx_reply", {"status": "ok", "response": {}}]
        await ws.expect_silence()
        assert server.server.registry.channel_count == 0


async def test_broadcast_reaches_others_not_self_by_default(server):
    async with (
        await RawSocket.connect(server.url, server.token()) as sender,
        await RawSocket.connect(server.url, server.token()) as other,
    ):
        await sender.join("room")
        await other.join("room")
        body = {"type": "broadcast", "event": "ping", "payload": {"n": 1}}
        await sender.send("realtime:room", "broadcast", body, ref="9", join_ref="1")
        assert await other.recv() == [None, None, "realtime:room", "broadcast", body]
        await sender.expect_silence()


async def test_self_and_ack(server):
    async with await RawSocket.connect(server.url, server.token()) as ws:
        await ws.join("room", {"broadcast": {"self": True, "ack": True}})
        body = {"type": "broadcast", "event": "ping", "payload": {"n": 1}}
        await ws.send("realtime:room", "broadcast", body, ref="9", join_ref="1")
        frames = [await ws.recv(), await ws.recv()]
        assert [None, None, "realtime:room", "broadcast", body] in frames
        assert ["1", "9", "realtime:room", "phx_reply", {"status": "ok", "response": {}}] in frames


async def test_string_booleans_in_config_are_accepted(server):
    async with await RawSocket.connect(server.url, server.token()) as ws:
        await ws.join("room", {"broadcast": {"self": "TRUE", "ack": "true"}})
        await ws.send(
            "realtime:room", "broadcast", {"type": "broadcast", "event": "e", "payload": {}}, ref="2"
        )
        frames = [await ws.recv(), await ws.recv()]
        assert any(isinstance(f, list) and f[3] == "broadcast" for f in frames)


async def test_kind3_push_leaves_as_kind4_for_v2_and_json_for_v1(server):
    async with (
        await RawSocket.connect(server.url, server.token()) as sender,
        await RawSocket.connect(server.url, server.token()) as v2,
        await RawSocket.connect(server.url, server.token(), vsn="1.0.0") as v1,
    ):
        for ws in (sender, v2, v1):
            await ws.join("room")
        frame = bytes([3, 1, 2, 14, 4, 0, 1]) + b"1" + b"10" + b"realtime:room1"[:14] + b"ping" + b'{"a":1}'
        # topic "realtime:room" is 13 bytes; build the header from the real lengths instead.
        topic = b"realtime:room"
        frame = bytes([3, 1, 2, len(topic), 4, 0, 1]) + b"1" + b"10" + topic + b"ping" + b'{"a":1}'
        await sender.send_raw(frame)
        assert await v2.recv() == bytes([4, len(topic), 4, 0, 1]) + topic + b"ping" + b'{"a":1}'
        assert await v1.recv() == {
            "topic": "realtime:room",
            "event": "broadcast",
            "payload": {"event": "ping", "payload": {"a": 1}, "type": "broadcast"},
            "ref": None,
        }


async def test_binary_payloads_are_not_sent_to_v1(server):
    async with (
        await RawSocket.connect(server.url, server.token()) as sender,
        await RawSocket.connect(server.url, server.token()) as v2,
        await RawSocket.connect(server.url, server.token(), vsn="1.0.0") as v1,
    ):
        for ws in (sender, v2, v1):
            await ws.join("room")
        topic = b"realtime:room"
        frame = bytes([3, 1, 1, len(topic), 3, 0, 0]) + b"1" + b"2" + topic + b"bin" + b"\x00\xff\x10"
        await sender.send_raw(frame)
        assert await v2.recv() == bytes([4, len(topic), 3, 0, 0]) + topic + b"bin" + b"\x00\xff\x10"
        await v1.expect_silence()


async def test_json_push_from_v1_reaches_v2_as_text(server):
    async with (
        await RawSocket.connect(server.url, server.token(), vsn="1.0.0") as v1,
        await RawSocket.connect(server.url, server.token()) as v2,
    ):
        await v1.join("room")
        await v2.join("room")
        body = {"type": "broadcast", "event": "hi", "payload": {"from": "v1"}}
        await v1.send("realtime:room", "broadcast", body, ref="3", join_ref="1")
        assert await v2.recv() == [None, None, "realtime:room", "broadcast", body]


async def test_oversized_payload_with_ack_gets_the_reference_error(make_server):
    server = await make_server(None, max_payload_kb=1)
    async with (
        await RawSocket.connect(server.url, server.token()) as ws,
        await RawSocket.connect(server.url, server.token()) as other,
    ):
        await ws.join("room", {"broadcast": {"ack": True}})
        await other.join("room")
        body = {"type": "broadcast", "event": "big", "payload": {"blob": "x" * 2000}}
        await ws.send("realtime:room", "broadcast", body, ref="5", join_ref="1")
        assert await ws.recv() == [
            "1",
            "5",
            "realtime:room",
            "phx_reply",
            {"status": "error", "response": "payload_size_exceeded"},
        ]
        await other.expect_silence()


async def test_too_many_channels(make_server):
    server = await make_server(None, max_channels_per_client=2)
    async with await RawSocket.connect(server.url, server.token()) as ws:
        assert reply_of(await ws.join("a"))["status"] == "ok"
        assert reply_of(await ws.join("b"))["status"] == "ok"
        assert reply_of(await ws.join("c")) == {
            "status": "error",
            "response": {"reason": "ChannelRateLimitReached: Too many channels"},
        }


async def test_malformed_frames_are_ignored_and_the_socket_keeps_serving(server):
    async with await RawSocket.connect(server.url, server.token()) as ws:
        await ws.join("room")
        for junk in (
            "not json",
            "[1,2,3]",
            '{"topic": "x"}',
            "[null, null, 5, 6, {}]",
            bytes([9, 1, 2]),
            bytes([3, 200, 1, 1, 1, 0, 1]) + b"ab",
            b"",
        ):
            await ws.send_raw(junk)
        await ws.expect_silence()
        await ws.send("phoenix", "heartbeat", {}, ref="99")
        assert reply_of(await ws.recv()) == {"status": "ok", "response": {}}


async def test_missing_and_stale_join_ref_are_tolerated(server):
    async with (
        await RawSocket.connect(server.url, server.token()) as sender,
        await RawSocket.connect(server.url, server.token()) as other,
    ):
        await sender.join("room")
        await other.join("room")
        body = {"type": "broadcast", "event": "e", "payload": {}}
        await sender.send("realtime:room", "broadcast", body, ref="2", join_ref=None)
        assert (await other.recv())[3] == "broadcast"
        await sender.send("realtime:room", "broadcast", body, ref="3", join_ref="999")
        assert (await other.recv())[3] == "broadcast"


async def test_a_channel_with_postgres_changes_bindings_joins_and_keeps_its_broadcasts(server):
    bindings = [{"event": "*", "schema": "public", "table": "t"}, None, {"event": "INSERT", "schema": "s"}]
    async with await RawSocket.connect(server.url, server.token()) as ws:
        config = {"broadcast": {"self": True}, "postgres_changes": bindings}
        reply = reply_of(await ws.join("room", config))
        assert reply["status"] == "ok"
        answered = reply["response"]["postgres_changes"]
        # The bindings come back in order, nulls dropped, each with an integer id (stable per binding).
        assert [{k: v for k, v in b.items() if k != "id"} for b in answered] == [bindings[0], bindings[2]]
        assert all(isinstance(b["id"], int) for b in answered)
        assert answered[0]["id"] != answered[1]["id"]
        system = await ws.recv()
        assert system[3] == "system"
        assert system[4] == {
            "extension": "postgres_changes",
            "status": "ok",
            "message": reasons.POSTGRES_CHANGES_NOT_SERVED,
            "channel": "room",
        }
        await ws.send(
            "realtime:room", "broadcast", {"type": "broadcast", "event": "e", "payload": {}}, join_ref="1"
        )
        assert (await ws.recv())[3] == "broadcast"


async def test_idle_socket_is_closed(make_server):
    server = await make_server(None, idle_timeout_s=0.3)
    async with await RawSocket.connect(server.url, server.token()) as ws:
        msg = await ws.recv(timeout=3)
        assert isinstance(msg, aiohttp.WSMessage)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)


@pytest.mark.parametrize(
    ("token_of", "message"),
    [
        (lambda s: None, "API key is missing"),
        (lambda s: "garbage", "The token provided is not a valid JWT"),
        (lambda s: mint_token("wrong-secret-" * 3, expires_in=60), None),
        (lambda s: s.token(expires_in=-10), "Token has expired"),
        (lambda s: s.token(role=None, expires_in=60), "Fields `role` and `exp` are required in JWT"),
        (lambda s: s.token(expires_in=None), "Fields `role` and `exp` are required in JWT"),
    ],
    ids=["missing", "garbage", "wrong-secret", "expired", "no-role", "no-exp"],
)
async def test_bad_api_keys_are_refused_before_the_upgrade(server, token_of, message):
    token = token_of(server)
    query = f"?apikey={token}&vsn=2.0.0" if token else "?vsn=2.0.0"
    async with aiohttp.ClientSession() as http:
        response = await http.get(f"{server.url}/realtime/v1/websocket{query}")
        assert response.status == 401
        body = await response.json()
    assert body == {"error": message or "Failed to validate JWT signature"}


async def test_bare_socket_path_and_header_tokens_work(server):
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(
            f"{server.url}/socket/websocket?vsn=1.0.0", headers={"Authorization": f"Bearer {server.token()}"}
        )
        await ws.send_json({"topic": "phoenix", "event": "heartbeat", "payload": {}, "ref": "1"})
        assert (await ws.receive_json())["payload"]["status"] == "ok"
        await ws.close()


async def test_jwks_tokens_at_connect_and_join(make_server):
    import json

    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec
    from jwt.algorithms import ECAlgorithm

    private = ec.generate_private_key(ec.SECP256R1())
    public = json.loads(ECAlgorithm.to_jwk(private.public_key()))
    public["kid"] = "es-1"
    server = await make_server(None, jwks=json.dumps({"keys": [public]}))
    exp = int(time.time()) + 60
    token = jwt.encode(
        {"role": "authenticated", "exp": exp}, private, algorithm="ES256", headers={"kid": "es-1"}
    )
    async with await RawSocket.connect(server.url, token) as ws:
        assert reply_of(await ws.join("room"))["status"] == "ok"
        other = jwt.encode(
            {"role": "authenticated", "exp": exp}, private, algorithm="ES256", headers={"kid": "nope"}
        )
        reply = reply_of(await ws.join("room2", access_token=other))
        assert reply["response"]["reason"].startswith(
            "JwtSignerError: Failed to generate JWT signer for key ID"
        )
    async with aiohttp.ClientSession() as http:
        forged = jwt.encode({"role": "service_role", "exp": exp}, "a-guessed-secret-" * 3, algorithm="HS256")
        response = await http.get(f"{server.url}/realtime/v1/websocket?apikey={forged}&vsn=2.0.0")
        assert response.status == 401


async def test_an_unknown_serializer_version_gets_phoenixs_403(server):
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(server.ws_url(vsn="3.0.0"))
    assert refused.value.status == 403


async def test_other_events_on_the_phoenix_topic_are_unmatched(server):
    async with await RawSocket.connect(server.url, server.token()) as ws:
        await ws.send("phoenix", "whatever", {}, ref="5", join_ref="9")
        frame = await ws.recv()
        assert frame == [
            None,
            "5",
            "phoenix",
            "phx_reply",
            {"status": "error", "response": {"reason": "unmatched topic"}},
        ]
