"""Private channels, decided by the database's own RLS policies on realtime.messages."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import aiohttp
import psycopg
import pytest

from tests.harness import scalar

from .test_delivery import decode_db_frame, run_sql
from .wire import RawSocket, reply_of

pytestmark = pytest.mark.asyncio

POLICIES = """
create policy read_rooms on realtime.messages for select to authenticated
  using ((select realtime.topic()) in ('room-read', 'room-rw'));
create policy write_rooms on realtime.messages for insert to authenticated
  with check ((select realtime.topic()) in ('room-rw', 'room-write'));
create policy read_vip on realtime.messages for select to authenticated
  using ((select realtime.topic()) = 'vip'
         and coalesce(((current_setting('request.jwt.claims', true))::jsonb ->> 'vip')::boolean, false));
create policy read_by_sub on realtime.messages for select to authenticated
  using ((select realtime.topic()) = 'mine'
         and current_setting('request.jwt.claim.sub', true) = 'user-7');
"""

UNAUTHORIZED = "Unauthorized: You do not have permissions to read from this Channel topic: "
PRIVATE = {"broadcast": {"self": False, "ack": True}, "private": True}


@pytest.fixture
async def server(make_server, db_dsn):
    run_sql(db_dsn, POLICIES)
    return await make_server(db_dsn)


async def join_private(server, subtopic, token, vsn="2.0.0"):
    ws = await RawSocket.connect(server.url, server.token(), vsn=vsn)
    reply = reply_of(await ws.join(subtopic, PRIVATE, access_token=token))
    return ws, reply


READ_MATRIX = [
    ("authenticated", "room-read", True),
    ("authenticated", "room-rw", True),
    ("authenticated", "room-write", False),
    ("authenticated", "elsewhere", False),
    ("anon", "room-read", False),
    ("anon", "room-rw", False),
    ("service_role", "room-read", False),
]


@pytest.mark.parametrize(("role", "subtopic", "allowed"), READ_MATRIX)
async def test_read_matrix_join_and_database_rows(server, db_dsn, role, subtopic, allowed):
    ws, reply = await join_private(server, subtopic, server.token(role))
    async with ws:
        if not allowed:
            assert reply == {
                "status": "error",
                "response": {"reason": f"{UNAUTHORIZED}{subtopic}"},
            }
            return
        assert reply == {"status": "ok", "response": {"postgres_changes": []}}
        run_sql(db_dsn, "select realtime.send('{\"secret\": 1}'::jsonb, 'e', %s)", (subtopic,))
        assert decode_db_frame(await ws.recv())[2]["secret"] == 1


async def test_private_rows_never_reach_public_or_unauthorized_sockets(server, db_dsn):
    async with (
        await RawSocket.connect(server.url, server.token()) as public,
        await RawSocket.connect(server.url, server.token("anon")) as anon,
    ):
        await public.join("room-read")
        assert reply_of(await anon.join("room-read", PRIVATE))["status"] == "error"
        authorized, reply = await join_private(server, "room-read", server.token("authenticated"))
        async with authorized:
            assert reply["status"] == "ok"
            run_sql(db_dsn, "select realtime.send('{\"secret\": 2}'::jsonb, 'e', 'room-read')")
            assert decode_db_frame(await authorized.recv())[2]["secret"] == 2
            await public.expect_silence()
            await anon.expect_silence()


async def test_claims_and_sub_reach_the_policies(server):
    ws, reply = await join_private(server, "vip", server.token("authenticated", vip=True))
    await ws.close()
    assert reply["status"] == "ok"
    ws, reply = await join_private(server, "vip", server.token("authenticated", vip=False))
    await ws.close()
    assert reply["status"] == "error"
    ws, reply = await join_private(server, "mine", server.token("authenticated", sub="user-7"))
    await ws.close()
    assert reply["status"] == "ok"
    ws, reply = await join_private(server, "mine", server.token("authenticated", sub="user-8"))
    await ws.close()
    assert reply["status"] == "error"


async def test_client_broadcast_needs_the_write_policy(server):
    token = server.token("authenticated")
    sender, _ = await join_private(server, "room-read", token)
    receiver, _ = await join_private(server, "room-read", token)
    async with sender, receiver:
        body = {"type": "broadcast", "event": "e", "payload": {"n": 1}}
        await sender.send("realtime:room-read", "broadcast", body, ref="50", join_ref="1")
        await sender.expect_silence()  # denied: dropped without a reply, even with ack
        await receiver.expect_silence()
    sender, _ = await join_private(server, "room-rw", token)
    receiver, _ = await join_private(server, "room-rw", token)
    async with sender, receiver:
        await sender.send("realtime:room-rw", "broadcast", body, ref="51", join_ref="1")
        assert reply_of(await sender.recv()) == {"status": "ok", "response": {}}
        assert (await receiver.recv())[4] == body


async def test_rest_private_writes_are_checked_per_topic(server):
    reader, _ = await join_private(server, "room-rw", server.token("authenticated"))
    async with reader, aiohttp.ClientSession() as http:
        batch = {
            "messages": [
                {"topic": "room-rw", "event": "e", "payload": {"n": 1}, "private": True},
                {"topic": "room-read", "event": "e", "payload": {"n": 2}, "private": True},
            ]
        }
        anon = {"Authorization": f"Bearer {server.token('anon')}"}
        user = {"Authorization": f"Bearer {server.token('authenticated')}"}
        response = await http.post(f"{server.url}/api/broadcast", json=batch, headers=anon)
        assert response.status == 202  # denied topics are skipped, the batch still answers 202
        await reader.expect_silence()
        response = await http.post(f"{server.url}/api/broadcast", json=batch, headers=user)
        assert response.status == 202
        assert (await reader.recv())[4]["payload"] == {"n": 1}
        await reader.expect_silence()

        single = f"{server.url}/api/broadcast/room-rw/events/e?private=true"
        assert (await http.post(single, json={"n": 3}, headers=anon)).status == 403
        await reader.expect_silence()
        assert (await http.post(single, json={"n": 4}, headers=user)).status == 202
        assert decode_db_frame(await reader.recv())[2] == {"n": 4}


async def test_token_refresh_revokes_when_permission_is_gone(server):
    ws, reply = await join_private(server, "vip", server.token("authenticated", vip=True))
    async with ws:
        assert reply["status"] == "ok"
        # Still allowed: no answer at all, channel stays.
        await ws.send(
            "realtime:vip", "access_token", {"access_token": server.token("authenticated", vip=True, n=2)}
        )
        await ws.expect_silence()
        await ws.send(
            "realtime:vip", "access_token", {"access_token": server.token("authenticated", vip=False)}
        )
        assert await ws.recv() == [
            "1",
            None,
            "realtime:vip",
            "system",
            {
                "extension": "system",
                "status": "error",
                "message": "You do not have permissions to read from this Channel topic: vip",
                "channel": "vip",
            },
        ]
        assert await ws.recv() == ["1", "1", "realtime:vip", "phx_close", {}]


async def test_invalid_refreshed_token_shuts_the_channel(server):
    ws, _ = await join_private(server, "room-read", server.token("authenticated"))
    async with ws:
        await ws.send("realtime:room-read", "access_token", {"access_token": "not-a-jwt"})
        system = await ws.recv()
        assert system[3] == "system"
        assert system[4]["message"] == "The token provided is not a valid JWT"
        assert (await ws.recv())[3] == "phx_close"


async def test_token_expiry_closes_the_channel(server):
    ws, reply = await join_private(server, "room-read", server.token("authenticated", expires_in=2))
    async with ws:
        assert reply["status"] == "ok"
        system = await ws.recv(timeout=6)
        assert system[3] == "system"
        assert system[4]["status"] == "error"
        assert system[4]["message"].startswith("Token has expired ")
        assert await ws.recv() == ["1", "1", "realtime:room-read", "phx_close", {}]


async def test_broken_policy_and_unknown_role_are_refused_with_a_reason(server, db_dsn, caplog):
    caplog.set_level(logging.INFO, logger="pg_realtime")
    run_sql(
        db_dsn,
        "create policy broken on realtime.messages for select to authenticated"
        " using (case when realtime.topic() = 'broken' then 1 / (length(realtime.topic()) - 6) = 1 end)",
    )
    ws, reply = await join_private(server, "broken", server.token("authenticated"))
    await ws.close()
    assert reply["status"] == "error"
    # The client is told it may not read; the database's own error goes to the log only.
    assert reply["response"]["reason"] == (
        "Unauthorized: You do not have permissions to read from this Channel topic: broken"
    )
    assert "division by zero" in caplog.text
    ws, reply = await join_private(server, "room-read", server.token("no_such_role"))
    await ws.close()
    assert reply["status"] == "error"
    assert reply["response"]["reason"] == "InvalidJWTToken: The role in the token is not allowed"
    # The server keeps serving.
    ws, reply = await join_private(server, "room-read", server.token("authenticated"))
    await ws.close()
    assert reply["status"] == "ok"


HOSTILE_TOPICS = [
    "it's",
    'quote"d',
    "100%",
    "under_score",
    "back\\slash",
    "ünïcödé-主题",
    "x'); drop table realtime.messages; --",
    "t" * 255,
]


@pytest.mark.parametrize("subtopic", HOSTILE_TOPICS, ids=range(len(HOSTILE_TOPICS)))
async def test_hostile_topics_are_handled_without_injection(server, db_dsn, subtopic):
    run_sql(
        db_dsn,
        "create policy exact_topic on realtime.messages for select to authenticated"
        " using ((select realtime.topic()) = current_setting('test.topic', true))",
    )
    run_sql(db_dsn, "select set_config('test.topic', %s, false)", (subtopic,))
    ws, reply = await join_private(server, subtopic, server.token("authenticated"))
    async with ws:
        # No setting carries over between connections, so the exact-topic policy denies;
        # what matters is a clean answer and an intact table.
        assert reply["status"] == "error"
        assert reply["response"]["reason"].endswith(subtopic)
        public = await RawSocket.connect(server.url, server.token())
        async with public:
            assert reply_of(await public.join(subtopic))["status"] == "ok"
            run_sql(db_dsn, "select realtime.send('{\"x\": 1}'::jsonb, %s, %s, false)", ("ev'%_\\", subtopic))
            topic, event, payload, _ = decode_db_frame(await public.recv())
            assert (topic, event, payload["x"]) == (subtopic, "ev'%_\\", 1)
    assert run_sql(db_dsn, "select count(*) from realtime.messages where topic = %s", (subtopic,))[0][0] == 1


async def test_join_with_token_in_socket_only(server):
    """Without an access_token in the join, the socket's apikey decides."""
    async with await RawSocket.connect(server.url, server.token("authenticated")) as ws:
        assert reply_of(await ws.join("room-read", PRIVATE))["status"] == "ok"
    async with await RawSocket.connect(server.url, server.token("anon")) as ws:
        assert reply_of(await ws.join("room-read", PRIVATE))["status"] == "error"


async def test_join_token_errors_use_the_reference_codes(server):
    async with await RawSocket.connect(server.url, server.token()) as ws:
        reply = reply_of(await ws.join("room-read", PRIVATE, access_token="garbage"))
        assert reply["response"]["reason"] == "MalformedJWT: The token provided is not a valid JWT"
        expired = server.token("authenticated", expires_in=-5)
        reply = reply_of(await ws.join("room-read", PRIVATE, access_token=expired))
        assert reply["response"]["reason"].startswith("InvalidJWTToken: Token has expired ")


async def test_probes_leave_nothing_behind(server, db_dsn):
    for _ in range(5):
        ws, _ = await join_private(server, "room-rw", server.token("authenticated"))
        async with ws:
            await ws.send(
                "realtime:room-rw", "broadcast", {"type": "broadcast", "event": "e", "payload": {}}, ref="9"
            )
            await ws.recv()
    await asyncio.sleep(0.1)
    assert run_sql(db_dsn, "select count(*) from realtime.messages")[0][0] == 0
    with psycopg.connect(db_dsn) as conn:
        assert scalar(conn, "select count(*) from pg_stat_activity where state = 'idle in transaction'") == 0


async def test_replay_delivers_recent_private_messages_first(server, db_dsn):
    since = int(time.time() * 1000) - 60_000
    for n in range(3):
        run_sql(db_dsn, "select realtime.send(jsonb_build_object('n', %s::int), 'e', 'room-read')", (n,))
    async with await RawSocket.connect(server.url, server.token("authenticated"), vsn="1.0.0") as ws:
        config = {"broadcast": {"replay": {"since": since, "limit": 2}}, "private": True}
        assert reply_of(await ws.join("room-read", config))["status"] == "ok"
        frames = [await ws.recv(), await ws.recv()]
        assert [f["payload"]["payload"]["n"] for f in frames] == [1, 2]
        assert all(f["payload"]["meta"]["replayed"] is True for f in frames)
        bad = reply_of(await ws.join("room-rw", {"broadcast": {"replay": {}}, "private": True}))
        assert bad["response"]["reason"].startswith("UnableToReplayMessages")
        public = reply_of(await ws.join("pub", {"broadcast": {"replay": {"since": since}}, "private": False}))
        assert (
            public["response"]["reason"]
            == "UnableToReplayMessages: Replay is not allowed for public channels"
        )


async def test_sidecar_runs_as_the_least_privileged_role_the_readme_describes(make_server, db_dsn):
    """Not a superuser: BYPASSRLS, grant_access, maintain, and membership in the roles it switches to."""
    from psycopg.conninfo import make_conninfo

    role = f"sidecar_{uuid.uuid4().hex[:8]}"
    run_sql(db_dsn, POLICIES)
    run_sql(
        db_dsn,
        f"""create role {role} login bypassrls;
            select realtime.grant_access('{role}');
            grant execute on function realtime.maintain(interval, integer) to {role};
            grant anon, authenticated, service_role to {role};""",
    )
    try:
        server = await make_server(make_conninfo(db_dsn, user=role))
        await server.server.database.maintain(server.server.settings.retention)
        ws, reply = await join_private(server, "room-rw", server.token("authenticated"))
        async with ws:
            assert reply["status"] == "ok"
            await ws.send(
                "realtime:room-rw", "broadcast", {"type": "broadcast", "event": "e", "payload": {}}, ref="5"
            )
            assert reply_of(await ws.recv()) == {"status": "ok", "response": {}}
            run_sql(db_dsn, "select realtime.send('{\"n\": 1}'::jsonb, 'e', 'room-rw')")
            assert decode_db_frame(await ws.recv())[2]["n"] == 1
        ws, reply = await join_private(server, "room-rw", server.token("anon"))
        await ws.close()
        assert reply["status"] == "error"
        await server.stop()
    finally:
        run_sql(db_dsn, f"drop owned by {role}; drop role {role}")
