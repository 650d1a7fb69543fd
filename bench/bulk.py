"""Broadcasting a bulk write: a 10,000-row UPDATE of a narrow table, three ways.

* **no trigger** (baseline): the UPDATE alone;
* **row trigger**: the canonical ``broadcast_changes()`` trigger, FOR EACH ROW: one ``send()``
  per row;
* **statement helper**: ``realtime.broadcast_changes_statement()`` FOR EACH STATEMENT with
  transition tables: one INSERT ... SELECT for all the rows;
* **floor**: a statement trigger that inserts one message row per changed row with an empty
  payload and nothing computed: what any design that stores one row per message pays, so the
  "no trigger" ratio that the statement helper can reach at best.

Each round runs every variant in the order A B C C B A; a slice is a few UPDATEs of all 10,000
rows, each its own transaction (durable commit), timed end to end by the client. Between
slices the messages are truncated and the tables vacuumed, so that no variant inherits another's
bloat.
"""

from __future__ import annotations

import time

import psycopg

from ._harness import Context, Result, figure, fmt, log, md_table, save

NAME = "bulk"
TITLE = "Broadcasting a 10,000-row UPDATE (row trigger, statement helper)"
DB = "bench_bulk"
ROWS = 10_000

_SETUP = f"""
create table bulk_none (id int primary key, n int not null);
insert into bulk_none select g, 0 from generate_series(1, {ROWS}) as g;
create table bulk_row (like bulk_none including all);
insert into bulk_row select * from bulk_none;
create table bulk_statement (like bulk_none including all);
insert into bulk_statement select * from bulk_none;
create function bulk_row_changes() returns trigger language plpgsql as $$
begin
    perform realtime.broadcast_changes(
        'bulk:' || coalesce(new.id, old.id)::text, tg_op, tg_op, tg_table_name, tg_table_schema,
        new, old, tg_level
    );
    return null;
end $$;
create trigger bulk_row_broadcast after update on bulk_row
    for each row execute function bulk_row_changes();
create trigger bulk_statement_broadcast after update on bulk_statement
    referencing old table as old_rows new table as new_rows
    for each statement execute function realtime.broadcast_changes_statement('bulk:', 'id');
create table bulk_floor (like bulk_none including all);
insert into bulk_floor select * from bulk_none;
create function bulk_floor_rows() returns trigger language plpgsql as $$
begin
    insert into realtime.messages (payload, event, topic, private, extension)
    select '{{}}', 'UPDATE', 'bulk:' || n.id::text, true, 'broadcast' from new_rows as n;
    return null;
end $$;
create trigger bulk_floor_broadcast after update on bulk_floor
    referencing old table as old_rows new table as new_rows
    for each statement execute function bulk_floor_rows();
"""

VARIANTS = {
    "none": ("no trigger (baseline)", "bulk_none"),
    "row": ("`broadcast_changes()` row trigger", "bulk_row"),
    "statement": ("`broadcast_changes_statement()` statement trigger", "bulk_statement"),
    "floor": ("floor: one empty message row per changed row", "bulk_floor"),
}


def _slice(dsn: str, table: str, updates: int) -> float:
    """Seconds for ``updates`` UPDATEs of every row of ``table``, one transaction each."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"update {table} set n = n + 1")  # warm the session's plans and caches
        started = time.perf_counter()
        for _ in range(updates):
            conn.execute(f"update {table} set n = n + 1")
        elapsed = time.perf_counter() - started
        conn.execute("truncate realtime.messages")
        conn.execute(f"vacuum {table}")
        conn.execute("checkpoint")
    return elapsed


async def run(ctx: Context) -> Result:
    rounds = 3 if not ctx.quick else 1
    updates = 3 if not ctx.quick else 1
    dsn = ctx.pg.database(DB)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(_SETUP)
        conn.execute("vacuum analyze")
        conn.execute("checkpoint")
    seconds: dict[str, float] = dict.fromkeys(VARIANTS, 0.0)
    order = list(VARIANTS)
    for _round in range(rounds):
        for variant in order + order[::-1]:
            seconds[variant] += _slice(dsn, VARIANTS[variant][1], updates)
    statements = rounds * 2 * updates

    def rows_per_s(variant: str) -> float:
        return statements * ROWS / seconds[variant]

    for variant in VARIANTS:
        log(f"bulk: {variant}: {rows_per_s(variant):,.0f} rows/s")
    rows = [
        [
            label,
            f"{seconds[variant] / statements * 1000:.0f}",
            fmt(rows_per_s(variant)),
            f"**{rows_per_s(variant) / rows_per_s('none'):.2f}**",
        ]
        for variant, (label, _table) in VARIANTS.items()
    ]
    speedup = rows_per_s("statement") / rows_per_s("row")
    statement_ratio = rows_per_s("statement") / rows_per_s("none")
    row_ratio = rows_per_s("row") / rows_per_s("none")
    floor_ratio = rows_per_s("floor") / rows_per_s("none")
    markdown = (
        f"One UPDATE of all {ROWS:,} rows of `(id int primary key, n int)` per transaction, durable "
        f"commits, {statements} statements per variant in {rounds} rounds (A B C C B A), timed by the "
        "client; every changed row is broadcast as a private message on `bulk:<id>`.\n\n"
        + md_table(["trigger", "ms per UPDATE", "rows/s", "ratio to no trigger"], rows)
        + f"\n\nStatement helper ÷ row trigger: **{speedup:.2f}**. The floor row stores one message per "
        "changed row and computes nothing (an empty payload, default id): its ratio to no trigger, "
        f"**{floor_ratio:.2f}**, is as far as any trigger that writes one message row per changed row "
        "can go on this machine."
    )
    verdict = (
        f"statement helper {speedup:.2f}x the row trigger "
        f"(target >= 2: {'met' if speedup >= 2 else 'NOT met'}); "
        f"{statement_ratio:.2f} of the UPDATE without trigger (target >= 0.35: "
        f"{'met' if statement_ratio >= 0.35 else 'NOT met'}); row trigger {row_ratio:.2f}; "
        f"floor (one empty message row per changed row) {floor_ratio:.2f}"
    )

    fig, ax = figure(8, 3.5)
    labels = [label.replace("`", "") for label, _ in VARIANTS.values()]
    values = [rows_per_s(v) for v in VARIANTS]
    bars = ax.barh(labels[::-1], values[::-1], color="#3b7dd8")
    for bar, value in zip(bars, values[::-1], strict=True):
        ax.annotate(
            f" {value / rows_per_s('none'):.2f}", (value, bar.get_y() + bar.get_height() / 2), va="center"
        )
    ax.set_xlabel("rows updated and broadcast per second")
    ax.set_title(f"A {ROWS:,}-row UPDATE, ratio to no trigger")
    plot = ctx.out_dir / "bulk.png"
    save(fig, plot)
    return Result(NAME, TITLE, markdown, verdict, plot)
