"""SIGTERM with traffic in flight: requests answered, sockets closed with 1001, database left clean."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest
from pg_realtime.embedded import free_port

from tests.harness import TEST_JWT_SECRET, ServerProcess, pg_realtime_command
from tests.sidecar.test_delivery import run_sql
from tests.sidecar.wire import RawSocket

from .support import is_close

pytestmark = pytest.mark.asyncio

COUNT_OUR_CONNECTIONS = """
select count(*) from pg_stat_activity
where datname = current_database() and application_name like 'pg-realtime%%' and pid <> pg_backend_pid()
"""


# An RLS write check that takes a second: a REST request to this topic is in flight for that long.
SLOW_WRITE_POLICY = """
create policy slow_write on realtime.messages for insert to authenticated
  with check ((select realtime.topic()) = 'slow' and (select true from pg_sleep(1)));
"""


async def test_sigterm_answers_requests_in_flight_closes_sockets_and_connections(db_dsn, tmp_path):
    run_sql(db_dsn, SLOW_WRITE_POLICY)
    port = free_port()
    argv = [
        *pg_realtime_command(),
        "serve",
        "--database-url",
        db_dsn,
        "--port",
        str(port),
        "--jwt-secret",
        TEST_JWT_SECRET,
        "--shutdown-timeout-s",
        "5",
    ]
    served = await ServerProcess.start(argv, port, tmp_path)
    proc = served.proc
    url = served.url
    sockets: list[RawSocket] = []
    try:
        await served.wait_ready(timeout=20)

        for vsn in ("1.0.0", "2.0.0", "2.0.0"):
            ws = await RawSocket.connect(url, served.token(expires_in=600), vsn=vsn)
            await ws.join("shutdown")
            sockets.append(ws)
        assert run_sql(db_dsn, COUNT_OUR_CONNECTIONS)[0][0] >= 2  # the reader and the pool

        # Two REST requests whose handlers are busy (in the RLS write check) when the signal comes.
        headers = {"Authorization": f"Bearer {served.token('authenticated', expires_in=600)}"}
        batch = {"messages": [{"topic": "slow", "event": "e", "payload": {"n": 1}, "private": True}]}
        async with aiohttp.ClientSession() as http:

            async def post(path: str, body: object) -> int:
                async with http.post(f"{url}{path}", json=body, headers=headers) as response:
                    return response.status

            in_flight = [
                asyncio.create_task(post("/api/broadcast", batch)),
                asyncio.create_task(post("/realtime/v1/api/broadcast/slow/events/e?private=true", {"n": 2})),
            ]
            await asyncio.sleep(0.3)
            assert not any(task.done() for task in in_flight)

            sigterm_at = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            # Every socket is told the server is going away.
            for ws in sockets:
                frame = await ws.recv_until(is_close, timeout=10)
                assert frame.type == aiohttp.WSMsgType.CLOSE
                assert frame.data == 1001
            # The requests in flight are still answered.
            assert await asyncio.gather(*in_flight) == [202, 202]

        returncode = await asyncio.wait_for(proc.wait(), 15)
        elapsed = time.monotonic() - sigterm_at
        assert returncode == 0, served.log
        assert elapsed < 10, f"shutdown took {elapsed:.1f}s"
    finally:
        await served.kill()
        for ws in sockets:
            await ws.close()

    # Its database sessions are gone (a backend may take a moment to exit after its client left).
    deadline = time.monotonic() + 10
    while run_sql(db_dsn, COUNT_OUR_CONNECTIONS)[0][0] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert run_sql(db_dsn, COUNT_OUR_CONNECTIONS)[0][0] == 0
    assert "shutting down" in served.log
