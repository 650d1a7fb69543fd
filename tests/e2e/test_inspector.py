"""The inspector page at ``/``: served pieces, stats, and the page itself in headless Chromium."""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import aiohttp
import jwt
import orjson
import psycopg
import pytest
from pg_realtime.inspector import INSPECTOR_KEY, PAGE_TOKEN_LIFETIME_S, Inspector
from psycopg.conninfo import conninfo_to_dict

from tests.clients.drivers import py_subscribe
from tests.harness import TEST_JWT_SECRET

from .browser import Browser

PUBLIC: dict[str, Any] = {
    "broadcast": {"self": False, "ack": False},
    "presence": {"key": "", "enabled": False},
    "private": False,
}


def page_config(html: str) -> dict[str, Any]:
    import json

    match = re.search(r'<script id="inspector-config" type="application/json">(.*?)</script>', html, re.S)
    assert match, "the page carries its config as JSON"
    config: dict[str, Any] = json.loads(match.group(1))
    return config


async def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as http, http.get(url, headers=headers) as response:
        return response.status, dict(response.headers), await response.read()


# -- served pieces (no browser) --------------------------------------------------------------------


async def test_demo_page_carries_a_short_lived_anon_key(live_server):
    status, headers, body = await get(live_server.url + "/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    csp = headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "connect-src 'self'" in csp and "default-src 'none'" in csp
    config = page_config(body.decode())
    assert config["demo"] is True
    claims = jwt.decode(config["token"], TEST_JWT_SECRET, algorithms=["HS256"])
    assert claims["role"] == "anon"
    assert 0 < claims["exp"] - time.time() <= PAGE_TOKEN_LIFETIME_S
    # The key is usable: the server accepts it.
    assert live_server.server.verifier.verify(config["token"])["role"] == "anon"
    html = body.decode()
    # Everything the page loads comes from this server.
    for ref in re.findall(r'(?:src|href)="([^"]+)"', html):
        assert ref.startswith("/") or ref.startswith("data:"), ref


async def test_external_database_page_has_no_key(external_server):
    status, _, body = await get(external_server.url + "/")
    assert status == 200
    config = page_config(body.decode())
    assert config["demo"] is False
    assert config["token"] is None
    assert 'id="key"' in body.decode()
    assert "eyJ" not in body.decode()
    # The page answers anyone: it does not say where the database is.
    port = str(conninfo_to_dict(external_server.server.settings.database_url)["port"])
    assert "database: configured" in body.decode()
    assert f":{port}/" not in body.decode()
    _, _, stats = await get(external_server.url + "/api/inspector/stats")
    assert orjson.loads(stats)["detailed"] is False
    assert orjson.loads(stats)["stream"] == {"live": True, "reason": None}


async def test_static_files(live_server):
    status, headers, body = await get(live_server.url + "/inspector/static/inspector.js")
    assert status == 200
    assert "javascript" in headers["Content-Type"]
    assert b"phx_join" in body
    status, headers, _ = await get(live_server.url + "/inspector/static/inspector.css")
    assert status == 200
    assert headers["Content-Type"].startswith("text/css")
    for missing in ("nope.js", "..%2Finspector.py", "%2E%2E%2Fserver.py"):
        status, _, _ = await get(live_server.url + "/inspector/static/" + missing)
        assert status == 404


async def test_stats_report_sockets_channels_topics_and_rates(live_server, db_dsn):
    client, _, got = await py_subscribe(live_server.url, live_server.token(), "stats-room", PUBLIC)
    try:
        url = live_server.url + "/api/inspector/stats"
        _, _, body = await get(url)
        import json

        stats = json.loads(body)
        assert stats["sockets"] == 1
        assert stats["channels"] == 1
        assert stats["detailed"] is True  # demo mode
        # No client here enabled presence on it: the sidecar keeps no presence state for it.
        assert stats["topics"] == [
            {"topic": "stats-room", "private": False, "subscribers": 1, "presences": None}
        ]
        assert stats["socket_list"][0]["vsn"] == "1.0.0"
        assert stats["socket_list"][0]["role"] == "anon"
        assert stats["stream"]["live"] is True
        before = stats["messages_in"]["total"]
        with psycopg.connect(db_dsn, autocommit=True) as conn:
            for i in range(5):
                conn.execute(
                    "select realtime.send(%s::jsonb, 'tick', 'stats-room', false)", (f'{{"n": {i}}}',)
                )
        for _ in range(5):
            await asyncio.wait_for(got.get(), 5)
        _, _, body = await get(url)
        stats = json.loads(body)
        assert stats["messages_in"]["database"] - before >= 5
        assert stats["deliveries"]["database"] >= 5
        assert stats["messages_per_second"] > 0
        assert stats["deliveries_per_second"] > 0
    finally:
        await client.close()


async def test_stats_outside_demo_mode_show_topics_to_service_role_only(external_server):
    import json

    url = external_server.url + "/api/inspector/stats"
    for headers in (
        None,
        {"Authorization": f"Bearer {external_server.token('anon')}"},
        {"Authorization": "x"},
    ):
        status, _, body = await get(url, headers)
        assert status == 200
        stats = json.loads(body)
        assert stats["detailed"] is False
        assert stats["topics"] is None and stats["socket_list"] is None
        assert stats["sockets"] == 0
    status, _, body = await get(url, {"Authorization": f"Bearer {external_server.token('service_role')}"})
    stats = json.loads(body)
    assert stats["detailed"] is True and stats["topics"] == []


def test_rates_come_from_counter_deltas(live_server):
    inspector: Inspector = live_server.server.app[INSPECTOR_KEY]
    inspector._samples.clear()
    assert inspector.rates(100, 1000, now=10.0) == (0.0, 0.0)
    assert inspector.rates(110, 1100, now=11.0) == (10.0, 100.0)
    assert inspector.rates(130, 1300, now=12.0) == (15.0, 150.0)
    # Samples older than the window are dropped: the rate follows recent traffic.
    assert inspector.rates(130, 1300, now=30.0) == pytest.approx((0.0, 0.0))
    assert inspector.rates(140, 1300, now=31.0) == pytest.approx((10.0, 0.0))


# -- the page in a real browser --------------------------------------------------------------------


async def assert_only_same_origin(browser: Browser, port: int) -> None:
    requests = await browser.call("requests")
    assert requests, "the page made requests"
    allowed = (f"http://127.0.0.1:{port}/", f"ws://127.0.0.1:{port}/")
    strays = [url for url in requests if not url.startswith(allowed) and not url.startswith("data:")]
    assert strays == [], f"the page loaded from elsewhere: {strays}"


@pytest.mark.parametrize("vsn", ["2.0.0", "1.0.0"])
async def test_page_joins_receives_from_sql_and_sends_to_realtime_py(live_server, db_dsn, browser, vsn):
    await browser.call("goto", url=live_server.url + "/")
    # Demo mode: the key is in the page and the socket opens by itself (vsn 2.0.0).
    await browser.call("waitForText", selector="#status", text="connected (vsn 2.0.0)")
    if vsn != "2.0.0":
        await browser.call("click", selector="#disconnect")
        await browser.call("waitForText", selector="#status", text="closed")
        await browser.call("select", selector="#vsn", value=vsn)
        await browser.call("click", selector="#connect")
        await browser.call("waitForText", selector="#status", text=f"connected (vsn {vsn})")

    await browser.call("fill", selector="#join-topic", value="room1")
    await browser.call("click", selector="#join")
    await browser.call("waitFor", selector='#channels li[data-topic="room1"][data-state="joined"]')

    # The server panel sees this page's socket and channel.
    await browser.call("waitFor", selector='#topics tr[data-topic="room1"]')
    await browser.call("waitForText", selector="#stat-channels", text="1", exact=True)
    await browser.call("waitForText", selector="#stat-sockets", text="1", exact=True)

    # A message sent from SQL shows up in the page.
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(
            "select realtime.send(%s::jsonb, 'greeting', 'room1', private => false)",
            ('{"hello": "from sql"}',),
        )
    entry = '#log li[data-kind="broadcast"][data-event="greeting"]'
    await browser.call("waitFor", selector=entry)
    text = await browser.call("text", selector=entry)
    assert "room1" in text and "from sql" in text

    # A broadcast sent from the page reaches a realtime-py subscriber.
    client, _, got = await py_subscribe(live_server.url, live_server.token(), "room1", PUBLIC, ["ev"])
    try:
        await browser.call("waitForText", selector="#stat-channels", text="2", exact=True)
        await browser.call("fill", selector="#send-event", value="ev")
        await browser.call("fill", selector="#send-payload", value=f'{{"from": "browser", "vsn": "{vsn}"}}')
        await browser.call("click", selector="#send")
        message = await asyncio.wait_for(got.get(), 10)
        assert message["event"] == "ev"
        assert message["payload"] == {"from": "browser", "vsn": vsn}
        await browser.call("waitForText", selector="#send-status", text="sent")  # acknowledged
        await browser.call("waitFor", selector='#log li[data-kind="sent"][data-event="ev"]')
        # The counters moved: the stats panel shows traffic.
        await browser.call("waitForText", selector="#stat-breakdown", text="1 from clients")
    finally:
        await client.close()

    await browser.screenshot(f"inspector-vsn{vsn}.png")
    await assert_only_same_origin(browser, live_server.port)
    assert browser.page_errors == []


async def test_page_without_demo_key_joins_a_private_channel_with_a_token(external_server, db_dsn, browser):
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute(
            "create policy inspector_read on realtime.messages for select to authenticated "
            "using (realtime.topic() = 'secret-room')"
        )
    await browser.call("goto", url=external_server.url + "/")
    assert await browser.call("evaluate", expression="document.getElementById('key').value") == ""
    await browser.call("waitForText", selector="#topics-note", text="service_role")
    assert (await browser.call("text", selector="#status")).strip() == "disconnected"

    # A service_role key shows the topic names; anon joins are refused on a private topic.
    await browser.call("fill", selector="#key", value=external_server.token("service_role"))
    await browser.call("click", selector="#connect")
    await browser.call("waitForText", selector="#status", text="connected")
    await browser.call("fill", selector="#join-topic", value="secret-room")
    await browser.call("check", selector="#join-private", checked=True)
    await browser.call("fill", selector="#join-token", value=external_server.token("anon"))
    await browser.call("click", selector="#join")
    refused = await browser.call("waitForText", selector="#channels", text="refused")
    assert "Unauthorized" in refused or "unauthorized" in refused.lower()

    # With an authenticated user's token the policy lets the page in, and private sends arrive.
    await browser.call("fill", selector="#join-token", value=external_server.token("authenticated", sub="u1"))
    await browser.call("click", selector="#join")
    await browser.call("waitFor", selector='#channels li[data-topic="secret-room"][data-state="joined"]')
    await browser.call("waitFor", selector='#topics tr[data-topic="secret-room"]')
    assert "private" in await browser.call("text", selector='#topics tr[data-topic="secret-room"]')
    with psycopg.connect(db_dsn, autocommit=True) as conn:
        conn.execute("select realtime.send('{\"n\": 1}'::jsonb, 'private-event', 'secret-room', true)")
        conn.execute("select realtime.send('{\"n\": 2}'::jsonb, 'public-event', 'secret-room', false)")
    await browser.call("waitFor", selector='#log li[data-kind="broadcast"][data-event="private-event"]')
    await asyncio.sleep(0.3)
    assert await browser.call("count", selector='#log li[data-event="public-event"]') == 0

    await browser.screenshot("inspector-private.png")
    await assert_only_same_origin(browser, external_server.port)
    assert browser.page_errors == []
