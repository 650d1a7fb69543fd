"""Fan-out: deliveries per second from one server process to the subscribers of one topic.

Three senders, one load generator, rounds interleaved so that drift on a shared machine hits
all three alike:

* **bare loop**: bench._bare, aiohttp relaying each frame with an ``await send_bytes`` loop
  over the sockets (the WebSocket library's ceiling on this machine);
* **client broadcast**: a vsn 2.0.0 client sends kind 3 frames, pg-realtime relays them as
  kind 4 to every other subscriber;
* **database message**: ``realtime.send()`` of the same payload in one transaction; the
  sidecar reads the rows after commit and fans them out.

The clock runs from the first send (the commit, for database messages) to the last arrival
at the load generator, a picows process, which must stay faster than the server: its CPU
share is in the table.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import psycopg

from ._harness import (
    Context,
    LoadGen,
    Result,
    bare_server,
    cpu_seconds,
    figure,
    fmt,
    log,
    md_table,
    realtime_server,
    save,
)

NAME = "fanout"
TITLE = "Fan-out to the subscribers of one topic"
TOPIC = "fanout"
PAD = 64  # a ~130-byte payload, as in the design's baseline

_DB_SEND = """
select realtime.send(
    jsonb_build_object('t', extract(epoch from clock_timestamp()), 'pad', repeat('x', %(pad)s)),
    'bench', %(topic)s, false)
from generate_series(1, %(count)s)
"""


async def _round(kind: str, gen: LoadGen, server_pid: int, dsn: str, messages: int) -> dict[str, Any]:
    subscribers = gen.config["subscribers"]
    expected = subscribers * messages
    await gen.call("reset")
    cpu0 = cpu_seconds(server_pid)
    gen_cpu0 = cpu_seconds(gen.proc.pid)  # type: ignore[union-attr]
    if kind == "database":
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(_DB_SEND, {"pad": PAD, "topic": TOPIC, "count": messages})
            t0 = time.time()  # the commit has returned
    else:
        sent = await gen.call("publish", count=messages, rate=0, topic=TOPIC, pad=PAD)
        t0 = sent["t0"]
    done = await gen.call("wait", count=expected, timeout=180)
    elapsed = done["last"] - t0
    wall = max(elapsed, 1e-9)
    return {
        "kind": kind,
        "received": done["received"],
        "fpr": done["received"] / max(1, done["reads"]),
        "expected": expected,
        "rate": done["received"] / wall,
        "server_cpu": (cpu_seconds(server_pid) - cpu0) / wall,
        "loadgen_cpu": (cpu_seconds(gen.proc.pid) - gen_cpu0) / wall,  # type: ignore[union-attr]
    }


async def run(ctx: Context) -> Result:
    subscribers = 200 if ctx.quick else 1000
    messages = 50 if ctx.quick else 400
    rounds = 1 if ctx.quick else 3
    dsn = ctx.pg.database("bench_fanout")
    common = {"subscribers": subscribers, "publisher": True, "topics": [TOPIC], "connect_concurrency": 100}
    results: dict[str, list[dict[str, Any]]] = {"bare": [], "client": [], "database": []}
    async with (
        bare_server(ctx.workdir) as bare,
        realtime_server(dsn, ctx.workdir) as server,
        LoadGen(
            {**common, "url": f"ws://127.0.0.1:{bare.port}/ws", "protocol": "raw"}, ctx.workdir
        ) as bare_gen,
        LoadGen({**common, "url": server.ws_url()}, ctx.workdir) as rt_gen,
    ):
        log(f"fanout: {subscribers} subscribers on each server, {messages} messages per round")
        for _ in range(rounds):
            for kind, gen, pid in (
                ("bare", bare_gen, bare.pid),
                ("client", rt_gen, server.pid),
                ("database", rt_gen, server.pid),
            ):
                r = await _round(kind, gen, pid, dsn, messages)
                log(f"fanout {kind}: {r['rate']:,.0f} deliveries/s ({r['received']}/{r['expected']})")
                results[kind].append(r)

    def median(kind: str, key: str) -> float:
        return float(statistics.median(r[key] for r in results[kind]))

    base = median("bare", "rate")
    labels = {
        "bare": "bare aiohttp `send_bytes` loop (baseline)",
        "client": "pg-realtime, client broadcast (kind 3 in, kind 4 out)",
        "database": "pg-realtime, database message (`realtime.send()`)",
    }
    rows = []
    for kind in ("bare", "client", "database"):
        complete = all(r["received"] == r["expected"] for r in results[kind])
        rows.append(
            [
                labels[kind],
                fmt(median(kind, "rate")),
                f"**{median(kind, 'rate') / base:.2f}**",
                f"{median(kind, 'server_cpu') * 100:.0f}%",
                f"{median(kind, 'loadgen_cpu') * 100:.0f}%",
                f"{median(kind, 'fpr'):.1f}",
                "yes" if complete else "NO",
            ]
        )
    table = md_table(
        [
            "sender",
            "deliveries/s (median)",
            "ratio to bare loop",
            "server CPU",
            "load generator CPU",
            "frames per client read",
            "all delivered",
        ],
        rows,
    )
    client_ratio = median("client", "rate") / base
    db_ratio = median("database", "rate") / base
    verdict = (
        f"client broadcast {client_ratio:.2f}, database message {db_ratio:.2f} of the bare loop "
        f"(target >= 0.70): {'met' if min(client_ratio, db_ratio) >= 0.7 else 'NOT met'}"
    )
    markdown = (
        f"{subscribers} subscribers of one topic (vsn 2.0.0), {messages} messages of ~130 bytes per "
        f"round, {rounds} rounds per sender, interleaved; median of the rounds.\n\n{table}"
    )

    fig, ax = figure(8, 4)
    names = ["bare loop", "client broadcast", "database message"]
    values = [median(k, "rate") for k in ("bare", "client", "database")]
    bars = ax.bar(names, values, color=["#999999", "#3b7dd8", "#2a9d5c"])
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(
            f"{value / base:.2f}x",
            (bar.get_x() + bar.get_width() / 2, value),
            ha="center",
            va="bottom",
        )
    ax.axhline(base * 0.7, color="#d33", linestyle="--", linewidth=1, label="target: 0.7 x bare loop")
    ax.set_ylabel("deliveries / s")
    ax.set_title(f"Fan-out to {subscribers} subscribers of one topic, one server process")
    ax.legend(loc="lower right")
    plot = ctx.out_dir / "fanout.png"
    save(fig, plot)
    return Result(NAME, TITLE, markdown, verdict, plot)
