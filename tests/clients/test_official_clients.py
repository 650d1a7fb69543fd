"""The official clients, unchanged, against pg-realtime: Supabase's Broadcast guide, example by example.

realtime-js and supabase-js run in Node (tests/clients/js/driver.js); realtime-py and
supabase-py run in this process. Every server here has a database, so SQL sends, REST and
private channels are all live.
"""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.sidecar.test_delivery import run_sql

from .drivers import JsDriver, b64, py_close, py_subscribe, sb_subscribe, unb64

pytestmark = pytest.mark.asyncio

JS_FLAVOURS = [
    ("realtime-js", "2.0.0"),
    ("realtime-js", "1.0.0"),
    ("supabase-js", "2.0.0"),
    ("supabase-js", "1.0.0"),
]
FLAVOUR_IDS = [f"{kind}-v{vsn[0]}" for kind, vsn in JS_FLAVOURS]


@pytest.fixture
async def js():
    async with JsDriver() as driver:
        yield driver


@pytest.mark.parametrize(("kind", "vsn"), JS_FLAVOURS, ids=FLAVOUR_IDS)
async def test_js_subscribe_receive_with_filter_and_wildcard_self_and_ack(live_server, js, kind, vsn):
    s = live_server
    await js.connect(s.url, s.token(), kind=kind, vsn=vsn)
    config = {"broadcast": {"self": True, "ack": True}}
    filtered = await js.channel("room1", channel="filtered", config=config, events=["cursor-pos"])
    assert await js.subscribe(filtered) == {"status": "SUBSCRIBED", "error": None}
    await js.connect(s.url, s.token(), kind=kind, vsn=vsn, client="second")
    everything = await js.channel("room1", client="second", channel="everything", events=["*"])
    assert (await js.subscribe(everything))["status"] == "SUBSCRIBED"

    assert await js.send(filtered, "cursor-pos", {"x": 1, "y": 2}) == "ok"  # ack: the server replied ok
    mine = await js.next_broadcast(filtered, "cursor-pos")
    assert mine["payload"] == {"x": 1, "y": 2}  # self: true
    theirs = await js.next_broadcast(everything)
    assert theirs["event"] == "cursor-pos" and theirs["payload"] == {"x": 1, "y": 2}

    assert await js.send(filtered, "other-event", {"z": 3}) == "ok"
    assert (await js.next_broadcast(everything))["event"] == "other-event"
    await js.no_event(lambda e: e.get("event") == "broadcast" and e.get("channel") == filtered, within=0.3)


@pytest.mark.parametrize(("kind", "vsn"), JS_FLAVOURS, ids=FLAVOUR_IDS)
async def test_js_self_false_means_others_only(live_server, js, kind, vsn):
    s = live_server
    await js.connect(s.url, s.token(), kind=kind, vsn=vsn)
    sender = await js.channel("room2", channel="sender", config={"broadcast": {"self": False}})
    await js.subscribe(sender)
    client, _ch, q = await py_subscribe(s.url, s.token(), "room2", {"broadcast": {"self": False}})
    try:
        assert await js.send(sender, "hello", {"from": kind}) == "ok"
        got = await q.next()
        assert got["event"] == "hello" and got["payload"] == {"from": kind}
        await js.no_event(lambda e: e.get("event") == "broadcast", within=0.3)
    finally:
        await py_close(client)


async def test_js_send_before_subscribe_falls_back_to_rest(live_server, js):
    s = live_server
    client, _ch, q = await py_subscribe(s.url, s.token(), "lobby", {"broadcast": {"self": False}})
    try:
        await js.connect(s.url, s.token(), kind="supabase-js", vsn="2.0.0")
        early = await js.channel("lobby", channel="early")
        assert await js.send(early, "early", {"n": 1}) == "ok"  # not joined: REST batch endpoint
        got = await q.next()
        assert got["event"] == "early" and got["payload"] == {"n": 1}
    finally:
        await py_close(client)


@pytest.mark.parametrize("kind", ["realtime-js", "supabase-js"])
async def test_js_http_send_json_and_binary(live_server, js, kind):
    s = live_server
    await js.connect(s.url, s.token(), kind=kind, vsn="2.0.0")
    ch = await js.channel("files", config={"broadcast": {"self": True}})
    await js.subscribe(ch)
    assert await js.http_send(ch, "json-event", {"n": 2}) == {"success": True}
    assert (await js.next_broadcast(ch, "json-event"))["payload"] == {"n": 2}
    assert await js.http_send(ch, "bin-event", b"\x00\x01\xfe") == {"success": True}
    assert unb64((await js.next_broadcast(ch, "bin-event"))["payload"]) == b"\x00\x01\xfe"


async def test_js_binary_push_reaches_v2_as_bytes(live_server, js):
    s = live_server
    await js.connect(s.url, s.token(), kind="realtime-js", vsn="2.0.0")
    ch = await js.channel("bin", config={"broadcast": {"self": True, "ack": True}})
    await js.subscribe(ch)
    assert (
        await js.call(
            {"cmd": "send", "channel": ch, "event": "raw", "payload": b64(b"\xff\x00"), "binary": True}
        )
        == "ok"
    )
    assert unb64((await js.next_broadcast(ch, "raw"))["payload"]) == b"\xff\x00"


async def test_v1_and_v2_subscribers_receive_each_others_messages(live_server, js):
    s = live_server
    await js.connect(s.url, s.token(), kind="realtime-js", vsn="2.0.0", client="v2")
    await js.connect(s.url, s.token(), kind="realtime-js", vsn="1.0.0", client="v1")
    v2 = await js.channel("mixed", client="v2", channel="v2")
    v1 = await js.channel("mixed", client="v1", channel="v1")
    await js.subscribe(v2)
    await js.subscribe(v1)
    client, pych, q = await py_subscribe(s.url, s.token(), "mixed", {"broadcast": {"self": False}})
    try:
        await js.send(v2, "from-v2", {"a": 1})
        assert (await js.next_broadcast(v1, "from-v2"))["payload"] == {"a": 1}
        assert (await q.next())["payload"] == {"a": 1}
        await js.send(v1, "from-v1", {"b": 2})
        assert (await js.next_broadcast(v2, "from-v1"))["payload"] == {"b": 2}
        assert (await q.next())["payload"] == {"b": 2}
        await pych.send_broadcast("from-py", {"c": 3})
        assert (await js.next_broadcast(v2, "from-py"))["payload"] == {"c": 3}
        assert (await js.next_broadcast(v1, "from-py"))["payload"] == {"c": 3}
    finally:
        await py_close(client)


async def test_rest_batch_as_the_guide_curl_line_sends_it(live_server):
    s = live_server
    client, _ch, q = await py_subscribe(s.url, s.token(), "test", {"broadcast": {"self": False}})
    try:
        async with aiohttp.ClientSession() as http:
            response = await http.post(
                f"{s.url}/realtime/v1/api/broadcast",
                headers={"apikey": s.token("service_role"), "Content-Type": "application/json"},
                data='{"messages":[{"topic":"test","event":"event","payload":{"test":"test"}}]}',
            )
            assert response.status == 202
        got = await q.next()
        assert got["event"] == "event" and got["payload"] == {"test": "test"}
    finally:
        await py_close(client)


async def test_realtime_py_self_ack_http_send_and_filter(live_server):
    s = live_server
    client, ch, q = await py_subscribe(
        s.url, s.token(), "pyroom", {"broadcast": {"self": True, "ack": True}}, events=["only-this"]
    )
    try:
        await ch.send_broadcast("only-this", {"n": 1})
        await ch.send_broadcast("not-this", {"n": 2})
        got = await q.next()
        assert got["event"] == "only-this" and got["payload"] == {"n": 1}
        await ch.http_send("only-this", {"n": 3})
        assert (await q.next())["payload"] == {"n": 3}
        await asyncio.sleep(0.2)
        assert q.empty()
    finally:
        await py_close(client)


async def test_supabase_py_receives_sql_and_client_messages(live_server, db_dsn):
    s = live_server
    sb, ch, q = await sb_subscribe(s.url, s.token(), "sbroom", {"broadcast": {"self": True}})
    try:
        await ch.send_broadcast("hi", {"n": 1})
        assert (await q.next())["payload"] == {"n": 1}
        run_sql(db_dsn, "select realtime.send('{\"n\": 2}'::jsonb, 'from-sql', 'sbroom', false)")
        got = await q.next()
        assert got["event"] == "from-sql" and got["payload"]["n"] == 2
    finally:
        await py_close(sb)


async def test_sql_send_reaches_every_official_client(live_server, js, db_dsn):
    s = live_server
    await js.connect(s.url, s.token(), kind="realtime-js", vsn="2.0.0", client="rjs")
    await js.connect(s.url, s.token(), kind="supabase-js", vsn="1.0.0", client="sbjs")
    rjs = await js.channel("news", client="rjs", channel="rjs")
    sbjs = await js.channel("news", client="sbjs", channel="sbjs")
    other = await js.channel("sports", client="rjs", channel="other")
    await js.connect(s.url, s.token(), kind="supabase-js", vsn="2.0.0", client="priv")
    private = await js.channel("news", client="priv", channel="private", config={"private": True})
    for ch in (rjs, sbjs, other):
        assert (await js.subscribe(ch))["status"] == "SUBSCRIBED"
    # Without a policy a private join is refused, as the reference server does.
    assert (await js.subscribe(private))["status"] == "CHANNEL_ERROR"
    client, _ch, q = await py_subscribe(s.url, s.token(), "news", {"broadcast": {"self": False}})
    try:
        run_sql(db_dsn, "select realtime.send('{\"headline\": \"x\"}'::jsonb, 'published', 'news', false)")
        row_id = run_sql(db_dsn, "select id::text from realtime.messages")[0][0]
        for ch in (rjs, sbjs):
            msg = await js.next_broadcast(ch, "published")
            assert msg["payload"] == {"headline": "x", "id": row_id}
        got = await q.next()
        assert got["event"] == "published" and got["payload"]["headline"] == "x"
        await js.no_event(
            lambda e: e.get("event") == "broadcast" and e.get("channel") in (other, private), within=0.3
        )
    finally:
        await py_close(client)


PRIVATE_POLICIES = """
create policy read_team on realtime.messages for select to authenticated
  using ((select realtime.topic()) = 'team' and realtime.messages.extension = 'broadcast');
create policy write_team on realtime.messages for insert to authenticated
  with check ((select realtime.topic()) = 'team' and realtime.messages.extension = 'broadcast');
create table public.tasks (id int primary key, title text);
create function public.tasks_broadcast() returns trigger language plpgsql as $$
begin
  perform realtime.broadcast_changes(
    'team', tg_op, tg_op, tg_table_name, tg_table_schema, new, old, tg_level);
  return null;
end $$;
create trigger tasks_broadcast after insert or update or delete on public.tasks
  for each row execute function public.tasks_broadcast();
"""


async def test_private_channels_with_supabase_js_and_realtime_py(live_server, js, db_dsn):
    s = live_server
    user = s.token("authenticated", sub="user-1")
    await js.connect(s.url, s.token("anon"), kind="supabase-js", vsn="2.0.0", access_token=user)
    ch = await js.channel("team", config={"private": True, "broadcast": {"self": True, "ack": True}})
    first = await js.subscribe(ch)
    assert first["status"] == "CHANNEL_ERROR"
    assert "Unauthorized: You do not have permissions to read from this Channel topic: team" in first["error"]
    await js.unsubscribe(ch)

    run_sql(db_dsn, PRIVATE_POLICIES)
    ch = await js.channel(
        "team", channel="team2", config={"private": True, "broadcast": {"self": True, "ack": True}}
    )
    assert (await js.subscribe(ch))["status"] == "SUBSCRIBED"
    client, _pych, q = await py_subscribe(
        s.url, user, "team", {"broadcast": {"self": False}, "private": True}
    )
    try:
        assert await js.send(ch, "chat", {"text": "hi"}) == "ok"
        assert (await q.next())["payload"] == {"text": "hi"}
        run_sql(db_dsn, "select realtime.send('{\"secret\": true}'::jsonb, 'note', 'team')")
        assert (await js.next_broadcast(ch, "note"))["payload"]["secret"] is True
        assert (await q.next())["payload"]["secret"] is True
        run_sql(db_dsn, "insert into public.tasks values (1, 'write tests')")
        insert = await js.next_broadcast(ch, "INSERT")
        assert set(insert["payload"]) == {"id", "schema", "table", "operation", "record", "old_record"}
        assert insert["payload"]["record"] == {"id": 1, "title": "write tests"}
        assert (await q.next())["event"] == "INSERT"
    finally:
        await py_close(client)


async def test_realtime_py_private_refused_then_token_expiry(live_server, db_dsn):
    s = live_server
    run_sql(db_dsn, PRIVATE_POLICIES)
    client, _ch, q = await py_subscribe(
        s.url, s.token("anon"), "team", {"private": True}, expect="CHANNEL_ERROR"
    )
    await py_close(client)
    assert "Unauthorized" in (q.statuses[0][1] or "")

    short = s.token("authenticated", expires_in=2)
    client, _ch, q = await py_subscribe(s.url, short, "team", {"private": True}, auto_reconnect=False)
    try:
        assert q.statuses[0][0] == "SUBSCRIBED"
        await q.wait_status("CLOSED", timeout=8)
        # realtime-py turns the system error into CHANNEL_ERROR, then phx_close closes the channel.
        errors = [error or "" for status, error in q.statuses if status == "CHANNEL_ERROR"]
        assert any("Token has expired" in error for error in errors), q.statuses
    finally:
        await py_close(client)


async def test_supabase_js_token_refresh_and_revocation(live_server, js, db_dsn):
    s = live_server
    run_sql(
        db_dsn,
        "create policy read_vip on realtime.messages for select to authenticated"
        " using ((select realtime.topic()) = 'vip'"
        " and coalesce((current_setting('request.jwt.claims', true)::jsonb ->> 'vip')::boolean, false))",
    )
    await js.connect(
        s.url,
        s.token("anon"),
        kind="realtime-js",
        vsn="2.0.0",
        access_token=s.token("authenticated", vip=True),
    )
    ch = await js.channel("vip", config={"private": True})
    assert (await js.subscribe(ch))["status"] == "SUBSCRIBED"
    await js.set_auth(s.token("authenticated", vip=True, refreshed=1))
    await js.no_event(lambda e: e.get("event") == "status" and e.get("channel") == ch, within=0.5)
    await js.set_auth(s.token("authenticated", vip=False))
    system = await js.next_event(lambda e: e.get("event") == "system" and e.get("channel") == ch)
    assert system["msg"]["message"] == "You do not have permissions to read from this Channel topic: vip"
    assert (await js.next_status(ch, "CLOSED"))["status"] == "CLOSED"


# -- wire parity: postgres_changes bindings, replication_ready, replay ------------------------------
CHANGES = {"event": "*", "schema": "public", "table": "todos"}


async def test_a_channel_mixing_postgres_changes_and_broadcast_stays_joined(live_server, js, db_dsn):
    """realtime-js and realtime-py subscribe, hear once that Postgres Changes are not served, keep
    receiving broadcasts, and never rejoin."""
    s = live_server
    await js.connect(s.url, s.token())
    mixed = await js.channel("mixed", config={"broadcast": {"self": True}}, postgres_changes=[CHANGES])
    assert await js.subscribe(mixed) == {"status": "SUBSCRIBED", "error": None}
    notice = await js.next_event(lambda e: e.get("event") == "system" and e.get("channel") == mixed)
    assert notice["msg"]["extension"] == "postgres_changes"
    assert notice["msg"]["status"] == "ok"
    assert "broadcast_changes()" in notice["msg"]["message"]

    from realtime import AsyncRealtimeClient, RealtimePostgresChangesListenEvent

    from .drivers import PyEvents, ws_url

    py = AsyncRealtimeClient(f"{ws_url(s.url)}/realtime/v1", s.token(), timeout=5)
    q = PyEvents()
    ch = py.channel("mixed")
    ch.on_broadcast("*", q.put_nowait)  # type: ignore[arg-type]  # PyEvents holds the payload dicts
    ch.on_system(q.system.put_nowait)
    ch.on_postgres_changes(
        RealtimePostgresChangesListenEvent.All, lambda payload: None, table="todos", schema="public"
    )
    await ch.subscribe(q._on_status)
    try:
        assert [status for status, _ in q.statuses] == ["SUBSCRIBED"]
        py_notice = await asyncio.wait_for(q.system.get(), 5)
        assert py_notice.extension == "postgres_changes" and py_notice.status == "ok"

        assert await js.send(mixed, "hello", {"n": 1}) == "ok"
        assert (await js.next_broadcast(mixed))["payload"] == {"n": 1}
        assert (await q.next())["payload"] == {"n": 1}
        run_sql(db_dsn, "select realtime.send('{\"n\": 2}'::jsonb, 'e', 'mixed', false)")
        assert (await js.next_broadcast(mixed))["payload"]["n"] == 2
        assert (await q.next())["payload"]["n"] == 2

        # A minute on, neither client has left SUBSCRIBED nor rejoined (both would say so).
        await js.no_event(lambda e: e.get("event") == "status" and e.get("channel") == mixed, within=60)
        assert [status for status, _ in q.statuses] == ["SUBSCRIBED"]
        assert s.server.registry.channel_count == 2
    finally:
        await py_close(py)


async def test_replication_ready_is_announced_to_realtime_js(live_server, js):
    s = live_server
    await js.connect(s.url, s.token())
    ch = await js.channel("ready", config={"broadcast": {"replication_ready": True}})
    assert (await js.subscribe(ch))["status"] == "SUBSCRIBED"
    notice = await js.next_event(lambda e: e.get("event") == "system" and e.get("channel") == ch)
    assert notice["msg"]["message"] == "Replication connection established"
    assert notice["msg"]["status"] == "ok" and notice["msg"]["extension"] == "system"


async def test_replay_with_a_concurrent_live_copy_reaches_supabase_js_once(live_server, js, db_dsn):
    """Messages keep committing while a private join replays: each reaches the client once, none is
    skipped between the replayed ones and the live ones."""
    s = live_server
    run_sql(
        db_dsn,
        """create policy read_feed on realtime.messages for select to authenticated
             using (topic = (select realtime.topic()) and (select realtime.topic()) = 'feed')""",
    )
    stop = asyncio.Event()

    async def writer() -> None:
        import psycopg

        async with await psycopg.AsyncConnection.connect(db_dsn, autocommit=True) as conn:
            n = 0
            while not stop.is_set():
                await conn.execute(
                    "select realtime.send(%s::jsonb, 'tick', 'feed', true)", (f'{{"n": {n}}}',)
                )
                n += 1
                await asyncio.sleep(0.002)

    task = asyncio.create_task(writer())
    try:
        await asyncio.sleep(0.3)
        await js.connect(s.url, s.token(), kind="supabase-js", access_token=s.token("authenticated"))
        config = {"private": True, "broadcast": {"replay": {"since": 0, "limit": 25}}}
        ch = await js.channel("feed", config=config, events=["tick"])
        assert (await js.subscribe(ch))["status"] == "SUBSCRIBED"
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await task
    await asyncio.sleep(0.3)
    received = []
    while True:
        try:
            received.append(await js.next_broadcast(ch, "tick", timeout=0.5))
        except TimeoutError:
            break
    numbers = [m["payload"]["n"] for m in received]
    assert len(numbers) > 25  # the replayed ones and live ones after them
    assert len(numbers) == len(set(numbers)), "a message arrived twice"
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers))), "a message was skipped"
    assert all(m.get("meta", {}).get("replayed") for m in received[:25])
