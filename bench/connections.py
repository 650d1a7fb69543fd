"""Connections: idle subscribed sockets held by one server process, and what each one costs.

The load generator opens N sockets; on pg-realtime each joins one of 100 topics, on the bare
aiohttp server (the library's own cost per socket) they only connect. Resident memory per
connection is the growth of the server's RSS (/proc/<pid>/status) from just before the
sockets open to when all are open, divided by N. Afterwards one database message per topic
checks that every socket still receives.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg

from tests.harness import ServerProcess

from ._harness import (
    Context,
    LoadGen,
    Result,
    bare_server,
    figure,
    fmt,
    log,
    md_table,
    realtime_server,
    rss_kb,
    save,
)

NAME = "connections"
TITLE = "Idle subscribed connections on one server process"
DB = "bench_connections"
TOPICS = 100


async def hold(server: ServerProcess, config: dict[str, Any], ctx: Context, n: int) -> dict[str, Any]:
    # One connection first, so that what every connection needs once (code paths, buffers) is
    # in the baseline and not charged to the N.
    async with LoadGen({**config, "subscribers": 1}, ctx.workdir):
        await asyncio.sleep(0.5)
        before = rss_kb(server.pid)
        started = time.monotonic()
        async with LoadGen({**config, "subscribers": n, "read_buffer": 1024}, ctx.workdir) as gen:
            connect_s = time.monotonic() - started
            await asyncio.sleep(2)
            after = rss_kb(server.pid)
            result = {
                "n": n,
                "rss_before_kb": before,
                "rss_after_kb": after,
                "per_conn_kb": (after - before) / n,
                "connect_rate": n / connect_s,
                "alive": None,
            }
            if config.get("protocol", "phoenix") == "phoenix":
                result["alive"] = await _all_receive(gen, ctx, n)
    return result


async def _all_receive(gen: LoadGen, ctx: Context, n: int) -> int:
    """Send one database message to each topic; how many of the n sockets got theirs."""
    await gen.call("reset")
    async with await psycopg.AsyncConnection.connect(ctx.pg.cluster.dsn(DB), autocommit=True) as conn:
        await conn.execute(
            "select realtime.send(jsonb_build_object('t', extract(epoch from clock_timestamp())), "
            "'ping', 'topic-' || i, false) from generate_series(0, %s) as i",
            (TOPICS - 1,),
        )
    report = await gen.call("wait", count=n, timeout=30)
    return int(report["received"])


async def run(ctx: Context) -> Result:
    n = 1000 if ctx.quick else 10_000
    dsn = ctx.pg.database(DB)
    topics = [f"topic-{i}" for i in range(TOPICS)]
    common = {"topics": topics, "connect_concurrency": 200}
    async with bare_server(ctx.workdir) as bare:
        bare_result = await hold(
            bare, {**common, "url": f"ws://127.0.0.1:{bare.port}/ws", "protocol": "raw"}, ctx, n
        )
    log(f"connections: bare {bare_result['per_conn_kb']:.1f} KB per connection")
    async with realtime_server(dsn, ctx.workdir) as server:
        rt_result = await hold(server, {**common, "url": server.ws_url()}, ctx, n)
    log(f"connections: pg-realtime {rt_result['per_conn_kb']:.1f} KB per connection")

    rows = []
    for label, r in (
        ("bare aiohttp WebSocket (baseline)", bare_result),
        ("pg-realtime, each socket joined to a channel", rt_result),
    ):
        rows.append(
            [
                label,
                f"{r['n']:,}",
                f"{r['rss_before_kb'] / 1024:.0f} -> {r['rss_after_kb'] / 1024:.0f}",
                f"**{r['per_conn_kb']:.1f}**",
                f"{r['per_conn_kb'] / bare_result['per_conn_kb']:.2f}",
                fmt(r["connect_rate"]),
                "n/a" if r["alive"] is None else f"{r['alive']:,} / {r['n']:,}",
            ]
        )
    table = md_table(
        [
            "server",
            "sockets",
            "RSS MiB",
            "KB per connection",
            "ratio to bare",
            "connections/s opened",
            "received a message afterwards",
        ],
        rows,
    )
    per_conn = rt_result["per_conn_kb"]
    all_alive = rt_result["alive"] == n
    verdict = (
        f"{n:,} sockets, {per_conn:.1f} KB each "
        f"({per_conn / bare_result['per_conn_kb']:.2f} of bare aiohttp; target <= 30 KB): "
        + ("met" if per_conn <= 30 and all_alive else "NOT met")
    )
    markdown = (
        f"{n:,} WebSocket connections from one picows process; on pg-realtime each joined one of "
        f"{TOPICS} public topics (vsn 2.0.0). KB = 1024 bytes.\n\n{table}"
    )

    fig, ax = figure(7, 4)
    labels = ["bare aiohttp", "pg-realtime"]
    values = [bare_result["per_conn_kb"], per_conn]
    bars = ax.bar(labels, values, color=["#999999", "#3b7dd8"])
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(f"{value:.1f} KB", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom")
    ax.axhline(30, color="#d33", linestyle="--", linewidth=1, label="target: 30 KB")
    ax.set_ylabel("resident memory per connection, KB")
    ax.set_title(f"{n:,} idle connections on one server process")
    ax.legend()
    plot = ctx.out_dir / "connections.png"
    save(fig, plot)
    return Result(NAME, TITLE, markdown, verdict, plot)
