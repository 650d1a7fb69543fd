"""Why didn't my message arrive: each near-miss, produced with the official clients, gives its log
line, its metric and its diagnostics entry; a delivered message gives none of them."""

from __future__ import annotations

import functools
import logging
import os
import signal
from typing import Any

import aiohttp
import pytest
from pg_realtime.diagnostics import CAUSES

from tests.reliability.support import sample, scrape, wait_for
from tests.sidecar.test_delivery import run_sql

from .drivers import JsDriver

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def js():
    async with JsDriver() as driver:
        yield driver


async def subscribe(js: JsDriver, server: Any, topic: str, **config: Any) -> str:
    await js.connect(server.url, server.token(), kind="realtime-js", vsn="2.0.0", client=topic)
    channel = await js.channel(topic, client=topic, channel=topic, config=config or None)
    return channel


async def diagnostics(server: Any, topic: str, token: str | None) -> tuple[int, Any]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    url = f"{server.url}/api/diagnostics/topic/{topic}"
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        return response.status, await response.json()


def undelivered_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [m for m in caplog.messages if m.startswith("UndeliveredMessage:")]


async def expect_near_miss(
    server: Any, caplog: pytest.LogCaptureFixture, topic: str, cause: str, line: str, messages: int = 1
) -> dict[str, Any]:
    """The one log line (its start), the metric, and the endpoint's entry of a near-miss of the
    last of ``messages`` (0: some) messages."""
    await wait_for(lambda: bool(undelivered_lines(caplog)), what="an UndeliveredMessage line")
    logged = undelivered_lines(caplog)[0]
    assert len(undelivered_lines(caplog)) == 1, "one line per topic, cause and period"
    assert logged.startswith(line), logged
    metrics = await scrape(server)
    counted = sample(metrics, "realtime_undelivered_messages_total", cause=cause)
    assert counted == messages if messages else counted >= 1
    for other in CAUSES:
        if other != cause:
            assert sample(metrics, "realtime_undelivered_messages_total", cause=other) == 0
    status, body = await diagnostics(server, topic, server.token("service_role"))
    assert status == 200
    if messages:
        assert len(body["messages"]) == messages
    message: dict[str, Any] = body["messages"][-1]
    assert message["delivered"] == 0
    assert [u["cause"] for u in message["undelivered"]] == [cause]
    if messages == 1:
        assert logged == "UndeliveredMessage: {text}: {fix}".format(**message["undelivered"][0])
    return message


async def test_default_private_send_to_a_public_realtime_js_subscriber(live_server, js, db_dsn, caplog):
    s = live_server
    ch = await subscribe(js, s, "room:1")
    assert (await js.subscribe(ch))["status"] == "SUBSCRIBED"
    with caplog.at_level(logging.WARNING, "pg_realtime"):
        run_sql(db_dsn, """select realtime.send('{"n": 1}'::jsonb, 'update', 'room:1')""")
        message = await expect_near_miss(
            s,
            caplog,
            "room:1",
            "visibility",
            'UndeliveredMessage: message to "room:1" (event "update") is private and reached nobody; '
            '1 public subscriber is on "room:1": '
            "join with config.private = true, or send with private => false",
        )
    assert message["source"] == "database" and message["private"] is True and message["event"] == "update"
    assert message["committed_at"] <= message["read_at"]
    assert message["payload"].startswith('{"n": 1')  # a service_role caller
    await js.no_event(lambda e: e.get("event") == "broadcast", within=0.2)


async def test_case_different_topic(live_server, js, db_dsn, caplog):
    s = live_server
    ch = await subscribe(js, s, "Room:ABC")
    assert (await js.subscribe(ch))["status"] == "SUBSCRIBED"
    with caplog.at_level(logging.WARNING, "pg_realtime"):
        run_sql(db_dsn, """select realtime.send('{}'::jsonb, 'update', 'room:abc', false)""")
        await expect_near_miss(
            s,
            caplog,
            "room:abc",
            "topic_case",
            'UndeliveredMessage: message to "room:abc" (event "update") is public and reached nobody; '
            '1 public subscriber is on "Room:ABC", which differs only in case: '
            "build the topic the same way on both sides (topics are case-sensitive)",
        )


async def test_realtime_prefix_added_in_sql(live_server, js, db_dsn, caplog):
    s = live_server
    ch = await subscribe(js, s, "room:1")
    assert (await js.subscribe(ch))["status"] == "SUBSCRIBED"
    with caplog.at_level(logging.WARNING, "pg_realtime"):
        run_sql(db_dsn, """select realtime.send('{}'::jsonb, 'update', 'realtime:room:1', false)""")
        await expect_near_miss(
            s,
            caplog,
            "realtime:room:1",
            "topic_prefix",
            'UndeliveredMessage: message to "realtime:room:1" (event "update") is public and reached nobody; '
            '1 public subscriber is on "room:1", which differs by a "realtime:" prefix: '
            'use "room:1" on both sides',
        )


async def test_refused_private_join(live_server, js, db_dsn, caplog):
    s = live_server
    ch = await subscribe(js, s, "secret:1", private=True)
    assert (await js.subscribe(ch))["status"] == "CHANNEL_ERROR"  # no policy lets anon read it
    await js.unsubscribe(ch)  # no rejoins: one refusal
    with caplog.at_level(logging.WARNING, "pg_realtime"):
        run_sql(db_dsn, """select realtime.send('{}'::jsonb, 'update', 'secret:1')""")
        message = await expect_near_miss(
            s,
            caplog,
            "secret:1",
            "refused_join",
            'UndeliveredMessage: message to "secret:1" (event "update") is private and reached nobody; '
            '1 private join to "secret:1" was refused in the last 5 minutes (Unauthorized: You do not have '
            "permissions to read from this Channel topic: secret:1): "
            "let the subscriber's role read the topic",
        )
    assert message["undelivered"][0]["subscribers"] == 1


async def test_slow_consumer(make_server, db_dsn, caplog):
    s = await make_server(db_dsn, outbox_limit_bytes=64 * 1024)
    async with JsDriver() as slow:
        ch = await subscribe(slow, s, "feed")
        assert (await slow.subscribe(ch))["status"] == "SUBSCRIBED"
        assert slow.proc is not None
        os.kill(slow.proc.pid, signal.SIGSTOP)  # realtime-js stops reading its socket
        caplog.set_level(logging.WARNING, "pg_realtime")
        try:
            big = (
                "select realtime.send(jsonb_build_object('pad', repeat('x', 100000)), 'tick', 'feed', false)"
            )
            registry = s.server.metrics.registry

            def read(expected: int) -> bool:
                value = registry.get_sample_value("realtime_messages_in_total", {"path": "database"})
                return bool(value == expected)

            for batch in range(1, 101):
                if s.server.registry.count("feed", False) == 0:
                    break
                run_sql(db_dsn, big + " from generate_series(1, 20)")
                await wait_for(functools.partial(read, 20 * batch), what="the batch read")
            await wait_for(
                lambda: s.server.registry.count("feed", False) == 0, what="the slow consumer dropped"
            )
            run_sql(db_dsn, """select realtime.send('{}'::jsonb, 'tick', 'feed', false)""")
            await wait_for(lambda: bool(s.server.diagnostics and s.server.diagnostics.messages("feed")))
            # The message whose frame overflowed the socket's outbox counts as delivered (it was
            # queued); those after it reached nobody. Either way the line names the drop.
            message = await expect_near_miss(
                s,
                caplog,
                "feed",
                "slow_consumer",
                'UndeliveredMessage: message to "feed" (event "tick") is public and reached',
                messages=0,
            )
            assert message["event"] == "tick" and message["source"] == "database"
            assert (
                '1 subscriber of "feed" was dropped as a slow consumer in the last 5 minutes: '
                "the client must read its socket faster, or raise --outbox-limit-bytes"
            ) in undelivered_lines(caplog)[0]
        finally:
            os.kill(slow.proc.pid, signal.SIGCONT)


async def test_a_delivered_message_gives_no_line_no_metric_no_entry(live_server, js, db_dsn, caplog):
    s = live_server
    ch = await subscribe(js, s, "room:1")
    assert (await js.subscribe(ch))["status"] == "SUBSCRIBED"
    with caplog.at_level(logging.WARNING, "pg_realtime"):
        run_sql(db_dsn, """select realtime.send('{"n": 1}'::jsonb, 'update', 'room:1', false)""")
        assert (await js.next_broadcast(ch, "update"))["payload"]["n"] == 1
    assert undelivered_lines(caplog) == []
    metrics = await scrape(s)
    assert all(sample(metrics, "realtime_undelivered_messages_total", cause=c) == 0 for c in CAUSES)
    status, body = await diagnostics(s, "room:1", s.token("service_role"))
    assert status == 200 and body["messages"] == []
    assert body["subscribers"] == [{"topic": "room:1", "private": False, "vsn": "2.0.0", "count": 1}]
    # Asking starts a recording: the next message is kept, delivered and without a cause.
    run_sql(db_dsn, """select realtime.send('{"n": 2}'::jsonb, 'update', 'room:1', false)""")
    assert (await js.next_broadcast(ch, "update"))["payload"]["n"] == 2
    status, body = await diagnostics(s, "room:1", s.token("service_role"))
    [message] = body["messages"]
    assert (message["matched"], message["delivered"], message["undelivered"]) == (1, 1, [])


async def test_the_endpoint_wants_a_service_role_key_and_the_page_never_shows_payloads(
    live_server, js, db_dsn
):
    s = live_server
    ch = await subscribe(js, s, "room:1")
    assert (await js.subscribe(ch))["status"] == "SUBSCRIBED"
    run_sql(db_dsn, """select realtime.send('{"card": "4111-1111"}'::jsonb, 'update', 'room:1')""")
    await wait_for(lambda: s.server.diagnostics is not None and bool(s.server.diagnostics.recent()))
    assert (await diagnostics(s, "room:1", None))[0] == 401
    assert (await diagnostics(s, "room:1", "not-a-jwt"))[0] == 401
    for role in ("anon", "authenticated"):
        status, body = await diagnostics(s, "room:1", s.token(role))
        assert status == 403 and "4111" not in str(body)
    status, body = await diagnostics(s, "room:1", s.token("service_role"))
    assert status == 200 and "4111" in body["messages"][0]["payload"]
    # The inspector's near-misses (shown without a key in demo mode) carry no payload.
    async with aiohttp.ClientSession() as http, http.get(f"{s.url}/api/inspector/stats") as response:
        stats = await response.text()
    assert '"visibility"' in stats and "4111" not in stats
