"""The server restarts under its clients: the official clients reconnect and rejoin by themselves."""

from __future__ import annotations

import aiohttp
import pytest

from tests.clients.drivers import JsDriver, py_close, py_subscribe
from tests.sidecar.test_delivery import run_sql

from .support import bearer, wait_for

pytestmark = pytest.mark.asyncio


async def test_realtime_js_and_realtime_py_rejoin_a_restarted_server(make_server, db_dsn):
    first = await make_server(db_dsn)
    port = first.port
    async with JsDriver() as js:
        await js.connect(first.url, first.token())
        js_channel = await js.channel("restart-room")
        assert (await js.subscribe(js_channel))["status"] == "SUBSCRIBED"
        py_client, _py_channel, py_events = await py_subscribe(first.url, first.token(), "restart-room")
        try:
            await wait_for(lambda: first.server.registry.channel_count == 2, what="both joined")

            await first.stop()
            await js.next_socket(state="close", timeout=10)
            second = await make_server(db_dsn, port=port)
            assert second.port == port

            # Both clients reconnect with their own backoff and rejoin the same channel.
            await wait_for(lambda: second.server.registry.channel_count == 2, timeout=30, what="rejoined")
            await js.next_socket(state="open", timeout=10)

            batch = {"messages": [{"topic": "restart-room", "event": "after", "payload": {"n": 1}}]}
            async with (
                aiohttp.ClientSession() as http,
                http.post(f"{second.url}/api/broadcast", json=batch, headers=bearer(second)) as response,
            ):
                assert response.status == 202
            js_message = await js.next_broadcast(js_channel, "after", timeout=10)
            assert js_message["payload"] == {"n": 1}
            py_message = await py_events.next(timeout=10)
            assert py_message["event"] == "after" and py_message["payload"] == {"n": 1}

            # And the database path: a row committed now reaches both.
            run_sql(db_dsn, "select realtime.send('{\"n\": 2}'::jsonb, 'sql', 'restart-room', false)")
            assert (await js.next_broadcast(js_channel, "sql", timeout=10))["payload"]["n"] == 2
            py_message = await py_events.next(timeout=10)
            assert py_message["event"] == "sql" and py_message["payload"]["n"] == 2
        finally:
            await py_close(py_client)
