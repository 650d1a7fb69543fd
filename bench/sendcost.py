"""Where the cost of ``realtime.send()`` goes: the same row written five ways, CPU-bound.

With ``synchronous_commit = off`` the disk drops out and what is left is the work each
transaction does; each step adds one thing ``send()`` does to the step before it:

1. the plain INSERT of bench.send (Supabase's columns, uuid primary key);
2. the same table with the reader's ``xid`` and ``seq`` columns, keyed as ``realtime.messages``
   is, by ``(xid, seq, inserted_at)``;
3. an INSERT straight into ``realtime.messages`` (partition routing, the partial replay
   index, the payload check);
4. that INSERT inside a PL/pgSQL exception block (a subtransaction), as Supabase's ``send()``
   does and ours does only under row-level security;
5. ``realtime.send()`` itself: the INSERT from PL/pgSQL without the exception block, plus its
   checks, the payload ``id`` (``jsonb_set``) and ``set_config``; the change from the row above
   is what dropping the subtransaction and adding those bought together.

8 writers, interleaved 2-second slices. This is a breakdown for whoever tunes the SQL, not a
target: bench.send measures what users get, with durable commits.
"""

from __future__ import annotations

import asyncio

import psycopg

from ._harness import Context, PgbenchResult, Result, figure, fmt, log, md_table, pgbench, save
from .send import PAYLOAD, SEND_SCRIPT, _tps, insert_script, plain_table

NAME = "sendcost"
TITLE = "Where the cost of realtime.send() goes (CPU-bound breakdown)"
DB = "bench_sendcost"
WRITERS = 8

_SETUP = (
    plain_table("cost_plain")
    + """
create table cost_xid (like realtime.messages including defaults including identity);
alter table cost_xid add primary key (xid, seq, inserted_at);
create function cost_wrapped(payload jsonb, event text, topic text) returns void
language plpgsql as $$
begin
    begin
        insert into realtime.messages (payload, event, topic, private, extension)
        values (cost_wrapped.payload, cost_wrapped.event, cost_wrapped.topic, false, 'broadcast');
    exception when others then
        raise warning 'cost_wrapped: %', sqlerrm;
    end;
end $$;
"""
)


STEPS = (
    ("plain INSERT (baseline)", insert_script("cost_plain")),
    ("+ xid, seq columns, keyed by (xid, seq, inserted_at)", insert_script("cost_xid")),
    ("INSERT into partitioned realtime.messages", insert_script("realtime.messages")),
    (
        "+ PL/pgSQL exception block",
        f"\\set n random(0, 99)\nselect cost_wrapped('{PAYLOAD}'::jsonb, 'bench', 'topic-' || :n);\n",
    ),
    (
        "`realtime.send()` (checks, payload id, set_config; no exception block)",
        SEND_SCRIPT,
    ),
)


async def run(ctx: Context) -> Result:
    seconds = ctx.seconds(10, 2)
    rounds = 5 if not ctx.quick else 1
    dsn = ctx.pg.database(DB)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_SETUP)
        conn.execute("checkpoint")
    runs: dict[str, list[PgbenchResult]] = {label: [] for label, _ in STEPS}
    for round_no in range(rounds):
        shift = round_no % len(STEPS)
        for label, script in STEPS[shift:] + STEPS[:shift]:
            result = await asyncio.to_thread(
                pgbench,
                ctx.pg,
                DB,
                script,
                WRITERS,
                seconds / rounds,
                None,
                ctx.workdir,
                "-c synchronous_commit=off",
            )
            runs[label].append(result)
    base = _tps(runs[STEPS[0][0]])
    rows = []
    previous = base
    for label, _ in STEPS:
        tps = _tps(runs[label])
        rows.append(
            [label, fmt(tps), f"**{tps / base:.2f}**", f"{tps / previous - 1:+.0%}", f"{1e6 / tps:.0f}"]
        )
        previous = tps
        log(f"sendcost: {label}: {tps:,.0f} tps")
    table = md_table(
        ["transaction", "tps", "ratio to plain", "change from the row above", "µs per send"], rows
    )
    send_ratio = _tps(runs[STEPS[-1][0]]) / base
    markdown = (
        f"pgbench `-M prepared`, {WRITERS} writers, `synchronous_commit = off`, {seconds:.0f} s per row in "
        f"{rounds} interleaved slices. µs per send is wall time per transaction over the whole machine "
        f"(2 cores shared by PostgreSQL and pgbench).\n\n{table}"
    )
    verdict = (
        f"CPU-bound, send() runs at {send_ratio:.2f} of the plain INSERT; "
        "the rows above show which step costs what"
    )

    fig, ax = figure(9, 4.5)
    labels = [label.replace("`", "") for label, _ in STEPS]
    values = [_tps(runs[label]) for label, _ in STEPS]
    bars = ax.barh(labels[::-1], values[::-1], color="#3b7dd8")
    for bar, value in zip(bars, values[::-1], strict=True):
        ax.annotate(f" {value / base:.2f}", (value, bar.get_y() + bar.get_height() / 2), va="center")
    ax.set_xlabel("transactions / s (8 writers, synchronous_commit = off)")
    ax.set_title("What each part of send() costs")
    plot = ctx.out_dir / "sendcost.png"
    save(fig, plot)
    return Result(NAME, TITLE, markdown, verdict, plot)
