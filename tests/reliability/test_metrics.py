"""Prometheus /metrics: the numbers move with the traffic that passes."""

from __future__ import annotations

import aiohttp
import pytest

from tests.sidecar.test_delivery import run_sql
from tests.sidecar.wire import RawSocket

from .support import bearer, is_event, sample, scrape, wait_for

pytestmark = pytest.mark.asyncio


async def test_metrics_follow_sockets_channels_messages_lag_and_refusals(make_server, db_dsn):
    server = await make_server(db_dsn, max_payload_kb=1, max_connections=3)
    before = await scrape(server)
    assert sample(before, "realtime_sockets") == 0
    assert sample(before, "realtime_channels") == 0
    assert sample(before, "realtime_stream_up") == 1
    # Nothing joined yet: the reader is paused and has read nothing.
    assert sample(before, "realtime_stream_paused") == 1
    assert sample(before, "realtime_stream_reads_total") == 0

    async with (
        aiohttp.ClientSession() as http,
        await RawSocket.connect(server.url, server.token()) as a,
        await RawSocket.connect(server.url, server.token(), vsn="1.0.0") as b,
    ):
        await a.join("room")
        await b.join("room")
        await b.join("other")
        # One message on each path: a client broadcast, a REST batch of two, a single REST, a row.
        await a.send(
            "realtime:room", "broadcast", {"type": "broadcast", "event": "e", "payload": {}}, join_ref="1"
        )
        await b.recv_until(lambda f: is_event(f, "broadcast"))
        batch = {
            "messages": [
                {"topic": "room", "event": "e", "payload": {"n": 1}},
                {"topic": "nobody-listens", "event": "e", "payload": {"n": 2}},
            ]
        }
        async with http.post(f"{server.url}/api/broadcast", json=batch, headers=bearer(server)) as response:
            assert response.status == 202
        async with http.post(
            f"{server.url}/api/broadcast/room/events/e", json={}, headers=bearer(server)
        ) as r:
            assert r.status == 202
        run_sql(db_dsn, "select realtime.send('{}'::jsonb, 'row', 'room', false)")
        for _ in range(3):
            await a.recv()  # REST, REST, row (a does not get its own broadcast back)
        await b.recv()
        await b.recv()
        await b.recv()

        # Refusals, by reason.
        async with http.get(f"{server.url}/realtime/v1/websocket?apikey=garbage&vsn=2.0.0") as response:
            assert response.status == 401
        async with http.post(f"{server.url}/api/broadcast", json=batch) as response:
            assert response.status == 401
        big = {"messages": [{"topic": "room", "event": "e", "payload": {"x": "y" * 2000}}]}
        async with http.post(f"{server.url}/api/broadcast", json=big, headers=bearer(server)) as response:
            assert response.status == 422
        url = f"{server.url}/realtime/v1/websocket?apikey={server.token()}&vsn=2.0.0"
        async with await RawSocket.connect(server.url, server.token()), http.get(url) as refused:
            assert refused.status == 429
        await wait_for(lambda: len(server.server.connections) == 2, what="third socket gone")

        after = await scrape(server)
        assert sample(after, "realtime_sockets") == 2
        assert sample(after, "realtime_channels") == 3
        assert sample(after, "realtime_messages_in_total", path="client") == 1
        assert sample(after, "realtime_messages_in_total", path="rest") == 3
        assert sample(after, "realtime_messages_in_total", path="database") == 1
        assert sample(after, "realtime_deliveries_total", path="client") == 1  # self is false: b only
        assert sample(after, "realtime_deliveries_total", path="rest") == 4  # 2 messages to room, 2 sockets
        assert sample(after, "realtime_deliveries_total", path="database") == 2
        assert sample(after, "realtime_stream_lag_seconds_count") == 1
        assert 0 < sample(after, "realtime_stream_lag_seconds_sum") < 60
        assert sample(after, "realtime_stream_reads_total") > sample(before, "realtime_stream_reads_total")
        assert sample(after, "realtime_stream_paused") == 0
        assert sample(after, "realtime_refusals_total", reason="invalid_token") == 1
        assert sample(after, "realtime_refusals_total", reason="rest_unauthorized") == 1
        assert sample(after, "realtime_refusals_total", reason="payload_size") == 1
        assert sample(after, "realtime_refusals_total", reason="max_connections") == 1
        assert sample(after, "realtime_slow_consumer_disconnects_total") == 0

    await wait_for(lambda: not server.server.connections, what="sockets closed")
    closed = await scrape(server)
    assert sample(closed, "realtime_sockets") == 0
    assert sample(closed, "realtime_channels") == 0
