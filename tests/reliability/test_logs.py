"""Log lines carry the reference server's error codes, so existing alerts and searches keep working."""

from __future__ import annotations

import logging

import aiohttp
import orjson
import pytest
from pg_realtime import session as session_module
from pg_realtime.cli import JsonFormatter

from tests.sidecar.test_delivery import run_sql
from tests.sidecar.wire import RawSocket, reply_of

from .support import bearer, is_event, wait_for

pytestmark = pytest.mark.asyncio

BROKEN_WRITE_POLICY = """
create policy broken_write on realtime.messages for insert to authenticated
  with check ((select realtime.topic()) = 'broken' and 1 / (length(realtime.topic()) - 6) = 1);
create policy read_broken on realtime.messages for select to authenticated
  using ((select realtime.topic()) = 'broken');
"""


def records_with(caplog: pytest.LogCaptureFixture, code: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name.startswith("pg_realtime") and r.getMessage().startswith(code)]


async def test_malformed_frames_are_logged_as_malformed_websocket_message(make_server, caplog):
    caplog.set_level(logging.INFO, logger="pg_realtime")
    server = await make_server(None)
    async with await RawSocket.connect(server.url, server.token()) as ws:
        await ws.send_raw("{not json")
        await ws.send_raw(bytes([3, 200, 1]))
        await ws.send("phoenix", "heartbeat", {}, ref="1")
        assert reply_of(await ws.recv())["status"] == "ok"  # ignored, and the socket keeps serving
    malformed = records_with(caplog, "MalformedWebSocketMessage: ")
    assert len(malformed) == 2
    assert all(r.levelno == logging.INFO for r in malformed)


async def test_failing_write_policies_are_logged_as_rls_policy_error(make_server, db_dsn, caplog):
    caplog.set_level(logging.INFO, logger="pg_realtime")
    run_sql(db_dsn, BROKEN_WRITE_POLICY)
    server = await make_server(db_dsn)
    user = server.token("authenticated")
    config = {"broadcast": {"ack": True}, "private": True}
    async with aiohttp.ClientSession() as http, await RawSocket.connect(server.url, user) as ws:
        assert reply_of(await ws.join("broken", config))["status"] == "ok"
        await ws.send(
            "realtime:broken", "broadcast", {"type": "broadcast", "event": "e", "payload": {}}, ref="2"
        )
        await ws.expect_silence()  # the write check failed: dropped, as a denied write
        batch = {"messages": [{"topic": "broken", "event": "e", "payload": {}, "private": True}]}
        async with http.post(
            f"{server.url}/api/broadcast", json=batch, headers=bearer(server, "authenticated")
        ) as r:
            assert r.status == 202
    errors = records_with(caplog, "RlsPolicyError: ")
    assert len(errors) == 2
    assert all("division by zero" in r.getMessage() and r.levelno == logging.WARNING for r in errors)
    # The JSON log format (`--log-format json`) lifts the code into its own field.
    entry = orjson.loads(JsonFormatter().format(errors[0]))
    assert entry["code"] == "RlsPolicyError" and entry["level"] == "warning"


async def test_rows_that_are_not_messages_are_logged_as_unable_to_broadcast_changes(
    make_server, db_dsn, caplog
):
    caplog.set_level(logging.INFO, logger="pg_realtime")
    server = await make_server(db_dsn)
    async with await RawSocket.connect(server.url, server.token()) as ws:
        await ws.join("room")
        run_sql(
            db_dsn,
            "insert into realtime.messages (topic, extension, payload, private)"
            " values ('room', 'broadcast', '{}', false)",  # no event
        )
        run_sql(db_dsn, "select realtime.send('{\"ok\": true}'::jsonb, 'fine', 'room', false)")
        frame = await ws.recv()
        assert isinstance(frame, bytes) and b"fine" in frame  # only the real message arrives
    await wait_for(lambda: bool(records_with(caplog, "UnableToBroadcastChanges: ")), what="the log line")
    (record,) = records_with(caplog, "UnableToBroadcastChanges: ")
    assert record.levelno == logging.WARNING


async def test_an_unexpected_error_is_logged_and_the_socket_survives(make_server, caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="pg_realtime")

    def explode(self, channel, msg, size):  # a rule of the session: a generator
        raise RuntimeError("boom")
        yield

    server = await make_server(None)
    async with await RawSocket.connect(server.url, server.token()) as ws:
        await ws.join("room")
        monkeypatch.setattr(session_module.Session, "_client_broadcast", explode)
        await ws.send(
            "realtime:room", "broadcast", {"type": "broadcast", "event": "e", "payload": {}}, ref="2"
        )
        await ws.send("phoenix", "heartbeat", {}, ref="3")
        reply = await ws.recv_until(lambda f: is_event(f, "phx_reply"))
        assert reply[1] == "3"
    (record,) = records_with(caplog, "UnknownErrorOnChannel")
    assert record.levelno == logging.ERROR and record.exc_info is not None
