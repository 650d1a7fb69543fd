"""Commit-to-client latency of database messages, at steady rates.

pgbench sends ``realtime.send()`` transactions at a fixed rate (``-R``, Poisson arrivals),
each to one of 100 topics, with ``clock_timestamp()`` in the payload. Subscribers in a
separate picows process, spread evenly over the topics, subtract it from their own clock on
arrival. The stamp is taken inside the sending transaction, so each figure also holds the
rest of that transaction and its commit (a durable one): it bounds commit-to-client from above.
"""

from __future__ import annotations

import asyncio
import os
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
    run_queue_seconds,
    save,
    sidecar_backends,
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


#: Ten sends in one transaction (one statement): how applications that write in batches send.
SEND10_SCRIPT = (
    f"\\set n random(0, {TOPICS - 1})\n"
    "select realtime.send(jsonb_build_object('t', extract(epoch from clock_timestamp()), "
    "'pad', repeat('x', 64)), 'bench', 'topic-' || ((:n + k) % " + str(TOPICS) + "), false) "
    "from generate_series(1, 10) as k;\n"
)


#: The sidecar's default --poll-interval-ms.
DEFAULT_POLL_MS = 2.0

SILENCE_SEND = (
    "select realtime.send(jsonb_build_object('t', extract(epoch from clock_timestamp()), "
    "'pad', repeat('x', 64)), 'bench', 'topic-0', false)"
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
    per_tx: int = 1,
) -> dict[str, Any]:
    """Send ``rate`` messages/s (None: as fast as 8 writers go) for ``seconds``, ``per_tx`` in each
    transaction; what the subscribers saw."""
    subscribers = int(gen.config["subscribers"])
    await gen.call("reset")
    assert gen.proc is not None
    gen_pid = gen.proc.pid
    cpu0, wait0, gen0 = cpu_seconds(server_pid), run_queue_seconds(server_pid), cpu_seconds(gen_pid)
    tps = rate / per_tx if rate is not None else None
    sent = await asyncio.to_thread(pgbench, ctx.pg, db, script, writers_for(rate), seconds, tps, ctx.workdir)
    cpu = (cpu_seconds(server_pid) - cpu0) / seconds
    waited = (run_queue_seconds(server_pid) - wait0) / seconds
    gen_cpu = (cpu_seconds(gen_pid) - gen0) / seconds
    load = os.getloadavg()[0]
    expected = sent.transactions * per_tx * subscribers // TOPICS
    await gen.call("wait", count=expected, timeout=wait_s)
    samples = await gen.latencies_ms()
    return {
        "rate": rate,
        "subscribers": subscribers,
        "achieved": sent.transactions * per_tx / seconds,
        "tps": sent.tps,
        "expected": expected,
        "received": int(samples.size),
        "samples": samples,
        "server_cpu": cpu,
        "server_waited": waited,
        "gen_cpu": gen_cpu,
        "load": load,
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
        f"{m['server_waited'] * 100:.0f}%",
        f"{m['gen_cpu'] * 100:.0f}%",
        f"{m['load']:.1f}",
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
    "server waiting for a CPU",
    "load generator CPU",
    "load average",
]


def cdf_plot(ax: Any, label: str, samples: np.ndarray) -> None:
    if samples.size == 0:
        return
    ordered = np.sort(samples)
    ax.plot(ordered, np.arange(1, ordered.size + 1) / ordered.size, label=label)


async def idle_cost(server_pid: int, dsn: str, seconds: float) -> tuple[float, float]:
    """CPU share of the sidecar and of all its backends while nothing is sent (channels joined)."""
    backends = sidecar_backends(dsn)
    s0, t0 = cpu_seconds(server_pid), time.monotonic()
    b0 = sum(cpu_seconds(pid) for pid in backends)
    await asyncio.sleep(seconds)
    elapsed = time.monotonic() - t0
    busy = sum(cpu_seconds(pid) for pid in backends) - b0
    return (cpu_seconds(server_pid) - s0) / elapsed, busy / elapsed


async def idle_then_silence(
    server_pid: int, dsn: str, gen: LoadGen, samples: int, silence_s: float
) -> tuple[tuple[float, float], np.ndarray]:
    """The idle cost over a first silence of ``silence_s``, and the latency of single messages,
    each sent after ``silence_s`` of nothing sent (the first one right after the idle measure)."""
    subscribers = int(gen.config["subscribers"])
    await gen.call("reset")
    idle = (0.0, 0.0)
    with psycopg.connect(dsn, autocommit=True) as conn:
        for k in range(samples):
            if k == 0:
                idle = await idle_cost(server_pid, dsn, silence_s)
            else:
                await asyncio.sleep(silence_s)
            conn.execute(SILENCE_SEND)
    await gen.call("wait", count=samples * subscribers // TOPICS, timeout=10)
    return idle, await gen.latencies_ms()


async def run(ctx: Context) -> Result:
    seconds = ctx.seconds(10, 3)
    big, small = (1000, 100) if not ctx.quick else (200, 100)
    rates = (100, 1000, 5000) if not ctx.quick else (100, 1000)
    batch_rates: tuple[float | None, ...] = (5000, 10000, 20000, None) if not ctx.quick else (5000,)
    idle_s = ctx.seconds(60, 2)
    silence_samples = int(ctx.seconds(3, 2))
    dsn = ctx.pg.database(DB)
    topics = [f"topic-{i}" for i in range(TOPICS)]
    results: list[tuple[str, dict[str, Any]]] = []
    idle: dict[float, tuple[float, float]] = {}
    silence = np.empty(0)
    # The default poll interval (the shortest time between reads), then a longer one at 1,000/s:
    # what the interval buys and costs.
    for poll_ms in (DEFAULT_POLL_MS, 5.0):
        async with realtime_server(dsn, ctx.workdir, "--poll-interval-ms", str(poll_ms)) as server:
            scenarios = [(big, rates), (small, (1000,))] if poll_ms == DEFAULT_POLL_MS else [(big, (1000,))]
            for subscribers, scenario_rates in scenarios:
                config = {
                    "url": server.ws_url(),
                    "subscribers": subscribers,
                    "topics": topics,
                    "latency": True,
                }
                async with LoadGen(config, ctx.workdir) as gen:
                    if subscribers == big and poll_ms == DEFAULT_POLL_MS:
                        idle[poll_ms], silence = await idle_then_silence(
                            server.pid, dsn, gen, silence_samples, idle_s
                        )
                        log(f"idle at poll {poll_ms:g} ms: {idle[poll_ms]}; after silence: {silence}")
                    elif subscribers == big:
                        idle[poll_ms] = await idle_cost(server.pid, dsn, idle_s)
                        log(f"idle at poll {poll_ms:g} ms: {idle[poll_ms]}")
                    for rate in scenario_rates:
                        m = await measure(ctx, gen, server.pid, rate, seconds, SEND_SCRIPT, DB)
                        label = f"{rate:,}/s, {subscribers}, poll {poll_ms:g} ms"
                        log(f"latency {label}: p50/p99 {percentiles(m['samples'], (50, 99))}")
                        results.append((label, m))
                    if subscribers == big and poll_ms == DEFAULT_POLL_MS:
                        for batch_rate in batch_rates:
                            m = await measure(
                                ctx, gen, server.pid, batch_rate, seconds, SEND10_SCRIPT, DB, per_tx=10
                            )
                            what = f"{batch_rate:,.0f}/s" if batch_rate else "unthrottled"
                            label = f"{what} in tx of 10, {subscribers}, poll {poll_ms:g} ms"
                            log(f"latency {label}: p50/p99 {percentiles(m['samples'], (50, 99))}")
                            results.append((label, m))

    table = md_table(HEADERS, [row(label, m) for label, m in results])
    silence_p50 = percentiles(silence, (50,))[0] if silence.size else float("nan")
    idle_table = md_table(
        ["poll interval", "sidecar CPU, idle", "its PostgreSQL backends' CPU, idle"],
        [[f"{poll:g} ms", f"{a * 100:.1f}%", f"{b * 100:.1f}%"] for poll, (a, b) in idle.items()],
    )
    markdown = (
        f"{TOPICS} topics, subscribers spread evenly over them (so each message reaches 1/{TOPICS} of "
        f"them), vsn 2.0.0 clients in one picows process; pgbench `-R` sending for {seconds:.0f} s per "
        f"rate; reads start at most every {DEFAULT_POLL_MS:g} ms (the default poll interval) unless the row "
        f"says otherwise. Server CPU and "
        f"the time it was runnable but waiting for a CPU are shares of the sending seconds (from /proc); "
        f"the load average (1 min, at the end of the row) counts everything on the machine's "
        f"{os.cpu_count()} CPUs, other work included.\n\n{table}\n\n"
        f"What polling costs while nothing is sent for {idle_s:.0f} s, {big} subscribers joined (share "
        f"of one core; the backends are the reader's and the pool's, from /proc):\n\n{idle_table}\n\n"
        f"A single message after {idle_s:.0f} s of silence, {silence_samples} times, {silence.size} "
        f"deliveries: p50 {fmt(silence_p50)} ms, max {fmt(percentiles(silence, (100,))[0])} ms."
    )
    at_1000 = next(m for label, m in results if label == f"1,000/s, {big}, poll {DEFAULT_POLL_MS:g} ms")
    p50, p99 = percentiles(at_1000["samples"], (50, 99))
    met = p50 <= 3 and p99 <= 15 and at_1000["received"] == at_1000["expected"]
    side, backends = idle[DEFAULT_POLL_MS]
    idle_met = side <= 0.02 and backends <= 0.02
    verdict = (
        f"at 1,000 msg/s and {big} subscribers, default {DEFAULT_POLL_MS:g} ms poll: "
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms "
        f"(target p50 <= 3, p99 <= 15): {'met' if met else 'NOT met'}; idle {side * 100:.1f}% sidecar, "
        f"{backends * 100:.1f}% backends (target <= 2% each): {'met' if idle_met else 'NOT met'}; "
        f"first message after {idle_s:.0f} s of silence p50 {silence_p50:.1f} ms (target <= 10): "
        f"{'met' if silence_p50 <= 10 else 'NOT met'}"
    )
    batch = next((m for label, m in results if label.startswith("10,000/s in tx of 10")), None)
    if batch is not None:
        b99 = percentiles(batch["samples"], (99,))[0]
        ok = b99 <= 100 and batch["received"] == batch["expected"] and batch["achieved"] >= 9500
        verdict += (
            f"; 10,000 msg/s in transactions of 10: sent {batch['achieved']:,.0f}/s, p99 {b99:.1f} ms "
            f"(target p99 <= 100, all delivered): {'met' if ok else 'NOT met'}"
        )

    fig, ax = figure(8, 4.5)
    for label, m in results:
        cdf_plot(ax, label, m["samples"])
    ax.set_xscale("log")
    ax.set_xlabel("send-to-client latency, ms (log)")
    ax.set_ylabel("fraction of deliveries")
    ax.axvline(3, color="#999", linestyle=":", linewidth=1)
    ax.axvline(15, color="#d33", linestyle="--", linewidth=1)
    ax.set_title("Database message latency, cumulative distribution")
    ax.legend(fontsize=8)
    plot = ctx.out_dir / "latency.png"
    save(fig, plot)
    return Result(NAME, TITLE, markdown, verdict, plot)
