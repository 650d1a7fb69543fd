"""Attacks a client with the (public) anon key or a crafted token can make, replayed against a
running sidecar; each asserts that the attack fails."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp
import orjson
import pytest
from pg_realtime.config import Settings

from .test_delivery import run_sql
from .wire import RawSocket, reply_of

pytestmark = pytest.mark.asyncio

POLICIES = """
create policy read_rooms on realtime.messages for select to authenticated
  using ((select realtime.topic()) like 'room-%');
"""


def frame_event(frame: object) -> str | None:
    if isinstance(frame, list):
        return str(frame[3])
    if isinstance(frame, dict):
        event = frame.get("event")
        return event if isinstance(event, str) else None
    return None


# -- an expired socket token authorizes nothing ----------------------------------------------------
async def test_an_expired_socket_token_cannot_join_or_replay(make_server, db_dsn):
    run_sql(db_dsn, POLICIES)
    server = await make_server(db_dsn)
    with __import__("psycopg").connect(db_dsn, autocommit=True) as conn:
        for n in range(3):
            conn.execute("select realtime.send(%s::jsonb, 'e', 'room-1', true)", (f'{{"n": {n}}}',))
    short = server.token("authenticated", expires_in=2)
    async with await RawSocket.connect(server.url, short) as ws:
        # A public channel joined with a token of its own keeps the socket open past the socket
        # token's expiry; heartbeats keep it from going idle.
        assert reply_of(await ws.join("lobby", access_token=server.token()))["status"] == "ok"
        for _ in range(4):
            await ws.send("phoenix", "heartbeat", {}, ref=ws.next_ref())
            await ws.recv_until(lambda f: frame_event(f) == "phx_reply")
            await asyncio.sleep(0.8)
        # A join without a token of its own falls back on the socket's, which has expired.
        config = {"private": True, "broadcast": {"replay": {"since": 0}}}
        reply = reply_of(await ws.join("room-1", config))
        assert reply["status"] == "error"
        assert reply["response"]["reason"].startswith("InvalidJWTToken: Token has expired ")
        await ws.expect_silence(0.5)  # no replayed row follows


async def test_a_socket_whose_token_expired_is_closed_once_it_holds_no_channel(make_server):
    server = await make_server(None)
    async with await RawSocket.connect(server.url, server.token(expires_in=1)) as ws:
        closed = await ws.recv_until(lambda f: isinstance(f, aiohttp.WSMessage), timeout=5)
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.ws.close_code == 1008


# -- roles -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("role", ["none", "", "postgres"])
async def test_a_token_cannot_name_the_sidecar_or_a_superuser(make_server, db_dsn, role):
    server = await make_server(db_dsn)
    async with aiohttp.ClientSession() as http:
        url = server.ws_url(token=server.token(role))
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(url)
    assert refused.value.status == 401


async def test_a_superuser_role_allowed_by_configuration_still_reads_nothing_private(make_server, db_dsn):
    """Even when an operator lists a superuser among the roles, the probes refuse to become it."""
    run_sql(db_dsn, POLICIES)
    server = await make_server(db_dsn, allowed_roles="anon,authenticated,service_role,postgres")
    async with await RawSocket.connect(server.url, server.token()) as ws:
        reply = reply_of(await ws.join("secret", {"private": True}, access_token=server.token("postgres")))
    assert reply["status"] == "error"
    assert reply["response"]["reason"].startswith("Unauthorized: ")


# -- abuse limits ------------------------------------------------------------------------------------
async def test_the_default_limits_are_on() -> None:
    settings = Settings()
    assert settings.max_channels_per_client == 100
    assert settings.max_client_joins_per_second == 100
    assert settings.max_client_events_per_second == 100
    assert settings.max_connections_per_address > 0
    assert settings.no_channel_timeout_s > 0
    assert settings.refused_join_delay_ms == 5000
    assert settings.rest_max_batch_messages > 0 and settings.rest_max_batch_private_topics > 0


async def test_the_connection_cap_follows_the_file_descriptor_limit(make_server):
    import resource

    server = await make_server(None)
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert 0 < server.server.max_connections < soft


async def test_one_address_cannot_take_every_socket(make_server):
    server = await make_server(None, max_connections_per_address=3)
    sockets = [await RawSocket.connect(server.url, server.token()) for _ in range(3)]
    try:
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await RawSocket.connect(server.url, server.token())
        assert refused.value.status == 429
    finally:
        for ws in sockets:
            await ws.close()
    # A slot frees when a socket goes.
    async with await RawSocket.connect(server.url, server.token()):
        pass


async def test_forwarded_for_counts_only_from_a_trusted_proxy(make_server):
    server = await make_server(None, max_connections_per_address=1, trusted_proxies="127.0.0.1/32")
    async with aiohttp.ClientSession() as http:
        url = server.ws_url()
        first = await http.ws_connect(url, headers={"X-Forwarded-For": "203.0.113.1"})
        second = await http.ws_connect(url, headers={"X-Forwarded-For": "203.0.113.2"})
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(url, headers={"X-Forwarded-For": "203.0.113.1"})
        # A client cannot pass itself off as someone else by prepending an address.
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await http.ws_connect(url, headers={"X-Forwarded-For": "198.51.100.9, 203.0.113.2"})
        await first.close()
        await second.close()


async def test_joining_too_fast_closes_the_socket_by_default(make_server):
    server = await make_server(None)
    async with await RawSocket.connect(server.url, server.token()) as ws:
        for n in range(101):
            await ws.send(f"realtime:r{n}", "phx_join", {"config": {}}, ref=str(n), join_ref=str(n))
        closed = await ws.recv_until(lambda f: isinstance(f, aiohttp.WSMessage), timeout=10)
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        assert ws.ws.close_code == 1008


async def test_a_socket_without_channels_is_closed(make_server):
    server = await make_server(None, no_channel_timeout_s=0.5)
    async with await RawSocket.connect(server.url, server.token()) as ws:
        await ws.send("phoenix", "heartbeat", {}, ref="1")  # heartbeats alone do not keep it
        closed = await ws.recv_until(lambda f: isinstance(f, aiohttp.WSMessage), timeout=5)
        assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)


async def test_a_refused_join_is_answered_late_without_holding_up_the_socket(make_server):
    server = await make_server(None, refused_join_delay_ms=1000)
    async with await RawSocket.connect(server.url, server.token()) as ws:
        started = time.monotonic()
        await ws.send(
            "realtime:x", "phx_join", {"config": {}, "access_token": "garbage"}, ref="1", join_ref="1"
        )
        await ws.send("phoenix", "heartbeat", {}, ref="2")
        heartbeat = await ws.recv()
        assert heartbeat[1] == "2" and time.monotonic() - started < 0.9
        refusal = await ws.recv(timeout=3)
        assert refusal[1] == "1" and refusal[4]["status"] == "error"
        assert time.monotonic() - started >= 1.0


async def test_a_rest_batch_of_many_private_topics_is_refused(make_server, db_dsn):
    server = await make_server(db_dsn)
    messages = [{"topic": f"t{n}", "event": "e", "payload": {}, "private": True} for n in range(101)]
    async with aiohttp.ClientSession() as http:
        response = await http.post(
            f"{server.url}/api/broadcast",
            json={"messages": messages},
            headers={"Authorization": f"Bearer {server.token('authenticated')}"},
        )
        assert response.status == 429
        assert await response.json() == {
            "message": "Too many messages to broadcast, please reduce the batch size"
        }


# -- logs ----------------------------------------------------------------------------------------------
async def test_hostile_topics_neither_flood_nor_forge_the_log(make_server, caplog):
    caplog.set_level(logging.INFO, logger="pg_realtime")
    server = await make_server(None)
    async with await RawSocket.connect(server.url, server.token()) as ws:
        reply = reply_of(await ws.join("t" * 1_000_000))
        assert reply["response"]["reason"] == "TopicNameTooLong: The topic name must be at most 255 bytes"
        forged = "x\n2026-01-01 00:00:00 WARNING pg_realtime: database stream down"
        for n in range(30):
            await ws.send(
                f"realtime:{forged}{n}",
                "phx_join",
                {"config": {}, "access_token": "garbage"},
                ref=str(n),
                join_ref=str(n),
            )
        await ws.recv_until(lambda f: isinstance(f, list) and f[1] == "29")
    lines = caplog.text.splitlines()
    assert not any(
        line.startswith("2026-01-01") or "WARNING pg_realtime: database" in line.split(":", 1)[0]
        for line in lines
    )
    assert all("\n" not in record.getMessage() for record in caplog.records)
    assert len(caplog.text) < 20_000
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert 1 <= len(refusals) <= 3  # rate-limited: one line per reason and period


async def test_a_refused_handshake_is_answered_after_a_backoff(make_server):
    server = await make_server(None, refused_connect_delay_ms=500)
    async with aiohttp.ClientSession() as http:
        started = time.monotonic()
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await http.ws_connect(server.ws_url(token="not-a-jwt"))
        assert refused.value.status == 401
        assert time.monotonic() - started >= 0.5


async def test_healthz_tells_why_only_to_a_service_role_key(make_server, fresh_cluster):
    # The reason of a stream that cannot connect quotes the server's address; /healthz answers
    # anyone who can reach the port, so without the key it says the status and the state only.
    cluster = fresh_cluster()
    dsn = cluster.dsn()
    run_sql(dsn, "create extension realtime")
    server = await make_server(dsn)
    await asyncio.to_thread(cluster.stop, "fast")
    key = {"Authorization": f"Bearer {server.token('service_role')}"}
    unreachable = f"port {cluster.port} failed"
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 20
        while True:
            async with http.get(f"{server.url}/healthz", headers=key) as response:
                detailed = await response.json()
            # The reader finds out at its next check (a paused one within a second): until then
            # the cluster bus may be the first to say the database is gone.
            if detailed.get("state") == "stream_down" and unreachable in detailed.get("reason", ""):
                break
            assert time.monotonic() < deadline, f"healthz never said the database is unreachable: {detailed}"
            await asyncio.sleep(0.05)
        assert response.status == 503
        assert detailed["status"] == "unavailable" and detailed["state"] == "stream_down"
        assert detailed["reason"].startswith("database unreachable: ")
        for headers in (
            {},
            {"Authorization": f"Bearer {server.token('anon')}"},
            {"apikey": server.token("authenticated")},
            {"Authorization": "Bearer not-a-token"},
        ):
            async with http.get(f"{server.url}/healthz", headers=headers) as response:
                assert response.status == 503
                text = await response.text()
            assert orjson.loads(text) == {"status": "unavailable", "state": "stream_down"}, headers
            assert str(cluster.port) not in text and cluster.host not in text
        async with http.get(
            f"{server.url}/healthz", headers={"apikey": server.token("service_role")}
        ) as response:
            assert unreachable in (await response.json())["reason"]
        await asyncio.to_thread(cluster.start)
        await server.wait_live(timeout=20)
        async with http.get(f"{server.url}/healthz") as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok", "state": "live"}
