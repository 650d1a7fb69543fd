"""The REST broadcast API: statuses, bodies, CORS, and what subscribers receive."""

from __future__ import annotations

import aiohttp
import pytest

from .wire import RawSocket

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def server(make_server):
    return await make_server(None)


def auth(server, role="service_role"):
    return {"Authorization": f"Bearer {server.token(role)}"}


@pytest.mark.parametrize("prefix", ["/realtime/v1/api", "/api"])
async def test_batch_answers_202_and_reaches_both_formats(server, prefix):
    async with (
        await RawSocket.connect(server.url, server.token()) as v2,
        await RawSocket.connect(server.url, server.token(), vsn="1.0.0") as v1,
        aiohttp.ClientSession() as http,
    ):
        await v2.join("room1")
        await v1.join("room1")
        body = {"messages": [{"topic": "room1", "event": "e", "payload": {"n": 1}, "private": False}]}
        response = await http.post(f"{server.url}{prefix}/broadcast", json=body, headers=auth(server))
        assert response.status == 202
        assert await response.read() == b""
        expected = {"type": "broadcast", "event": "e", "payload": {"n": 1}}
        assert await v2.recv() == [None, None, "realtime:room1", "broadcast", expected]
        assert await v1.recv() == {
            "topic": "realtime:room1",
            "event": "broadcast",
            "payload": expected,
            "ref": None,
        }


async def test_batch_id_becomes_meta(server):
    async with await RawSocket.connect(server.url, server.token()) as ws, aiohttp.ClientSession() as http:
        await ws.join("room1")
        body = {
            "messages": [
                {"topic": "room1", "event": "e", "payload": {}, "id": "0b9d7a4e-8c1f-4d2a-9c3e-5f6a7b8c9d0e"}
            ]
        }
        assert (await http.post(f"{server.url}/api/broadcast", json=body, headers=auth(server))).status == 202
        assert (await ws.recv())[4]["meta"] == {"id": "0b9d7a4e-8c1f-4d2a-9c3e-5f6a7b8c9d0e"}


async def test_apikey_header_is_accepted(server):
    async with aiohttp.ClientSession() as http:
        body = {"messages": [{"topic": "t", "event": "e", "payload": {}}]}
        response = await http.post(
            f"{server.url}/api/broadcast", json=body, headers={"apikey": server.token()}
        )
        assert response.status == 202


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}, {"apikey": "x.y.z"}],
    ids=["none", "garbage", "basic", "bad-apikey"],
)
async def test_unauthorized(server, headers):
    async with aiohttp.ClientSession() as http:
        body = {"messages": [{"topic": "t", "event": "e", "payload": {}}]}
        response = await http.post(f"{server.url}/api/broadcast", json=body, headers=headers)
        assert response.status == 401
        assert await response.json() == {"message": "Unauthorized"}
        single = await http.post(f"{server.url}/api/broadcast/t/events/e", json={}, headers=headers)
        assert single.status == 401


async def test_validation_errors_are_422_per_message(server):
    async with aiohttp.ClientSession() as http:
        body = {
            "messages": [
                {"topic": "t", "event": "e", "payload": {}},
                {"topic": "", "payload": "not-a-map"},
            ]
        }
        response = await http.post(f"{server.url}/api/broadcast", json=body, headers=auth(server))
        assert response.status == 422
        assert await response.json() == {
            "errors": {
                "messages": [
                    {},
                    {"topic": ["can't be blank"], "event": ["can't be blank"], "payload": ["is invalid"]},
                ]
            }
        }
        empty = await http.post(f"{server.url}/api/broadcast", json={"messages": []}, headers=auth(server))
        assert empty.status == 422


async def test_oversized_rest_payload_is_422(make_server):
    server = await make_server(None, max_payload_kb=1)
    async with aiohttp.ClientSession() as http:
        small = {"topic": "t", "event": "e", "payload": {"x": "y"}}
        big = {"topic": "t", "event": "e", "payload": {"x": "y" * 5000}}
        body = {"messages": [small, big]}
        response = await http.post(f"{server.url}/api/broadcast", json=body, headers=auth(server))
        assert response.status == 422
        # The error is inside the offending entry, as upstream's per-message changesets.
        assert await response.json() == {
            "errors": {"messages": [{}, {"payload": ["Payload size exceeds tenant limit"]}]}
        }


async def test_single_json_goes_out_as_kind4_and_v1_json(server):
    async with (
        await RawSocket.connect(server.url, server.token()) as v2,
        await RawSocket.connect(server.url, server.token(), vsn="1.0.0") as v1,
        aiohttp.ClientSession() as http,
    ):
        await v2.join("room 1/a")
        await v1.join("room 1/a")
        response = await http.post(
            f"{server.url}/realtime/v1/api/broadcast/room%201%2Fa/events/my%20event",
            data=b'{"n": 2}',
            headers={**auth(server), "Content-Type": "application/json"},
        )
        assert response.status == 202
        topic = b"realtime:room 1/a"
        assert await v2.recv() == bytes([4, len(topic), 8, 0, 1]) + topic + b"my event" + b'{"n":2}'
        assert (await v1.recv())["payload"] == {"event": "my event", "payload": {"n": 2}, "type": "broadcast"}


async def test_single_binary_reaches_v2_only(server):
    async with (
        await RawSocket.connect(server.url, server.token()) as v2,
        await RawSocket.connect(server.url, server.token(), vsn="1.0.0") as v1,
        aiohttp.ClientSession() as http,
    ):
        await v2.join("r")
        await v1.join("r")
        response = await http.post(
            f"{server.url}/api/broadcast/r/events/b",
            data=b"\x01\x02",
            headers={**auth(server), "Content-Type": "application/octet-stream"},
        )
        assert response.status == 202
        assert await v2.recv() == bytes([4, 10, 1, 0, 0]) + b"realtime:r" + b"b" + b"\x01\x02"
        await v1.expect_silence()


async def test_single_rejects_other_media_types(server):
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            f"{server.url}/api/broadcast/r/events/e",
            data=b"hello",
            headers={**auth(server), "Content-Type": "text/plain"},
        )
        assert response.status == 415
        assert await response.json() == {
            "error": "Unsupported Media Type. Use application/json or application/octet-stream"
        }


async def test_single_wraps_non_object_json(server):
    async with await RawSocket.connect(server.url, server.token(), vsn="1.0.0") as v1:
        await v1.join("r")
        async with aiohttp.ClientSession() as http:
            response = await http.post(
                f"{server.url}/api/broadcast/r/events/e", json=[1, 2], headers=auth(server)
            )
        assert response.status == 202
        assert (await v1.recv())["payload"]["payload"] == {"_json": [1, 2]}


async def test_cors_preflight_and_headers(server):
    async with aiohttp.ClientSession() as http:
        preflight = await http.options(
            f"{server.url}/realtime/v1/api/broadcast",
            headers={
                "Origin": "http://example.test",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, apikey, content-type",
            },
        )
        assert preflight.status in (200, 204)
        assert preflight.headers["Access-Control-Allow-Origin"] == "*"
        assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
        assert "apikey" in preflight.headers["Access-Control-Allow-Headers"]
        response = await http.post(
            f"{server.url}/api/broadcast",
            json={"messages": [{"topic": "t", "event": "e", "payload": {}}]},
            headers={**auth(server), "Origin": "http://example.test"},
        )
        assert response.headers["Access-Control-Allow-Origin"] == "*"


async def test_batch_entries_are_cast_and_checked_as_upstream(server):
    async with aiohttp.ClientSession() as http:
        bad = {
            "messages": [{"topic": "t", "event": "e", "payload": {}, "id": "not-a-uuid", "private": "maybe"}]
        }
        response = await http.post(f"{server.url}/api/broadcast", json=bad, headers=auth(server))
        assert response.status == 422
        assert await response.json() == {
            "errors": {"messages": [{"id": ["is invalid"], "private": ["is invalid"]}]}
        }


async def test_single_without_content_type_sends_an_empty_payload(server):
    async with (
        await RawSocket.connect(server.url, server.token(), vsn="1.0.0") as v1,
        aiohttp.ClientSession() as http,
    ):
        await v1.join("plain")
        response = await http.post(
            f"{server.url}/api/broadcast/plain/events/e",
            data=b'{"n": 1}',
            headers=auth(server),
            skip_auto_headers=["Content-Type"],
        )
        assert response.status == 202
        frame = await v1.recv()
        assert frame["payload"]["payload"] == {}
