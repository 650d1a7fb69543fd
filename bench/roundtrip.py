"""Client broadcast round trip: a WebSocket client sends, the other subscribers receive.

One picows process holds the publisher and the subscribers of one topic, so send and
receive times come from one clock. The publisher sends kind 3 frames at a steady rate,
each stamped with its send time. The same workload goes through the bare aiohttp relay
(no protocol, no bookkeeping) for the WebSocket library's own latency on this machine.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._harness import (
    Context,
    LoadGen,
    Result,
    bare_server,
    figure,
    fmt,
    log,
    md_table,
    percentiles,
    realtime_server,
    save,
)

NAME = "roundtrip"
TITLE = "Client broadcast round trip (WebSocket in, WebSocket out)"
TOPIC = "roundtrip"
#: (messages per second, subscribers): both 10,000 deliveries per second.
SCENARIOS = ((1000, 10), (100, 100))


async def measure(
    url: str, protocol: str, rate: int, subscribers: int, seconds: float, ctx: Context
) -> np.ndarray:
    config: dict[str, Any] = {
        "url": url,
        "protocol": protocol,
        "subscribers": subscribers,
        "publisher": True,
        "topics": [TOPIC],
        "latency": True,
    }
    async with LoadGen(config, ctx.workdir) as gen:
        count = int(rate * seconds)
        # A short warm-up at the same rate, not counted.
        await gen.call("publish", count=max(1, rate // 2), rate=rate, topic=TOPIC)
        await gen.call("wait", count=max(1, rate // 2) * subscribers, timeout=10)
        await gen.call("reset")
        await gen.call("publish", count=count, rate=rate, topic=TOPIC, timeout=seconds + 60)
        await gen.call("wait", count=count * subscribers, timeout=10)
        return await gen.latencies_ms()


async def run(ctx: Context) -> Result:
    seconds = ctx.seconds(10, 2)
    dsn = ctx.pg.database("bench_roundtrip")
    samples: dict[tuple[str, int, int], np.ndarray] = {}
    async with bare_server(ctx.workdir) as bare, realtime_server(dsn, ctx.workdir) as server:
        for rate, subscribers in SCENARIOS:
            for kind, url, protocol in (
                ("bare", f"ws://127.0.0.1:{bare.port}/ws", "raw"),
                ("pg-realtime", server.ws_url(), "phoenix"),
            ):
                s = await measure(url, protocol, rate, subscribers, seconds, ctx)
                samples[kind, rate, subscribers] = s
                log(f"roundtrip {kind} {rate}/s x {subscribers}: p50/p99 {percentiles(s, (50, 99))}")

    rows = []
    for rate, subscribers in SCENARIOS:
        for kind, label in (("bare", "bare aiohttp relay (baseline)"), ("pg-realtime", "pg-realtime")):
            s = samples[kind, rate, subscribers]
            p50, p95, p99, pmax = percentiles(s, (50, 95, 99, 100))
            expected = int(rate * seconds) * subscribers
            rows.append(
                [
                    f"{rate:,} msg/s to {subscribers} subscribers",
                    label,
                    f"{s.size:,} / {expected:,}",
                    fmt(p50, 2),
                    fmt(p95, 2),
                    fmt(p99, 2),
                    fmt(pmax, 1),
                ]
            )
    table = md_table(["load", "server", "delivered / expected", "p50 ms", "p95 ms", "p99 ms", "max ms"], rows)
    main = samples["pg-realtime", *SCENARIOS[0]]
    base = samples["bare", *SCENARIOS[0]]
    p50, p99 = percentiles(main, (50, 99))
    b50, b99 = percentiles(base, (50, 99))
    verdict = (
        f"{SCENARIOS[0][0]:,} msg/s to {SCENARIOS[0][1]} subscribers: p50 {p50:.2f} ms, p99 {p99:.2f} ms "
        f"(bare relay {b50:.2f} / {b99:.2f} ms)"
    )
    markdown = (
        f"One topic, vsn 2.0.0 kind 3 frames in and kind 4 out, ~130-byte payloads, {seconds:.0f} s per "
        f"load after a short warm-up; publisher and subscribers in one picows process.\n\n{table}"
    )

    fig, ax = figure(8, 4.5)
    for (kind, rate, subscribers), s in samples.items():
        ordered = np.sort(s)
        if ordered.size:
            style = "--" if kind == "bare" else "-"
            ax.plot(
                ordered,
                np.arange(1, ordered.size + 1) / ordered.size,
                style,
                label=f"{kind}, {rate:,}/s x {subscribers}",
            )
    ax.set_xscale("log")
    ax.set_xlabel("round trip, ms (log)")
    ax.set_ylabel("fraction of deliveries")
    ax.set_title("Client broadcast round trip, cumulative distribution")
    ax.legend(fontsize=8)
    plot = ctx.out_dir / "roundtrip.png"
    save(fig, plot)
    return Result(NAME, TITLE, markdown, verdict, plot)
