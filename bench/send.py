"""Send throughput: ``realtime.send()`` against the plain INSERT of the same row.

pgbench runs one single-statement transaction per send, with 1 and 8 concurrent writers:

* **plain INSERT** (baseline): the same row into an unpartitioned table with Supabase's
  message columns and primary key, and nothing else;
* **send()**: ``realtime.send()`` (checks, payload id, daily partition, xid8 index; no
  subtransaction);
* **Supabase's send()**: Supabase's own ``send()`` and ``messages`` table (``supabase_send.sql``,
  schema ``supabase_realtime``): the anchor;
* **send() + sidecar**: ``realtime.send()`` while ``pg-realtime serve`` (default settings) runs
  with no channel joined: its reader pauses, so this is what an idle sidecar costs the writers;
* **send() + sidecar, a subscriber**: the same with one client joined on one of the 100 topics:
  the reader then waits for commits in its backend and reads every row sent, at most every
  2 ms (our wake-up mechanism), and what it costs the writers;
* **send() under RLS** and **Supabase's send() under RLS**: both as the role ``authenticated``
  with an INSERT policy that lets it write: ours takes its guarded path (a subtransaction per
  send, as Supabase's always does), so this is what the guard costs;
* **INSERT + NOTIFY**: the naive design, the plain INSERT with an AFTER INSERT trigger calling
  ``pg_notify`` (and a session LISTENing): the wake-up that costs every send a commit-time lock.

Each round runs every variant for a slice of its time in the order A B C ... C B A, so that a
slow spell of the shared machine falls on all of them alike; each writer count starts from
empty tables after a CHECKPOINT. WAL bytes per send are the WAL written during a variant's
slices over the transactions they ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import orjson
import psycopg

from ._harness import (
    Context,
    PgbenchResult,
    Result,
    figure,
    fmt,
    log,
    md_table,
    pgbench,
    realtime_server,
    save,
    sidecar_backends,
    sidecar_cpu_seconds,
)

NAME = "send"
TITLE = "Send throughput (pgbench)"
DB = "bench_send"
PAYLOAD = '{"pad": "' + "x" * 64 + '"}'


def plain_table(name: str) -> str:
    """DDL of a table with Supabase's message columns: no partitions, no xid, no trigger."""
    return f"""create table {name} (
    topic text not null,
    extension text not null,
    payload jsonb,
    event text,
    private boolean default false,
    updated_at timestamp not null default timezone('utc', now()),
    inserted_at timestamp not null default timezone('utc', now()),
    id uuid not null default gen_random_uuid() primary key
);
"""


_SETUP = (
    plain_table("bench_plain")
    + (Path(__file__).parent / "supabase_send.sql").read_text()
    + """
grant usage on schema supabase_realtime to authenticated;
grant insert on supabase_realtime.messages to authenticated;
create policy bench_writers on supabase_realtime.messages for insert to authenticated with check (true);
create policy bench_writers on realtime.messages for insert to authenticated with check (true);
create table bench_notify (like bench_plain including all);
create function bench_notify_trigger() returns trigger language plpgsql as $$
begin
    perform pg_notify('realtime_messages', new.id::text);
    return null;
end $$;
create trigger bench_notify after insert on bench_notify
    for each row execute function bench_notify_trigger();
"""
)


def insert_script(table: str) -> str:
    """A pgbench script inserting one message-shaped row into ``table``."""
    return (
        "\\set n random(0, 99)\n"
        f"insert into {table} (topic, extension, payload, event, private) "
        f"values ('topic-' || :n, 'broadcast', '{PAYLOAD}'::jsonb, 'bench', false);\n"
    )


def send_script(function: str) -> str:
    return f"\\set n random(0, 99)\nselect {function}('{PAYLOAD}'::jsonb, 'bench', 'topic-' || :n, false);\n"


SEND_SCRIPT = send_script("realtime.send")
SUPABASE_SCRIPT = send_script("supabase_realtime.send")

SCRIPTS = {
    "plain": insert_script("bench_plain"),
    "send": SEND_SCRIPT,
    "supabase": SUPABASE_SCRIPT,
    "send+sidecar": SEND_SCRIPT,
    "send+subscriber": SEND_SCRIPT,
    "send+rls": SEND_SCRIPT,
    "supabase+rls": SUPABASE_SCRIPT,
    "notify": insert_script("bench_notify"),
}
LABELS = {
    "plain": "plain INSERT (baseline)",
    "send": "`realtime.send()`",
    "supabase": "Supabase's `send()` on Supabase's table",
    "send+sidecar": "`realtime.send()` + sidecar, no channel joined (default settings)",
    "send+subscriber": "`realtime.send()` + sidecar reading for one subscriber",
    "send+rls": "`realtime.send()` under RLS (guarded path)",
    "supabase+rls": "Supabase's `send()` under RLS",
    "notify": "INSERT + `pg_notify` trigger (naive)",
}
ORDER = ("plain", "send", "supabase", "send+sidecar", "send+subscriber", "send+rls", "supabase+rls", "notify")
#: Sessions of these variants run as ``authenticated``, so row-level security applies to them.
AS_AUTHENTICATED = {"send+rls", "supabase+rls"}


@contextlib.contextmanager
def listening(dsn: str) -> Iterator[None]:
    """A session that LISTENs and drains notifications, as the naive design's server would."""
    stop = threading.Event()
    conn = psycopg.connect(dsn, autocommit=True)
    conn.execute("listen realtime_messages")

    def drain() -> None:
        while not stop.is_set():
            for _ in conn.notifies(timeout=0.2):
                pass

    thread = threading.Thread(target=drain, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        conn.close()


@contextlib.asynccontextmanager
async def subscribed(port: int, token: str) -> AsyncIterator[None]:
    """One client joined on ``topic-0`` (public), reading what it is sent."""
    url = f"http://127.0.0.1:{port}/realtime/v1/websocket?vsn=1.0.0&apikey={token}"
    async with aiohttp.ClientSession() as http, http.ws_connect(url, max_msg_size=0) as ws:
        config = {"broadcast": {"self": False, "ack": False}, "private": False}
        await ws.send_str(
            orjson.dumps(
                {"topic": "realtime:topic-0", "event": "phx_join", "payload": {"config": config}, "ref": "1"}
            ).decode()
        )
        while True:
            frame = orjson.loads((await ws.receive()).data)
            if frame.get("event") == "phx_reply" and frame.get("ref") == "1":
                break
        if frame["payload"]["status"] != "ok":
            raise RuntimeError(f"join refused: {frame['payload']}")

        async def drain() -> None:
            async for _ in ws:
                pass

        task = asyncio.create_task(drain())
        try:
            yield
        finally:
            task.cancel()


def _tps(results: list[PgbenchResult]) -> float:
    return sum(r.transactions for r in results) / sum(r.transactions / r.tps for r in results if r.tps)


def _wal_lsn(dsn: str) -> int:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("select pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
        assert row is not None
        return int(row[0])


async def _slice(
    ctx: Context, dsn: str, variant: str, writers: int, seconds: float
) -> tuple[PgbenchResult, int, float]:
    """One slice of ``variant``: pgbench's result, the WAL bytes written meanwhile, and the CPU
    seconds the sidecar's process and its PostgreSQL sessions used meanwhile (0 without one)."""
    options = "-c role=authenticated" if variant in AS_AUTHENTICATED else ""

    def run() -> PgbenchResult:
        return pgbench(ctx.pg, DB, SCRIPTS[variant], writers, seconds, None, ctx.workdir, options)

    if variant in ("send+sidecar", "send+subscriber"):
        async with realtime_server(dsn, ctx.workdir) as server, contextlib.AsyncExitStack() as stack:
            if variant == "send+subscriber":
                await stack.enter_async_context(subscribed(server.port, server.token()))
            backends = sidecar_backends(dsn)
            start, cpu_start = _wal_lsn(dsn), sidecar_cpu_seconds(server.pid, backends)
            result = await asyncio.to_thread(run)
            # A session the sidecar opened meanwhile counts from its start.
            backends += [pid for pid in sidecar_backends(dsn) if pid not in backends]
            cpu = sidecar_cpu_seconds(server.pid, backends) - cpu_start
            return result, _wal_lsn(dsn) - start, cpu
    start = _wal_lsn(dsn)
    if variant == "notify":
        with listening(dsn):
            result = await asyncio.to_thread(run)
    else:
        result = await asyncio.to_thread(run)
    return result, _wal_lsn(dsn) - start, 0.0


def _reset(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("truncate bench_plain, bench_notify, realtime.messages, supabase_realtime.messages")
        conn.execute("checkpoint")


async def run(ctx: Context) -> Result:
    seconds = ctx.seconds(10, 2)
    rounds = 5 if not ctx.quick else 1
    dsn = ctx.pg.database(DB)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_SETUP)
    writer_counts = (1, 8)
    runs: dict[tuple[str, int], list[PgbenchResult]] = {(v, w): [] for v in ORDER for w in writer_counts}
    wal: dict[tuple[str, int], int] = dict.fromkeys(runs, 0)
    sidecar_cpu: dict[tuple[str, int], float] = dict.fromkeys(runs, 0.0)
    for writers in writer_counts:
        _reset(dsn)
        for _round in range(rounds):
            # A B C ... C B A: each variant runs two half-slices per round, placed symmetrically,
            # so that a drift of the shared machine within the round falls on all of them alike.
            for variant in ORDER + ORDER[::-1]:
                result, wal_bytes, cpu = await _slice(ctx, dsn, variant, writers, seconds / rounds / 2)
                runs[variant, writers].append(result)
                wal[variant, writers] += wal_bytes
                sidecar_cpu[variant, writers] += cpu
        for variant in ORDER:
            log(f"send: {variant} x{writers}: {_tps(runs[variant, writers]):,.0f} tps")

    def ratio(variant: str, writers: int, base: str = "plain") -> float:
        return _tps(runs[variant, writers]) / _tps(runs[base, writers])

    def spread(variant: str, writers: int, base: str = "plain") -> str:
        # Per round: its two half-slices of the variant against those of the base.
        half = len(runs[variant, writers]) // rounds
        per_round = []
        for r in range(rounds):
            mine = runs[variant, writers][r * half : (r + 1) * half]
            theirs = runs[base, writers][r * half : (r + 1) * half]
            per_round.append(_tps(mine) / _tps(theirs))
        return f"{min(per_round):.2f}-{max(per_round):.2f}"

    def sidecar_share(variant: str, writers: int) -> float:
        """The sidecar's CPU (process and PostgreSQL sessions) over the variant's sending time,
        as a share of one core: what it took from the writers, independent of the disk's noise."""
        sending = sum(r.transactions / r.tps for r in runs[variant, writers] if r.tps)
        return sidecar_cpu[variant, writers] / sending

    def wal_per_send(variant: str, writers: int) -> float:
        return wal[variant, writers] / sum(r.transactions for r in runs[variant, writers])

    rows = []
    for variant in ORDER:
        row: list[object] = [LABELS[variant]]
        for writers in writer_counts:
            row += [
                fmt(_tps(runs[variant, writers])),
                f"**{ratio(variant, writers):.2f}**",
                spread(variant, writers),
            ]
        row.append(f"{wal_per_send(variant, 8):.0f}")
        rows.append(row)
    headers = ["transaction"]
    for writers in writer_counts:
        headers += [f"tps, {writers} writer{'s' if writers > 1 else ''}", "ratio", "ratio per round"]
    headers.append("WAL bytes per send, 8 writers")
    pairs = [
        ("`realtime.send()` ÷ Supabase's `send()`", "send", "supabase"),
        ("the same, both under RLS", "send+rls", "supabase+rls"),
        ("`realtime.send()` under RLS ÷ without (the guard's cost)", "send+rls", "send"),
    ]
    pair_rows = []
    for label, mine, theirs in pairs:
        row = [label]
        for writers in writer_counts:
            row += [f"**{ratio(mine, writers, theirs):.2f}**", spread(mine, writers, theirs)]
        row.append(f"{wal_per_send(mine, 8) / wal_per_send(theirs, 8):.2f}")
        pair_rows.append(row)
    pair_headers = ["comparison"]
    for writers in writer_counts:
        pair_headers += [f"tps ratio, {writers} writer{'s' if writers > 1 else ''}", "per round"]
    pair_headers.append("WAL ratio, 8 writers")
    sidecar8 = ratio("send+sidecar", 8)
    alone8 = ratio("send", 8)
    beside8 = sidecar8 / alone8
    reading8 = ratio("send+subscriber", 8) / alone8
    anchor8 = ratio("send", 8, "supabase")
    wal_ratio = wal_per_send("send", 8) / wal_per_send("supabase", 8)
    notify8 = ratio("notify", 8)
    idle_share8 = sidecar_share("send+sidecar", 8)
    reading_share8 = sidecar_share("send+subscriber", 8)
    markdown = (
        f"pgbench `-M prepared`, {seconds:.0f} s per transaction kind and writer count, run as {rounds} "
        "rounds of two half-slices in the order A B C ... C B A; one send per transaction, durable "
        f"commits (`synchronous_commit = on`), 100 topics, a {len(PAYLOAD)}-byte payload, public "
        "messages. The ratio is to the plain INSERT over the same rounds; 'per round' shows how far "
        "single rounds scatter on this machine's disk. WAL bytes include full-page images (each "
        "writer count starts after a CHECKPOINT, on empty tables).\n\n"
        + md_table(headers, rows)
        + "\n\n"
        + md_table(pair_headers, pair_rows)
        + "\n\nWhat the sidecar itself took while the writers ran (its process and its PostgreSQL "
        "sessions, CPU from /proc over the variant's sending time, as a share of one core), which a "
        "tps ratio shows only through the disk's noise: "
        + ", ".join(
            f"{writers} writer{'s' if writers > 1 else ''}: {sidecar_share('send+sidecar', writers):.1%} "
            f"with no channel joined, {sidecar_share('send+subscriber', writers):.1%} "
            "reading for a subscriber"
            for writers in writer_counts
        )
        + "."
    )

    def met(ok: bool) -> str:
        return "met" if ok else "NOT met"

    verdict = (
        f"8 writers: send() {alone8:.2f} of plain INSERT alone (target >= 0.92: {met(alone8 >= 0.92)}), "
        f"{sidecar8:.2f} with the sidecar running, no channel joined "
        f"(target >= 0.90: {met(sidecar8 >= 0.90)}), "
        f"{beside8:.2f} of send() alone (target >= 0.97: {met(beside8 >= 0.97)}; the sidecar took "
        f"{idle_share8:.1%} of a core meanwhile), "
        f"{reading8:.2f} of send() alone with the sidecar reading for a subscriber "
        f"({reading_share8:.1%} of a core); "
        f"{anchor8:.2f} of Supabase's send() (target >= 1.15: {met(anchor8 >= 1.15)}); "
        f"WAL per send {wal_ratio:.2f} of Supabase's (target <= 1.0: {met(wal_ratio <= 1.0)}); "
        f"INSERT + NOTIFY: {notify8:.2f}"
    )

    fig, ax = figure(10, 4.5)
    width = 0.1
    colors = ["#999999", "#3b7dd8", "#8e44ad", "#2a9d5c", "#1e6b40", "#6fa8dc", "#c39bd3", "#d9822b"]
    for i, variant in enumerate(ORDER):
        xs = [w + (i - (len(ORDER) - 1) / 2) * width for w in range(len(writer_counts))]
        values = [_tps(runs[variant, w]) for w in writer_counts]
        bars = ax.bar(xs, values, width, label=LABELS[variant].replace("`", ""), color=colors[i])
        for bar, w in zip(bars, writer_counts, strict=True):
            ax.annotate(
                f"{ratio(variant, w):.2f}",
                (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center",
                va="bottom",
            )
    ax.set_xticks(range(len(writer_counts)), [f"{w} writer{'s' if w > 1 else ''}" for w in writer_counts])
    ax.set_ylabel("transactions / s")
    ax.set_title("Send throughput, ratio to the plain INSERT above each bar")
    ax.legend(fontsize=8, loc="upper left")
    plot = ctx.out_dir / "send.png"
    save(fig, plot)
    return Result(NAME, TITLE, markdown, verdict, plot)
