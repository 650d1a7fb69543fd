"""Send throughput: ``realtime.send()`` against the plain INSERT of the same row.

pgbench runs one single-statement transaction per send, with 1 and 8 concurrent writers:

* **plain INSERT** (baseline): the same row into an unpartitioned table with Supabase's
  message columns and primary key, and nothing else;
* **send()**: ``realtime.send()`` (exception block, payload id, daily partition, xid8 index);
* **send() + sidecar**: the same while ``pg-realtime serve`` probes the snapshot every 5 ms and
  reads every row sent: our wake-up mechanism, and what it costs the writers;
* **INSERT + NOTIFY**: the naive design, the plain INSERT with an AFTER INSERT trigger calling
  ``pg_notify`` (and a session LISTENing): the wake-up that costs every send a commit-time lock.

Variants are interleaved, and each run starts from empty tables after a CHECKPOINT.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator

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
    + """
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


SEND_SCRIPT = (
    f"\\set n random(0, 99)\nselect realtime.send('{PAYLOAD}'::jsonb, 'bench', 'topic-' || :n, false);\n"
)

SCRIPTS = {
    "plain": insert_script("bench_plain"),
    "send": SEND_SCRIPT,
    "notify": insert_script("bench_notify"),
}
LABELS = {
    "plain": "plain INSERT (baseline)",
    "send": "`realtime.send()`",
    "send+sidecar": "`realtime.send()` + sidecar reading (5 ms poll)",
    "notify": "INSERT + `pg_notify` trigger (naive)",
}
ORDER = ("plain", "send", "send+sidecar", "notify")


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


def _tps(results: list[PgbenchResult]) -> float:
    return sum(r.transactions for r in results) / sum(r.transactions / r.tps for r in results if r.tps)


async def _slice(ctx: Context, dsn: str, variant: str, writers: int, seconds: float) -> PgbenchResult:
    if variant == "send+sidecar":
        async with realtime_server(dsn, ctx.workdir):
            return await asyncio.to_thread(
                pgbench, ctx.pg, DB, SCRIPTS["send"], writers, seconds, None, ctx.workdir
            )
    if variant == "notify":
        with listening(dsn):
            return await asyncio.to_thread(
                pgbench, ctx.pg, DB, SCRIPTS["notify"], writers, seconds, None, ctx.workdir
            )
    return await asyncio.to_thread(pgbench, ctx.pg, DB, SCRIPTS[variant], writers, seconds, None, ctx.workdir)


def _reset(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("truncate bench_plain, bench_notify, realtime.messages")
        conn.execute("checkpoint")


async def run(ctx: Context) -> Result:
    seconds = ctx.seconds(10, 2)
    rounds = 5 if not ctx.quick else 1
    dsn = ctx.pg.database(DB)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_SETUP)
    writer_counts = (1, 8)
    runs: dict[tuple[str, int], list[PgbenchResult]] = {(v, w): [] for v in ORDER for w in writer_counts}
    for writers in writer_counts:
        _reset(dsn)
        for round_no in range(rounds):
            # Each variant runs a slice of its time in every round, in a rotating order, so that
            # a slow spell of the shared disk falls on all of them alike.
            shift = round_no % len(ORDER)
            for variant in ORDER[shift:] + ORDER[:shift]:
                runs[variant, writers].append(await _slice(ctx, dsn, variant, writers, seconds / rounds))
        for variant in ORDER:
            log(f"send: {variant} x{writers}: {_tps(runs[variant, writers]):,.0f} tps")

    def ratio(variant: str, writers: int) -> float:
        return _tps(runs[variant, writers]) / _tps(runs["plain", writers])

    def spread(variant: str, writers: int) -> str:
        per_round = [
            r.tps / b.tps for r, b in zip(runs[variant, writers], runs["plain", writers], strict=True)
        ]
        return f"{min(per_round):.2f}-{max(per_round):.2f}"

    rows = []
    for variant in ORDER:
        row: list[object] = [LABELS[variant]]
        for writers in writer_counts:
            row += [
                fmt(_tps(runs[variant, writers])),
                f"**{ratio(variant, writers):.2f}**",
                spread(variant, writers),
            ]
        rows.append(row)
    headers = ["transaction"]
    for writers in writer_counts:
        headers += [f"tps, {writers} writer{'s' if writers > 1 else ''}", "ratio", "ratio per round"]
    ratio8 = ratio("send+sidecar", 8)
    notify8 = ratio("notify", 8)
    markdown = (
        f"pgbench `-M prepared`, {seconds:.0f} s per transaction kind and writer count, run as {rounds} "
        "slices interleaved with the other kinds; one send per transaction, durable commits "
        f"(`synchronous_commit = on`), 100 topics, a {len(PAYLOAD)}-byte payload. The ratio is to the "
        "plain INSERT over the same rounds; 'per round' shows how far single slices scatter on this "
        "machine's disk.\n\n" + md_table(headers, rows)
    )
    beside8 = _tps(runs["send+sidecar", 8]) / _tps(runs["send", 8])
    verdict = (
        f"send() with the sidecar reading: {ratio8:.2f} of plain INSERT at 8 writers (target >= 0.85: "
        f"{'met' if ratio8 >= 0.85 else 'NOT met'}), {beside8:.2f} of send() alone (target >= 0.97: "
        f"{'met' if beside8 >= 0.97 else 'NOT met'}); INSERT + NOTIFY: {notify8:.2f}"
    )

    fig, ax = figure(9, 4.5)
    width = 0.2
    colors = ["#999999", "#3b7dd8", "#2a9d5c", "#d9822b"]
    for i, variant in enumerate(ORDER):
        xs = [w + (i - 1.5) * width for w in range(len(writer_counts))]
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
