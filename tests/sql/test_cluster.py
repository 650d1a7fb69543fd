"""The extension's side of the cluster: bus attachments rotated by TRUNCATE, the sidecar registry."""

from __future__ import annotations

import uuid

import psycopg

from tests.harness import scalar


def test_bus_attachments_are_unlogged_partitions_emptied_by_truncate(db: psycopg.Connection) -> None:
    persistence: dict[str, str] = dict(
        db.execute(
            "select relname, relpersistence from pg_class where relnamespace = 'realtime'::regnamespace "
            "and relname like 'bus_attachments_%' and relkind = 'r'"
        ).fetchall()
    )
    assert persistence == {"bus_attachments_0": "u", "bus_attachments_1": "u", "bus_attachments_2": "u"}
    origin = uuid.uuid4()
    slot = scalar(db, "select realtime.bus_slot()")
    nxt = (slot + 1) % 3
    # Rows of the current slot stay; the next slot (written two minutes ago) is emptied.
    db.execute("insert into realtime.bus_attachments (origin, n, body) values (%s, 1, 'now')", (origin,))
    db.execute(
        "insert into realtime.bus_attachments (slot, origin, n, body) values (%s, %s, 2, 'old')",
        (nxt, origin),
    )
    assert scalar(db, "select realtime.bus_rotate()") is True
    assert db.execute("select n from realtime.bus_attachments order by n").fetchall() == [(1,)]
    assert scalar(db, "select realtime.bus_rotate()") is False  # nothing left to empty: no lock taken
    # TRUNCATE, not DELETE: the partition has no dead rows.
    assert (
        scalar(db, f"select n_dead_tup from pg_stat_user_tables where relname = 'bus_attachments_{nxt}'") == 0
    )


def test_sidecar_registry_renews_and_expires(db: psycopg.Connection) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    rows = db.execute(
        "select id, address from realtime.sidecar_renew(%s, 'a', 'h:1', now(), '15 s')", (a,)
    ).fetchall()
    assert rows == [(a, "h:1")]
    rows = db.execute("select id from realtime.sidecar_renew(%s, 'b', 'h:2', now(), '15 s')", (b,)).fetchall()
    assert {r[0] for r in rows} == {a, b}
    # a's lease runs out: the next renewal of anyone removes it.
    db.execute("update realtime.sidecars set expires_at = now() - interval '1 s' where id = %s", (a,))
    rows = db.execute("select id from realtime.sidecar_renew(%s, 'b', 'h:2', now(), '15 s')", (b,)).fetchall()
    assert [r[0] for r in rows] == [b]
    db.execute("select realtime.sidecar_leave(%s)", (b,))
    assert scalar(db, "select count(*) from realtime.sidecars") == 0


def test_grant_sidecar_lets_a_plain_role_run_the_cluster_side(db: psycopg.Connection) -> None:
    db.execute("create role sidecar_login")
    db.execute("select realtime.grant_sidecar('sidecar_login')")
    db.execute("set role sidecar_login")
    try:
        me = uuid.uuid4()
        assert db.execute(
            "select count(*) from realtime.sidecar_renew(%s, 'x', 'h:3', now(), '5 s')", (me,)
        ).fetchone() == (1,)
        db.execute("insert into realtime.bus_attachments (origin, n, body) values (%s, 1, 'b')", (me,))
        assert scalar(db, "select count(*) from realtime.bus_attachments where origin = %s", (me,)) == 1
        scalar(db, "select realtime.bus_rotate()")
        db.execute("select realtime.sidecar_leave(%s)", (me,))
    finally:
        db.execute("reset role")
    db.execute("create role client_role")
    assert scalar(db, "select has_table_privilege('client_role', 'realtime.sidecars', 'select')") is False
    assert (
        scalar(db, "select has_table_privilege('client_role', 'realtime.bus_attachments', 'select')") is False
    )
