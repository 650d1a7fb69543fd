"""Presence in SQL: batches and their events, fencing by the sidecar's lease, reaping of lapsed,
stopped and forgotten sidecars."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import orjson
import psycopg

from tests.harness import scalar


def renew(db: psycopg.Connection, sidecar: uuid.UUID) -> dict[uuid.UUID, bool]:
    rows = db.execute(
        "select id, renewed from realtime.sidecar_renew(%s, 'n', 'h:1', now(), '15 s')", (sidecar,)
    ).fetchall()
    return dict(rows)


def track(ref: str, key: str, topic: str = "room", private: bool = False, **meta: Any) -> dict[str, Any]:
    return {"ref": ref, "topic": topic, "private": private, "key": key, "meta": {**meta, "phx_ref": ref}}


def write(
    db: Any, sidecar: uuid.UUID, untrack: list[str], tracks: list[dict[str, Any]], replace: bool = False
) -> bool:
    return bool(
        scalar(
            db,
            "select realtime.presence_write(%s, %s, %s::jsonb, %s)",
            (sidecar, untrack, orjson.dumps(tracks).decode(), replace),
        )
    )


def events(db: psycopg.Connection) -> list[tuple[str, bool, dict[str, Any], dict[str, Any]]]:
    return db.execute(
        "select topic, private, joins, leaves from realtime.presence_events order by xid, seq"
    ).fetchall()


def keys_and_refs(part: dict[str, Any]) -> dict[str, list[str]]:
    return {key: sorted(m["phx_ref"] for m in entry["metas"]) for key, entry in part.items()}


def test_a_batch_writes_presences_and_one_event_per_topic(db: psycopg.Connection) -> None:
    a = uuid.uuid4()
    assert renew(db, a) == {a: False}  # a first registration
    assert renew(db, a) == {a: True}
    assert write(db, a, [], [track("r1", "u1"), track("r2", "u1"), track("r3", "u2", private=True)])
    recorded = sorted((t, p, keys_and_refs(j), keys_and_refs(lv)) for t, p, j, lv in events(db))
    assert recorded == [("room", False, {"u1": ["r1", "r2"]}, {}), ("room", True, {"u2": ["r3"]}, {})]
    db.execute("delete from realtime.presence_events")
    # An update: the old ref leaves and the new one joins, in one event.
    assert write(db, a, ["r1"], [track("r4", "u1", phx_ref_prev="r1")])
    [(topic, private, joins, leaves)] = events(db)
    assert (topic, private) == ("room", False)
    assert keys_and_refs(joins) == {"u1": ["r4"]} and keys_and_refs(leaves) == {"u1": ["r1"]}
    assert joins["u1"]["metas"][0]["phx_ref_prev"] == "r1"
    # The same batch again (its commit was not confirmed) changes nothing and records nothing.
    db.execute("delete from realtime.presence_events")
    assert write(db, a, ["r1"], [track("r4", "u1", phx_ref_prev="r1")])
    assert events(db) == []
    assert sorted(r[0] for r in db.execute("select ref from realtime.presences").fetchall()) == [
        "r2",
        "r3",
        "r4",
    ]


def test_an_unregistered_sidecar_writes_nothing(db: psycopg.Connection) -> None:
    assert not write(db, uuid.uuid4(), [], [track("r1", "u1")])
    assert scalar(db, "select count(*) from realtime.presences") == 0
    assert events(db) == []


def test_a_lapsed_sidecar_loses_its_presences_with_leaves_and_is_told(db: psycopg.Connection) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    renew(db, a)
    renew(db, b)
    assert write(db, a, [], [track("a1", "ua"), track("a2", "ua2", topic="other")])
    assert write(db, b, [], [track("b1", "ub")])
    db.execute("delete from realtime.presence_events")
    db.execute("update realtime.sidecars set expires_at = now() - interval '1 s' where id = %s", (a,))
    assert renew(db, b) == {b: True}
    assert [r[0] for r in db.execute("select ref from realtime.presences").fetchall()] == ["b1"]
    left = {topic: keys_and_refs(leaves) for topic, _, joins, leaves in events(db) if not joins}
    assert left == {"room": {"ua": ["a1"]}, "other": {"ua2": ["a2"]}}
    # a comes back: its lease is gone (renewed false), and its writes are fenced until it renews.
    assert renew(db, a)[a] is False
    assert write(db, a, [], [track("a3", "ua")], replace=True)
    assert sorted(r[0] for r in db.execute("select ref from realtime.presences").fetchall()) == ["a3", "b1"]


def test_a_stopping_sidecar_removes_its_presences(db: psycopg.Connection) -> None:
    a = uuid.uuid4()
    renew(db, a)
    write(db, a, [], [track("a1", "ua")])
    db.execute("select realtime.sidecar_leave(%s)", (a,))
    assert scalar(db, "select count(*) from realtime.presences") == 0
    assert keys_and_refs(events(db)[-1][3]) == {"ua": ["a1"]}


def test_presences_of_sidecars_the_registry_forgot_are_reaped_at_a_registration(
    db: psycopg.Connection,
) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    renew(db, a)
    write(db, a, [], [track("a1", "ua")])
    # As after a crash of the database: realtime.sidecars is unlogged and comes back empty.
    db.execute("truncate realtime.sidecars")
    renew(db, b)
    assert scalar(db, "select count(*) from realtime.presences") == 0
    assert keys_and_refs(events(db)[-1][3]) == {"ua": ["a1"]}


def test_a_renewal_waits_for_a_batch_in_flight_and_then_reaps_what_it_wrote(db_dsn: str) -> None:
    a, b = uuid.uuid4(), uuid.uuid4()
    with psycopg.connect(db_dsn, autocommit=True) as admin:
        renew(admin, a)
        renew(admin, b)
        admin.execute("update realtime.sidecars set expires_at = now() + interval '1 s' where id = %s", (a,))
    writer = psycopg.connect(db_dsn)
    try:
        # The batch locks a's row; a's lease runs out meanwhile.
        assert write(writer, a, [], [track("late", "ua")])
        with psycopg.connect(db_dsn, autocommit=True) as admin:
            admin.execute("select pg_sleep(1.2)")
        done = threading.Event()

        def reaper() -> None:
            with psycopg.connect(db_dsn, autocommit=True) as conn:
                renew(conn, b)
            done.set()

        thread = threading.Thread(target=reaper)
        thread.start()
        assert not done.wait(1.0)  # blocked by the batch's lock
        writer.commit()
        thread.join(10)
        assert done.is_set()
    finally:
        writer.close()
    with psycopg.connect(db_dsn, autocommit=True) as admin:
        assert scalar(admin, "select count(*) from realtime.presences") == 0
        assert scalar(admin, "select count(*) from realtime.sidecars where id = %s", (a,)) == 0
