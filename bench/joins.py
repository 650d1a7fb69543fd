"""Private joins per second, each checked by the RLS read probe, against public joins.

Public joins run no database work at all, so they are the ceiling of the join path on this
machine (socket, codec, registry); private joins add the read probe: a transaction that
inserts a probe row, switches to the token's role and claims, selects the row under the
user's policies, and rolls back. Many sockets join and leave distinct topics concurrently.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson
import psycopg

from ._harness import Context, Result, figure, fmt, log, md_table, realtime_server, save

NAME = "joins"
TITLE = "RLS-checked private joins per second"
SOCKETS = 64
POLICY = """
create policy bench_read on realtime.messages for select to authenticated
  using ((select realtime.topic()) like 'bench-%' and realtime.messages.extension = 'broadcast')
"""


async def _joiner(url: str, private: bool, stop_at: float, index: int, counts: list[int]) -> None:
    async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
        ref = 0
        while time.monotonic() < stop_at:
            ref += 1
            topic = f"realtime:bench-{index}-{ref % 50}"
            config = {"broadcast": {"self": False, "ack": False}, "private": private}
            await ws.send_str(
                orjson.dumps([str(ref), str(ref), topic, "phx_join", {"config": config}]).decode()
            )
            while True:
                frame = orjson.loads((await ws.receive()).data)
                if frame[3] == "phx_reply" and frame[1] == str(ref):
                    break
            if frame[4]["status"] != "ok":
                raise RuntimeError(f"join refused: {frame[4]}")
            counts[index] += 1
            await ws.send_str(orjson.dumps([str(ref), f"l{ref}", topic, "phx_leave", {}]).decode())
            while True:
                frame = orjson.loads((await ws.receive()).data)
                if frame[3] == "phx_close":
                    break


async def measure(url: str, private: bool, seconds: float) -> float:
    counts = [0] * SOCKETS
    # A short warm-up fills the pool and the plan caches; not counted.
    warm_until = time.monotonic() + 1
    await asyncio.gather(*(_joiner(url, private, warm_until, i, [0] * SOCKETS) for i in range(SOCKETS)))
    started = time.monotonic()
    await asyncio.gather(*(_joiner(url, private, started + seconds, i, counts) for i in range(SOCKETS)))
    return sum(counts) / (time.monotonic() - started)


async def run(ctx: Context) -> Result:
    seconds = ctx.seconds(10, 2)
    dsn = ctx.pg.database("bench_joins")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(POLICY)
    rates: dict[str, float] = {}
    async with realtime_server(dsn, ctx.workdir, "--db-pool-size", "10") as server:
        url = f"http://127.0.0.1:{server.port}/realtime/v1/websocket?vsn=2.0.0&apikey={server.token('authenticated')}"
        for kind, private in (("public", False), ("private", True), ("public ", False), ("private ", True)):
            rate = await measure(url, private, seconds / 2)
            key = kind.strip()
            rates[key] = rates.get(key, 0.0) + rate / 2
            log(f"joins {key}: {rate:,.0f}/s")
    ratio = rates["private"] / rates["public"]
    table = md_table(
        ["join", "joins/s", "ratio to public"],
        [
            ["public (no database work; baseline)", f"{rates['public']:,.0f}", "1.00"],
            ["private, RLS read probe", f"{rates['private']:,.0f}", fmt(ratio, 2)],
        ],
    )
    verdict = (
        f"{rates['private']:,.0f} RLS-checked private joins/s, {ratio:.2f} of public joins in the same run "
        f"(target: at least 1,000/s)"
    )
    markdown = (
        f"{SOCKETS} sockets join and leave distinct topics as fast as replies come back, "
        f"{seconds:.0f} s per kind in two interleaved halves, server pool of 10 connections; "
        f"the load generator shares the two cores with the server and PostgreSQL.\n\n{table}"
    )
    fig, ax = figure(6, 3.5)
    ax.bar(["public", "private (RLS)"], [rates["public"], rates["private"]])
    ax.set_ylabel("joins per second")
    ax.set_title("Joins per second, one server process")
    plot = ctx.out_dir / "joins.png"
    save(fig, plot)
    return Result(NAME, TITLE, markdown, verdict, plot)
