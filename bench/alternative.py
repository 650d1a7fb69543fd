"""Against what a Python user would pick instead: encode's ``broadcaster`` on Postgres LISTEN/NOTIFY.

The same database-to-subscribers workload through both, one after the other, in one run:
pgbench writes messages (pg-realtime: ``realtime.send()``; broadcaster: an INSERT whose
trigger calls ``pg_notify``, see bench._broadcaster_app), 1,000 subscribers spread over 100
topics receive them in a picows process. Three figures:

* commit-to-client latency at equal rates;
* the highest rate each sustains: rates double from 1,000/s until p99 passes 100 ms, a
  message is missing, or the writers fall 10% short of the rate;
* the writers' throughput while subscribers receive: 8 pgbench writers, unthrottled.

Each system runs alone (the other's server is stopped), with a fresh server for the
throughput phase, since a system that fell behind in the search still has a backlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import psycopg
from pg_realtime.embedded import free_port

from tests.harness import ServerProcess

from . import latency
from ._broadcaster_app import SCHEMA
from ._harness import (
    VENV_BIN,
    Context,
    LoadGen,
    Result,
    fmt,
    log,
    md_table,
    other_server,
    percentiles,
    realtime_server,
    save,
)

NAME = "broadcaster"
TITLE = "pg-realtime against broadcaster (LISTEN/NOTIFY) behind Starlette"
DB = "bench_alternative"
P99_LIMIT_MS = 100.0
NOTIFY_SCRIPT = (
    f"\\set n random(0, {latency.TOPICS - 1})\n"
    "insert into app_messages (topic, payload) values ('topic-' || :n, "
    "jsonb_build_object('t', extract(epoch from clock_timestamp()), 'pad', repeat('x', 64)));\n"
)


@contextlib.asynccontextmanager
async def broadcaster_server(dsn: str, ctx: Context) -> AsyncIterator[ServerProcess]:
    port = free_port()
    argv = [
        str(VENV_BIN / "uvicorn"),
        "bench._broadcaster_app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--ws",
        "websockets",
        "--log-level",
        "warning",
        "--no-access-log",
    ]
    async with other_server("broadcaster", argv, ctx.workdir, port, {"BENCH_DATABASE_URL": dsn}) as s:
        yield s


async def _wait_subscribed(server: ServerProcess, n: int) -> None:
    """broadcaster LISTENs after the socket is accepted: wait until every socket's LISTEN ran."""
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            async with http.get(f"http://127.0.0.1:{server.port}/ready") as resp:
                if int(await resp.text()) >= n:
                    return
            await asyncio.sleep(0.05)
    raise RuntimeError("broadcaster subscribers did not all subscribe")


@contextlib.asynccontextmanager
async def system(
    kind: str, dsn: str, ctx: Context, subscribers: int
) -> AsyncIterator[tuple[ServerProcess, LoadGen]]:
    topics = [f"topic-{i}" for i in range(latency.TOPICS)]
    if kind == "pg-realtime":
        async with realtime_server(dsn, ctx.workdir) as server:
            config = {"url": server.ws_url(), "subscribers": subscribers, "topics": topics, "latency": True}
            async with LoadGen(config, ctx.workdir) as gen:
                yield server, gen
    else:
        async with broadcaster_server(dsn, ctx) as server:
            config = {
                "url": f"ws://127.0.0.1:{server.port}/ws/{{topic}}",
                "protocol": "raw",
                "subscribers": subscribers,
                "topics": topics,
                "latency": True,
            }
            async with LoadGen(config, ctx.workdir) as gen:
                await _wait_subscribed(server, subscribers)
                yield server, gen


def _passes(m: dict[str, Any]) -> bool:
    p99 = percentiles(m["samples"], (99,))[0]
    return m["received"] == m["expected"] and p99 <= P99_LIMIT_MS and m["achieved"] >= 0.9 * m["rate"]


async def run(ctx: Context) -> Result:
    seconds = ctx.seconds(8, 2)
    step_seconds = ctx.seconds(5, 2)
    subscribers = 200 if ctx.quick else 1000
    equal_rates = (100, 1000)
    search_rates = (2000, 4000, 8000, 16000) if not ctx.quick else (2000,)
    dsn = ctx.pg.database(DB)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(SCHEMA)
    scripts = {"pg-realtime": latency.SEND_SCRIPT, "broadcaster": NOTIFY_SCRIPT}
    found: dict[str, dict[str, Any]] = {}
    for kind in ("pg-realtime", "broadcaster"):
        script = scripts[kind]
        equal: dict[int, dict[str, Any]] = {}
        steps: list[dict[str, Any]] = []
        async with system(kind, dsn, ctx, subscribers) as (server, gen):
            for rate in equal_rates:
                equal[rate] = await latency.measure(ctx, gen, server.pid, rate, seconds, script, DB)
                log(f"{kind} {rate}/s: p50/p99 {percentiles(equal[rate]['samples'], (50, 99))}")
            steps.append(equal[1000])
            if _passes(equal[1000]):
                for rate in search_rates:
                    m = await latency.measure(ctx, gen, server.pid, rate, step_seconds, script, DB, wait_s=5)
                    steps.append(m)
                    log(
                        f"{kind} search {rate}/s: sent {m['achieved']:.0f}/s, "
                        f"{m['received']}/{m['expected']}, p99 {percentiles(m['samples'], (99,))[0]:.1f} ms"
                    )
                    if not _passes(m):
                        break
        async with system(kind, dsn, ctx, subscribers) as (server, gen):
            flat_out = await latency.measure(ctx, gen, server.pid, None, seconds, script, DB, wait_s=5)
        log(f"{kind} unthrottled: {flat_out['tps']:.0f} tps, {flat_out['received']}/{flat_out['expected']}")
        found[kind] = {"equal": equal, "steps": steps, "flat_out": flat_out}

    def sustained(kind: str) -> tuple[float, str]:
        best, why = 0.0, ""
        for m in found[kind]["steps"]:
            if _passes(m):
                best = m["rate"]
                continue
            p99 = percentiles(m["samples"], (99,))[0]
            if m["received"] < m["expected"]:
                why = f"at {m['rate']:,}/s {m['expected'] - m['received']:,} deliveries missing after 5 s"
            elif p99 > P99_LIMIT_MS:
                why = f"at {m['rate']:,}/s p99 {p99:,.0f} ms"
            else:
                why = f"at {m['rate']:,}/s the writers reached only {m['achieved']:,.0f}/s"
            break
        else:
            why = f"still within limits at {best:,.0f}/s, the highest rate tried"
        return best, why

    rows = []
    for rate in equal_rates:
        for kind in ("pg-realtime", "broadcaster"):
            m = found[kind]["equal"][rate]
            p50, p95, p99 = percentiles(m["samples"])
            rows.append(
                [
                    f"{rate:,} msg/s",
                    kind,
                    f"{m['received']:,} / {m['expected']:,}",
                    fmt(p50),
                    fmt(p95),
                    fmt(p99),
                    f"{m['server_cpu'] * 100:.0f}%",
                ]
            )
    latency_table = md_table(
        ["rate", "system", "delivered / expected", "p50 ms", "p95 ms", "p99 ms", "server CPU"], rows
    )
    ours_best, ours_why = sustained("pg-realtime")
    theirs_best, theirs_why = sustained("broadcaster")
    ours_tps = found["pg-realtime"]["flat_out"]["tps"]
    theirs_tps = found["broadcaster"]["flat_out"]["tps"]
    summary = md_table(
        ["figure", "pg-realtime", "broadcaster", "ratio"],
        [
            [
                f"highest rate with p99 <= {P99_LIMIT_MS:.0f} ms, nothing lost (msg/s)",
                f"{ours_best:,.0f} ({ours_why})",
                f"{theirs_best:,.0f} ({theirs_why})",
                f"**{ours_best / theirs_best:.2f}**" if theirs_best else "n/a",
            ],
            [
                "writers' throughput, 8 writers while subscribers receive (tps)",
                fmt(ours_tps),
                fmt(theirs_tps),
                f"**{ours_tps / theirs_tps:.2f}**",
            ],
            [
                "deliveries completed in that run",
                _fraction(found["pg-realtime"]["flat_out"]),
                _fraction(found["broadcaster"]["flat_out"]),
                "",
            ],
        ],
    )
    ahead_latency = all(
        percentiles(found["pg-realtime"]["equal"][r]["samples"], (99,))[0]
        <= percentiles(found["broadcaster"]["equal"][r]["samples"], (99,))[0]
        for r in equal_rates
    )
    ahead = ahead_latency and ours_best >= theirs_best and ours_tps >= theirs_tps
    verdict = (
        f"sustained {ours_best:,.0f} vs {theirs_best:,.0f} msg/s, writers {ours_tps:,.0f} vs "
        f"{theirs_tps:,.0f} tps, p99 {'lower' if ahead_latency else 'NOT lower'} at equal rates: "
        + ("ahead on every figure" if ahead else "NOT ahead on every figure")
    )
    markdown = (
        f"{subscribers} subscribers over {latency.TOPICS} topics; broadcaster 0.3.1 (Postgres backend, "
        "asyncpg) behind Starlette on uvicorn (uvloop, httptools, websockets); its writers INSERT a row "
        "whose trigger calls `pg_notify`. Latency includes the sending transaction's commit, as in the "
        f"latency benchmark; {seconds:.0f} s per rate, {step_seconds:.0f} s per search step.\n\n"
        f"{latency_table}\n\n{summary}"
    )

    fig, (ax1, ax2) = _two_panels()
    for kind, style in (("pg-realtime", "-"), ("broadcaster", "--")):
        steps = found[kind]["steps"]
        xs = [m["rate"] for m in steps]
        ax1.plot(xs, [percentiles(m["samples"], (99,))[0] for m in steps], style + "o", label=f"{kind} p99")
        ax1.plot(xs, [percentiles(m["samples"], (50,))[0] for m in steps], style + "x", label=f"{kind} p50")
    ax1.axhline(P99_LIMIT_MS, color="#d33", linestyle=":", linewidth=1)
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("messages / s")
    ax1.set_ylabel("latency, ms (log)")
    ax1.set_title("Latency as the rate grows")
    ax1.legend(fontsize=7)
    bars = ax2.bar(["pg-realtime", "broadcaster"], [ours_tps, theirs_tps], color=["#3b7dd8", "#d9822b"])
    for bar in bars:
        ax2.annotate(
            f"{bar.get_height():,.0f}",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
        )
    ax2.set_ylabel("writer transactions / s")
    ax2.set_title("Writers, 8 unthrottled")
    plot = ctx.out_dir / "broadcaster.png"
    save(fig, plot)
    return Result(NAME, TITLE, markdown, verdict, plot)


def _fraction(m: dict[str, Any]) -> str:
    return f"{m['received']:,} / {m['expected']:,}"


def _two_panels() -> tuple[Any, tuple[Any, Any]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), dpi=100)
    return fig, (axes[0], axes[1])
