"""Client broadcasts across sidecars: three `pg-realtime serve` on one database, the cluster bus.

A publisher socket on sidecar A sends vsn 2.0.0 kind 3 broadcasts stamped with its send time;
subscribers on A itself (the same-sidecar baseline, in the same run) and on B and C (across the
bus) subtract the stamp on arrival. Load generators are picows processes of their own.

* latency at a steady 1,000 msg/s (100-byte payloads);
* throughput: a burst of 100-byte messages sent as fast as one socket sends, delivered on B
  and C: counted, so any loss shows;
* the database CPU the bus costs (the backends of the publishing and LISTEN connections) at
  1,000 msg/s, and what an idle sidecar costs (the sidecar and all its backends).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

import psycopg

from ._harness import (
    Context,
    LoadGen,
    Result,
    cpu_seconds,
    fmt,
    log,
    md_table,
    percentiles,
    realtime_server,
)

NAME = "cluster"
TITLE = "Client broadcasts across three sidecars (the cluster bus)"
DB = "bench_cluster"
TOPIC = "room"
PAD = 100
SUBSCRIBERS = 5
SERVER_ARGS = ("--max-client-events-per-second", "0")


def backends(dsn: str, names: tuple[str, ...]) -> dict[str, list[int]]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "select application_name, pid from pg_stat_activity "
            "where datname = current_database() and application_name = any(%s)",
            (list(names),),
        ).fetchall()
    found: dict[str, list[int]] = {name: [] for name in names}
    for name, pid in rows:
        found[name].append(int(pid))
    return found


def cpu_of(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError, ValueError):
            total += cpu_seconds(pid)
    return total


async def run(ctx: Context) -> Result:
    seconds = ctx.seconds(10, 3)
    burst = 100_000 if not ctx.quick else 20_000
    rate = 1000
    dsn = ctx.pg.database(DB)
    async with contextlib.AsyncExitStack() as stack:
        servers = [
            await stack.enter_async_context(realtime_server(dsn, ctx.workdir, *SERVER_ARGS)) for _ in range(3)
        ]
        a, b, c = servers
        # Idle first: three sidecars, nobody connected.
        bus_names = ("pg-realtime bus", "pg-realtime bus publish", "pg-realtime stream", "pg-realtime")
        pids = backends(dsn, bus_names)
        # The bus and the registry (on the pool) are what an extra sidecar adds; the reader
        # polls whether there is one sidecar or ten (see `latency` for its idle cost).
        groups = {
            "bus": pids["pg-realtime bus"] + pids["pg-realtime bus publish"],
            "registry": pids["pg-realtime"],
            "reader": pids["pg-realtime stream"],
        }
        idle_s = ctx.seconds(10, 3)
        s0, t0 = cpu_of([s.pid for s in servers]), time.monotonic()
        g0 = {name: cpu_of(group) for name, group in groups.items()}
        await asyncio.sleep(idle_s)
        elapsed = time.monotonic() - t0
        idle_sidecar = (cpu_of([s.pid for s in servers]) - s0) / elapsed / 3
        idle_pg = {name: (cpu_of(group) - g0[name]) / elapsed / 3 for name, group in groups.items()}
        idle_backends = idle_pg["bus"] + idle_pg["registry"]

        common = {"topics": [TOPIC], "latency": True}
        publisher = await stack.enter_async_context(
            LoadGen({**common, "url": a.ws_url(), "subscribers": 0, "publisher": True}, ctx.workdir)
        )
        gens = {
            name: await stack.enter_async_context(
                LoadGen({**common, "url": server.ws_url(), "subscribers": SUBSCRIBERS}, ctx.workdir)
            )
            for name, server in (("A", a), ("B", b), ("C", c))
        }

        async def reset() -> None:
            for gen in gens.values():
                await gen.call("reset")

        # Steady 1,000 msg/s.
        await reset()
        pids = backends(dsn, ("pg-realtime bus", "pg-realtime bus publish"))
        bus_backends = pids["pg-realtime bus"] + pids["pg-realtime bus publish"]
        cpu0 = cpu_of(bus_backends)
        count = int(rate * seconds)
        started = time.monotonic()
        await publisher.call("publish", count=count, rate=rate, topic=TOPIC, pad=PAD)
        steady_elapsed = time.monotonic() - started
        steady: dict[str, Any] = {}
        for name, gen in gens.items():
            report = await gen.call("wait", count=count * SUBSCRIBERS, timeout=30)
            steady[name] = {"received": report["received"], "samples": await gen.latencies_ms()}
        bus_cpu = (cpu_of(bus_backends) - cpu0) / steady_elapsed
        log(f"cluster 1,000/s: {[(n, percentiles(m['samples'], (50, 99))) for n, m in steady.items()]}")

        # Burst: as fast as one socket sends.
        await reset()
        started = time.monotonic()
        sent = await publisher.call("publish", count=burst, rate=0, topic=TOPIC, pad=PAD)
        reports = {}
        for name in ("A", "B", "C"):
            reports[name] = await gens[name].call("wait", count=burst * SUBSCRIBERS, timeout=120)
        local_s = reports["A"]["last"] - sent["t0"]
        last = max(reports[name]["last"] for name in ("B", "C"))
        burst_s = last - sent["t0"]
        log(
            f"burst: sent in {sent['t1'] - sent['t0']:.2f} s, on A by {local_s:.2f} s, "
            f"on B and C by {burst_s:.2f} s"
        )
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("select pg_notification_queue_usage()").fetchone()
        queue_after = float(row[0]) if row else 0.0
        del started

    rows = []
    for name, label in (
        ("A", "same sidecar (A to A)"),
        ("B", "across the bus (A to B)"),
        ("C", "across the bus (A to C)"),
    ):
        m = steady[name]
        p50, p95, p99, pmax = percentiles(m["samples"], (50, 95, 99, 100))
        rows.append(
            [label, f"{m['received']:,} / {count * SUBSCRIBERS:,}", fmt(p50), fmt(p95), fmt(p99), fmt(pmax)]
        )
    table = md_table(
        ["1,000 msg/s, 100 B", "delivered / expected", "p50 ms", "p95 ms", "p99 ms", "max ms"], rows
    )
    per_sub = {name: r["received"] / SUBSCRIBERS for name, r in reports.items()}
    throughput = burst / burst_s if burst_s > 0 else 0.0
    lost = {name: burst - int(n) for name, n in per_sub.items()}
    local_rate = burst / local_s if local_s > 0 else 0.0
    burst_table = md_table(
        [
            "burst of 100 B messages from one socket on A",
            "received per subscriber, A / B / C",
            "msg/s per subscriber on A (same sidecar)",
            "msg/s per subscriber on B and C (across the bus)",
        ],
        [
            [
                f"{burst:,}",
                " / ".join(f"{per_sub[name]:,.0f}" for name in ("A", "B", "C")),
                fmt(local_rate, 0),
                fmt(throughput, 0),
            ]
        ],
    )
    cost_table = md_table(
        ["", "share of one core"],
        [
            [
                "PostgreSQL backends of the bus (1 publisher + 3 listeners) at 1,000 msg/s, per sidecar",
                f"{bus_cpu / 3 * 100:.1f}%",
            ],
            [
                "idle sidecar process, all of it (bus, registry and the reader's waits)",
                f"{idle_sidecar * 100:.2f}%",
            ],
            [
                "its PostgreSQL backends, idle: bus (LISTEN and publishing connections)",
                f"{idle_pg['bus'] * 100:.2f}%",
            ],
            [
                "its PostgreSQL backends, idle: pool (registry renewals every 3 s)",
                f"{idle_pg['registry'] * 100:.2f}%",
            ],
            [
                "its PostgreSQL backends, idle: reader (there with one sidecar too)",
                f"{idle_pg['reader'] * 100:.2f}%",
            ],
        ],
    )
    markdown = (
        f"Three sidecars on one database; one publisher socket on A; {SUBSCRIBERS} subscribers on each "
        f"of A, B and C, vsn 2.0.0 picows clients (one process per sidecar). `pg_notification_queue_usage()` "
        f"after the burst: {queue_after:.4f}.\n\n{table}\n\n{burst_table}\n\n{cost_table}"
    )
    p50, p99 = percentiles(steady["B"]["samples"], (50, 99))
    met = p50 <= 3 and p99 <= 15 and steady["B"]["received"] == count * SUBSCRIBERS
    steady_met = "met" if met else "NOT met"
    burst_met = "met" if throughput >= 20000 and not any(lost.values()) else "NOT met"
    verdict = (
        f"A to B at 1,000 msg/s: p50 {p50:.1f} ms, p99 {p99:.1f} ms (target <= 3 / <= 15: {steady_met}); "
        f"burst {fmt(throughput, 0)} msg/s per subscriber, lost {lost} (target >= 20,000 without loss: "
        f"{burst_met}); bus CPU in PostgreSQL {bus_cpu / 3 * 100:.1f}% of a core per sidecar "
        f"(target <= 10%); idle, bus and registry: {idle_backends * 100:.2f}% of a core in PostgreSQL per "
        f"sidecar (target <= 1%), and the sidecar process {idle_sidecar * 100:.2f}% with its reader's polls"
    )
    return Result(NAME, TITLE, markdown, verdict, None)
