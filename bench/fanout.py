"""Fan-out: deliveries per second from one server process to the subscribers of one topic.

Three senders, one load generator, rounds interleaved so that drift on a shared machine hits
all three alike:

* **bare loop**: bench._bare, aiohttp relaying each frame with an ``await send_bytes`` loop
  over the sockets (the WebSocket library's ceiling on this machine);
* **client broadcast**: a vsn 2.0.0 client sends kind 3 frames, pg-realtime relays them as
  kind 4 to every other subscriber;
* **database message**: ``realtime.send()`` of the same payload in one transaction; the
  sidecar reads the rows after commit and fans them out.

Each pg-realtime sender runs on two servers, one with its near-miss diagnostics on (the default)
and one with ``--no-diagnostics``, in alternating order, and again with the two servers' roles
swapped: the ratio of the two is what the
diagnostics cost a fan-out that reaches its subscribers (target >= 0.97). On a shared machine
that end-to-end ratio swings with the neighbours' load, so the same comparison is also made
in process: ``Broadcaster.rows`` of the same rows to as many subscribers (peers that only count
frames), diagnostics on and off, in CPU time, many interleaved rounds.

The clock runs from the first send (the commit, for database messages) to the last arrival
at the load generator, a picows process, which must stay faster than the server: its CPU
share is in the table.
"""

from __future__ import annotations

import logging
import os
import statistics
import time
from typing import Any

import aiohttp
import psycopg
from pg_realtime.broadcast import Broadcaster
from pg_realtime.channels import Channel, Frame, Registry
from pg_realtime.diagnostics import CAUSES, Diagnostics
from pg_realtime.metrics import Metrics
from pg_realtime.phoenix import Vsn
from pg_realtime.rows import Row
from prometheus_client.parser import text_string_to_metric_families

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
#: The abuse limits measure something else: all subscribers come from one address, and the
#: publisher sends as fast as it can.
UNLIMITED = ("--max-connections-per-address", "0", "--max-client-events-per-second", "0")

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


async def _undelivered(url: str) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(f"{url}/metrics") as response:
        text = await response.text()
    return {
        sample.labels["cause"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "realtime_undelivered_messages_total" and sample.value
    }


class _CountingPeer:
    """A subscriber that only counts: the broadcast step without sockets."""

    __slots__ = ("frames",)
    vsn = Vsn.V2

    def __init__(self) -> None:
        self.frames = 0

    def send(self, frame: Frame) -> None:
        self.frames += 1


def _broadcaster(subscribers: int, diagnostics: bool) -> Broadcaster:
    registry = Registry()
    metrics = Metrics()
    diag = None
    if diagnostics:
        counters = {cause: metrics.undelivered.labels(cause) for cause in CAUSES}
        diag = Diagnostics(registry, counters, logging.getLogger("bench.fanout"))
        registry.attach(diag.index)
    for _ in range(subscribers):
        peer = _CountingPeer()
        registry.add(
            Channel(peer=peer, topic="realtime:" + TOPIC, subtopic=TOPIC, join_ref="1", private=False)
        )
    return Broadcaster(registry, metrics, diag)


def in_process(subscribers: int, messages: int, rounds: int) -> dict[bool, float]:
    """Median CPU seconds of ``Broadcaster.rows`` over ``messages`` rows, diagnostics on and off."""
    payload = '{"pad": "' + "x" * PAD + '"}'
    rows = [Row(f"id-{i}", TOPIC, "bench", False, payload, None, time.time()) for i in range(messages)]
    both = {True: _broadcaster(subscribers, True), False: _broadcaster(subscribers, False)}
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(rounds):
        for on in (True, False) if i % 2 == 0 else (False, True):
            started = time.process_time()
            both[on].rows(rows)
            times[on].append(time.process_time() - started)
    return {on: float(statistics.median(spent)) for on, spent in times.items()}


async def _session(
    ctx: Context,
    common: dict[str, Any],
    bare: Any,
    bare_gen: LoadGen,
    dsns: tuple[str, str],
    diagnostics_first: bool,
    messages: int,
    rounds: int,
    results: dict[str, list[dict[str, Any]]],
) -> None:
    """``rounds`` rounds of every sender on two pg-realtime servers, one with diagnostics off.

    The run holds two sessions with the servers' roles swapped: where a server runs (the order
    it started in, its database, its load generator) must not pass for the cost of diagnostics.
    """
    flags = [list(UNLIMITED), [*UNLIMITED, "--no-diagnostics"]]
    if not diagnostics_first:
        flags.reverse()
    async with (
        realtime_server(dsns[0], ctx.workdir, *flags[0]) as first,
        realtime_server(dsns[1], ctx.workdir, *flags[1]) as second,
        LoadGen({**common, "url": first.ws_url()}, ctx.workdir) as first_gen,
        LoadGen({**common, "url": second.ws_url()}, ctx.workdir) as second_gen,
    ):
        servers = [(first, first_gen, dsns[0]), (second, second_gen, dsns[1])]
        (server, gen, dsn), (server_off, gen_off, dsn_off) = servers if diagnostics_first else servers[::-1]
        for i in range(rounds):
            on = [("client", gen, server.pid, dsn), ("database", gen, server.pid, dsn)]
            off = [
                ("client_off", gen_off, server_off.pid, dsn_off),
                ("database_off", gen_off, server_off.pid, dsn_off),
            ]
            # Alternate which of the pair goes first, so that drift favours neither.
            pairs = [(a, b) if i % 2 == 0 else (b, a) for a, b in zip(on, off, strict=True)]
            order = [("bare", bare_gen, bare.pid, dsn), *(run for pair in pairs for run in pair)]
            for kind, kind_gen, pid, kind_dsn in order:
                r = await _round(kind.removesuffix("_off"), kind_gen, pid, kind_dsn, messages)
                log(f"fanout {kind}: {r['rate']:,.0f} deliveries/s ({r['received']}/{r['expected']})")
                results[kind].append(r)
        # A near-miss on the bench topic would send every message down the diagnostics' slow path.
        missed = await _undelivered(server.url)
        log(f"fanout: near-misses counted by the server with diagnostics on: {missed or 'none'}")


async def run(ctx: Context) -> Result:
    subscribers = 200 if ctx.quick else 1000
    messages = 50 if ctx.quick else 400
    rounds = 1 if ctx.quick else 3  # per session: twice that in all
    # A database each: a database round of one server must not make the other fan out too.
    dsns = (ctx.pg.database("bench_fanout"), ctx.pg.database("bench_fanout_b"))
    common = {"subscribers": subscribers, "publisher": True, "topics": [TOPIC], "connect_concurrency": 100}
    load_before = os.getloadavg()[0]
    kinds = ("bare", "client", "client_off", "database", "database_off")
    results: dict[str, list[dict[str, Any]]] = {kind: [] for kind in kinds}
    async with (
        bare_server(ctx.workdir) as bare,
        LoadGen(
            {**common, "url": f"ws://127.0.0.1:{bare.port}/ws", "protocol": "raw"}, ctx.workdir
        ) as bare_gen,
    ):
        log(f"fanout: {subscribers} subscribers on each server, {messages} messages per round")
        for diagnostics_first in (True, False):
            await _session(ctx, common, bare, bare_gen, dsns, diagnostics_first, messages, rounds, results)
    rounds *= 2

    def median(kind: str, key: str) -> float:
        return float(statistics.median(r[key] for r in results[kind]))

    base = median("bare", "rate")
    labels = {
        "bare": "bare aiohttp `send_bytes` loop (baseline)",
        "client": "pg-realtime, client broadcast (kind 3 in, kind 4 out)",
        "client_off": "pg-realtime, client broadcast, `--no-diagnostics`",
        "database": "pg-realtime, database message (`realtime.send()`)",
        "database_off": "pg-realtime, database message, `--no-diagnostics`",
    }
    rows = []
    for kind in kinds:
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
    client_diag = median("client", "rate") / median("client_off", "rate")
    db_diag = median("database", "rate") / median("database_off", "rate")
    load_after = os.getloadavg()[0]
    step_rounds = 5 if ctx.quick else 31
    step = in_process(subscribers, messages, step_rounds)
    step_diag = step[False] / step[True]  # a rate ratio: time off / time on
    log(f"fanout in process: {step[True] * 1e3:.2f} ms on, {step[False] * 1e3:.2f} ms off")
    verdict = (
        f"client broadcast {client_ratio:.2f}, database message {db_ratio:.2f} of the bare loop "
        f"(target >= 0.70): {'met' if min(client_ratio, db_ratio) >= 0.7 else 'NOT met'}; "
        f"diagnostics on / off (target >= 0.97): end to end client broadcast {client_diag:.3f}, "
        f"database message {db_diag:.3f} ({'met' if min(client_diag, db_diag) >= 0.97 else 'NOT met'}), "
        f"the broadcast step in process {step_diag:.3f} ({'met' if step_diag >= 0.97 else 'NOT met'})"
    )
    step_table = md_table(
        ["`Broadcaster.rows`, in process", "CPU ms per round (median)", "deliveries/s", "on / off"],
        [
            [
                "diagnostics on",
                f"{step[True] * 1e3:.2f}",
                fmt(subscribers * messages / step[True]),
                f"**{step_diag:.3f}**",
            ],
            ["diagnostics off", f"{step[False] * 1e3:.2f}", fmt(subscribers * messages / step[False]), ""],
        ],
    )
    markdown = (
        f"{subscribers} subscribers of one topic (vsn 2.0.0), {messages} messages of ~130 bytes per "
        f"round, {rounds} rounds per sender, interleaved; median of the rounds. Diagnostics on / off: "
        f"client broadcast **{client_diag:.3f}**, database message **{db_diag:.3f}**.\n\n{table}\n\n"
        f"The broadcast step alone, in this process ({messages} rows to {subscribers} counting peers, "
        f"{step_rounds} interleaved rounds, CPU time):\n\n{step_table}\n\n"
        f"Load average {load_before:.1f} at the start of the end-to-end rounds, {load_after:.1f} at their "
        f"end, on {os.cpu_count()} CPUs: where other work shares the machine, the end-to-end on / off "
        "ratio follows it (two servers both with diagnostics on have differed by 25% here), while the "
        "diagnostics add one dict lookup per message to a delivered fan-out; the in-process figure "
        "measures that."
    )

    fig, ax = figure(8, 4)
    names = ["bare loop", "client", "client\n(diag. off)", "database", "database\n(diag. off)"]
    values = [median(k, "rate") for k in kinds]
    bars = ax.bar(names, values, color=["#999999", "#3b7dd8", "#9dbfee", "#2a9d5c", "#94d1ad"])
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
