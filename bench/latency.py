"""Commit-to-client latency of database messages, at steady rates.

pgbench sends ``realtime.send()`` transactions at a fixed rate (``-R``, Poisson arrivals),
each to one of 100 topics, with ``clock_timestamp()`` in the payload. Subscribers in a
separate picows process, spread evenly over the topics, subtract it from their own clock on
arrival. The stamp is taken inside the sending transaction, so each figure also holds the
rest of that transaction and its commit (a durable one): it bounds commit-to-client from above.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
import psycopg

from ._harness import (
    Context,
    LoadGen,
    Result,
    cpu_seconds,
    figure,
    fmt,
    log,
    md_table,
    percentiles,
    pgbench,
    realtime_server,
    save,
)

NAME = "latency"
TITLE = "Commit-to-client latency of database messages"
DB = "bench_latency"
TOPICS = 100
SEND_SCRIPT = (
    f"\\set n random(0, {TOPICS - 1})\n"
    "select realtime.send(jsonb_build_object('t', extract(epoch from clock_timestamp()), "
    "'pad', repeat('x', 64)), 'bench', 'topic-' || :n, false);\n"
)


def writers_for(rate: float | None) -> int:
    """Enough pgbench clients that durable commits do not cap the rate below the target."""
    if rate is None or rate > 2000:
        return 8
    return 4 if rate >= 1000 else 1


async def measure(
    ctx: Context,
    gen: LoadGen,
    server_pid: int,
    rate: float | None,
    seconds: float,
    script: str,
    db: str,
    wait_s: float = 10,
) -> dict[str, Any]:
    """Send at ``rate`` (None: as fast as 8 writers go) for ``seconds``; what the subscribers saw."""
    subscribers = int(gen.config["subscribers"])
    await gen.call("reset")
    cpu0 = cpu_seconds(server_pid)
    sent = await asyncio.to_thread(pgbench, ctx.pg, db, script, writers_for(rate), seconds, rate, ctx.workdir)
    cpu = (cpu_seconds(server_pid) - cpu0) / seconds
    expected = sent.transactions * subscribers // TOPICS
    await gen.call("wait", count=expected, timeout=wait_s)
    samples = await gen.latencies_ms()
    return {
        "rate": rate,
        "subscribers": subscribers,
        "achieved": sent.transactions / seconds,
        "tps": sent.tps,
        "expected": expected,
        "received": int(samples.size),
        "samples": samples,
        "server_cpu": cpu,
    }


def row(label: str, m: dict[str, Any]) -> list[object]:
    p50, p95, p99, pmax = percentiles(m["samples"], (50, 95, 99, 100))
    return [
        label,
        fmt(m["achieved"]),
        f"{m['received']:,} / {m['expected']:,}",
        fmt(p50),
        fmt(p95),
        fmt(p99),
        fmt(pmax),
        f"{m['server_cpu'] * 100:.0f}%",
    ]


HEADERS = [
    "rate (msg/s), subscribers, poll interval",
    "sent/s",
    "delivered / expected",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "max ms",
    "server CPU",
]


def cdf_plot(ax: Any, label: str, samples: np.ndarray) -> None:
    if samples.size == 0:
        return
    ordered = np.sort(samples)
    ax.plot(ordered, np.arange(1, ordered.size + 1) / ordered.size, label=label)


async def idle_cost(ctx: Context, server_pid: int, dsn: str, seconds: float) -> tuple[float, float]:
    """CPU share of the sidecar and of its reading backend while nothing is sent."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "select pid from pg_stat_activity where application_name = 'pg-realtime stream'"
        ).fetchone()
    assert row is not None, "the sidecar's reader is not connected"
    backend = int(row[0])
    s0, b0, t0 = cpu_seconds(server_pid), cpu_seconds(backend), time.monotonic()
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - t0
    return (cpu_seconds(server_pid) - s0) / elapsed, (cpu_seconds(backend) - b0) / elapsed


async def run(ctx: Context) -> Result:
    seconds = ctx.seconds(10, 3)
    big, small = (1000, 100) if not ctx.quick else (200, 100)
    rates = (100, 1000, 5000) if not ctx.quick else (100, 1000)
    dsn = ctx.pg.database(DB)
    topics = [f"topic-{i}" for i in range(TOPICS)]
    results: list[tuple[str, dict[str, Any]]] = []
    idle: dict[float, tuple[float, float]] = {}
    # The default poll interval, then a shorter one at 1,000/s: what the interval buys and costs.
    for poll_ms in (5.0, 2.0):
        async with realtime_server(dsn, ctx.workdir, "--poll-interval-ms", str(poll_ms)) as server:
            idle[poll_ms] = await idle_cost(ctx, server.pid, dsn, ctx.seconds(4, 1))
            scenarios = [(big, rates), (small, (1000,))] if poll_ms == 5.0 else [(big, (1000,))]
            for subscribers, scenario_rates in scenarios:
                config = {
                    "url": server.ws_url(),
                    "subscribers": subscribers,
                    "topics": topics,
                    "latency": True,
                }
                async with LoadGen(config, ctx.workdir) as gen:
                    for rate in scenario_rates:
                        m = await measure(ctx, gen, server.pid, rate, seconds, SEND_SCRIPT, DB)
                        label = f"{rate:,}/s, {subscribers}, poll {poll_ms:g} ms"
                        log(f"latency {label}: p50/p99 {percentiles(m['samples'], (50, 99))}")
                        results.append((label, m))

    table = md_table(HEADERS, [row(label, m) for label, m in results])
    idle_table = md_table(
        ["poll interval", "sidecar CPU, idle", "its PostgreSQL backend CPU, idle"],
        [[f"{poll:g} ms", f"{a * 100:.1f}%", f"{b * 100:.1f}%"] for poll, (a, b) in idle.items()],
    )
    markdown = (
        f"{TOPICS} topics, subscribers spread evenly over them (so each message reaches 1/{TOPICS} of "
        f"them), vsn 2.0.0 clients in one picows process; pgbench `-R` sending for {seconds:.0f} s per "
        f"rate; the sidecar polls every 5 ms (the default) unless the row says otherwise.\n\n{table}\n\n"
        f"What polling costs while nothing is sent (share of one core):\n\n{idle_table}"
    )
    at_1000 = next(m for label, m in results if label == f"1,000/s, {big}, poll 5 ms")
    p50, p99 = percentiles(at_1000["samples"], (50, 99))
    met = p50 <= 5 and p99 <= 25 and at_1000["received"] == at_1000["expected"]
    verdict = (
        f"at 1,000 msg/s and {big} subscribers, default 5 ms poll: p50 {p50:.1f} ms, p99 {p99:.1f} ms "
        f"(target p50 <= 5, p99 <= 25): {'met' if met else 'NOT met'}"
    )

    fig, ax = figure(8, 4.5)
    for label, m in results:
        cdf_plot(ax, label, m["samples"])
    ax.set_xscale("log")
    ax.set_xlabel("send-to-client latency, ms (log)")
    ax.set_ylabel("fraction of deliveries")
    ax.axvline(5, color="#999", linestyle=":", linewidth=1)
    ax.axvline(25, color="#d33", linestyle="--", linewidth=1)
    ax.set_title("Database message latency, cumulative distribution")
    ax.legend(fontsize=8)
    plot = ctx.out_dir / "latency.png"
    save(fig, plot)
    return Result(NAME, TITLE, markdown, verdict, plot)
