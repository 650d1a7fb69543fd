"""A socket that stops reading: bounded memory, cut off with 1008, and nobody else waits for it."""

from __future__ import annotations

import statistics
import time

import orjson
import pytest

from tests.sidecar.wire import RawSocket

from .stalled import OP_CLOSE, OP_TEXT, StalledSocket
from .support import sample, scrape, wait_for

pytestmark = pytest.mark.asyncio

OUTBOX_LIMIT = 512_000
PAD = "x" * 2000


async def test_a_socket_that_stops_reading_is_cut_off_and_holds_nobody_back(make_server):
    # The publisher sends far faster than the per-socket event limit allows: lift that limit here.
    server = await make_server(None, outbox_limit_bytes=OUTBOX_LIMIT, max_client_events_per_second=0)
    realtime = server.server
    publisher = await RawSocket.connect(server.url, server.token())
    stalled: list[StalledSocket] = []
    fast = [
        await RawSocket.connect(server.url, server.token(), vsn="2.0.0" if i % 2 else "1.0.0")
        for i in range(3)
    ]
    try:
        await publisher.join("feed")
        for ws in fast:
            await ws.join("feed")
        sequence = 0

        async def one_message() -> float:
            """Publish one message; the time until every fast subscriber has it."""
            nonlocal sequence
            sequence += 1
            body = {"type": "broadcast", "event": "tick", "payload": {"i": sequence, "pad": PAD}}
            started = time.perf_counter()
            await publisher.send("realtime:feed", "broadcast", body, ref=None, join_ref="1")
            for ws in fast:
                frame = await ws.recv(timeout=5)
                payload = frame[4] if isinstance(frame, list) else frame["payload"]
                assert payload["payload"]["i"] == sequence
            return time.perf_counter() - started

        for _ in range(50):  # warm-up
            await one_message()
        baseline = [await one_message() for _ in range(300)]

        # Two clients that stop reading right after their join: one will read again, one never.
        reader_later = await StalledSocket.connect(server.port, server.token())
        never_reads = await StalledSocket.connect(server.port, server.token())
        stalled += [reader_later, never_reads]
        await reader_later.join("feed")
        await never_reads.join("feed")
        await wait_for(lambda: realtime.registry.channel_count == 6, what="stalled sockets joined")
        first_sequence = sequence + 1

        with_stalled: list[float] = []
        while realtime.registry.channel_count == 6:
            with_stalled.append(await one_message())
            assert len(with_stalled) < 10_000, "the outgoing buffer of a stalled socket is not bounded"
        # Both stalled sockets overflowed together; nothing more is queued for them.
        assert realtime.registry.channel_count == 4

        # The one that reads again finds, in order, what was queued before the cut, then the 1008 close.
        frames = await reader_later.read_until_closed(timeout=10)
        assert frames[-1].opcode == OP_CLOSE
        assert frames[-1].close_code == 1008
        decoded = [orjson.loads(f.data) for f in frames if f.opcode == OP_TEXT]
        assert decoded[0][3] == "phx_reply"  # the join reply, then the broadcasts
        received = [frame[4]["payload"]["i"] for frame in decoded[1:]]
        assert received == list(range(first_sequence, first_sequence + len(received)))
        assert 0 < len(received) < len(with_stalled)

        after = [await one_message() for _ in range(300)]

        # The one that never reads again is dropped anyway (it cannot even take the close frame).
        await wait_for(lambda: len(realtime.connections) == 4, timeout=10, what="stalled sockets dropped")
        metrics = await scrape(server)
        assert sample(metrics, "realtime_slow_consumer_disconnects_total") == 2
        assert sample(metrics, "realtime_sockets") == 4

        # The others' latency while two sockets were stuck, compared with before and after, same run.
        base = statistics.median(baseline)
        loaded = statistics.median(with_stalled)
        recovered = statistics.median(after)
        assert loaded / base < 3, (
            f"median latency {loaded * 1e3:.2f} ms with stalled sockets vs {base * 1e3:.2f} ms"
        )
        assert recovered / base < 3
        assert len(with_stalled) > 100  # the comparison covered a real stretch of stalled time
        print(
            f"median latency: {base * 1e3:.3f} ms before, {loaded * 1e3:.3f} ms over {len(with_stalled)}"
            f" messages with two stalled sockets, {recovered * 1e3:.3f} ms after"
        )
    finally:
        for sock in stalled:
            sock.close()
        await publisher.close()
        for ws in fast:
            await ws.close()
