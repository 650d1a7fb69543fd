"""Presence across three sidecars, at random: realtime-js and realtime-py clients spread over
the sidecars track, update, untrack, leave, close and come back, each on its own schedule, and
one sidecar is killed with SIGKILL mid-run.

Afterwards the killed sidecar's presences are gone from the table and from every client's state
within 30 s of the kill, and every surviving client's ``presenceState()`` equals the
``realtime.presences`` rows of its topic, which hold exactly what the survivors last tracked.

The run is seeded: the seed is printed, is in every failure message, and can be set with
``PRESENCE_SEED`` to replay a run's choices (the interleaving of the clients may still differ).
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest

from tests.clients.drivers import JsDriver
from tests.clients.presence import JsMember, Member, PyMember, converge, poll, table_state

from .conftest import Fleet

pytestmark = pytest.mark.asyncio

TOPICS = ["arena-0", "arena-1"]
MEMBERS = 9
#: Upstream's per-channel limit: at most 5 presence pushes (tracks and untracks) per 30 s.
MAX_PUSHES = 5
BEFORE_KILL_S = 10.0
AFTER_KILL_S = 6.0
#: How long the killed sidecar's presences may stay anywhere after the kill.
GONE_WITHIN_S = 30.0


@dataclass
class Player:
    """A member and what it should have: its sidecar, whether it is joined, what it tracks."""

    member: Any  # JsMember | PyMember
    sidecar: int
    topic: str
    rng: random.Random
    joined: bool = False
    pushes: int = 0
    tracked: dict[str, Any] | None = None
    ops: int = 0
    done: Counter[str] = field(default_factory=Counter)

    @property
    def name(self) -> str:
        return str(self.member.name)

    async def join(self) -> None:
        await self.member.subscribe()
        self.joined, self.pushes, self.tracked = True, 0, None

    async def track(self) -> None:
        self.ops += 1
        payload = {"who": self.name, "v": self.ops}
        await self.member.track(payload)
        self.pushes += 1
        self.tracked = payload

    async def step(self) -> None:
        """One random action, within upstream's presence limit on the channel."""
        if not self.joined:
            await self.join()
            self.done["join"] += 1
            return
        choices = ["leave", "close"]
        if self.pushes < MAX_PUSHES:
            choices += ["track"] * 4
            if self.tracked is not None:
                choices += ["untrack"] * 2
        choice = self.rng.choice(choices)
        self.done[choice] += 1
        if choice == "track":
            await self.track()
        elif choice == "untrack":
            await self.member.untrack()
            self.pushes += 1
            self.tracked = None
        elif choice == "leave":
            await self.member.leave()
            self.joined, self.tracked = False, None
        else:
            await self.member.close()
            self.joined, self.tracked = False, None

    async def play(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.step()
            await asyncio.sleep(self.rng.uniform(0.05, 0.6))


def expected(players: list[Player], topic: str) -> dict[str, list[dict[str, Any]]]:
    want: dict[str, list[dict[str, Any]]] = {}
    for p in players:
        if p.topic == topic and p.tracked is not None:
            want.setdefault(p.member.key, []).append(p.tracked)
    return want


async def test_random_presence_on_three_sidecars_with_one_killed(fleet: Fleet) -> None:
    seed = int(os.environ.get("PRESENCE_SEED") or random.randrange(1 << 32))
    print(f"PRESENCE_SEED={seed}")
    rng = random.Random(seed)
    doomed = rng.randrange(3)
    try:
        await run(fleet, seed, rng, doomed)
    except BaseException as exc:
        raise AssertionError(f"PRESENCE_SEED={seed} (sidecar {doomed} killed): {exc}") from exc


async def run(fleet: Fleet, seed: int, rng: random.Random, doomed: int) -> None:
    db = psycopg.connect(fleet.dsn, autocommit=True)
    players: list[Player] = []
    async with JsDriver(call_timeout=30) as js:
        try:
            for i in range(MEMBERS):
                sidecar = fleet.sidecar(i % 3)
                topic = TOPICS[i % 2]
                # Keys shared by members of a topic (i and i + 4): several metas under one key.
                key = f"k{i % 4}"
                name = f"{'js' if i % 2 == 0 else 'py'}{i}"
                member: Member
                if i % 2 == 0:
                    vsn = "2.0.0" if i % 4 == 0 else "1.0.0"
                    member = JsMember(js, name, sidecar.url, sidecar.token(), topic, key, vsn=vsn)
                else:
                    member = PyMember(name, sidecar.url, sidecar.token(), topic, key)
                players.append(Player(member, i % 3, topic, random.Random(seed * 1000 + i)))
            for p in players:
                await p.join()

            survivors = [p for p in players if p.sidecar != doomed]
            victims = [p for p in players if p.sidecar == doomed]
            stop_victims, stop_survivors = asyncio.Event(), asyncio.Event()
            victim_tasks = [asyncio.create_task(p.play(stop_victims)) for p in victims]
            survivor_tasks = [asyncio.create_task(p.play(stop_survivors)) for p in survivors]
            try:
                await asyncio.sleep(BEFORE_KILL_S)
                stop_victims.set()
                await asyncio.gather(*victim_tasks)

                # The sidecar about to die holds presences: each of its members tracks.
                for p in victims:
                    if not p.joined or p.pushes >= MAX_PUSHES:
                        if p.joined:
                            await p.member.leave()
                        await p.join()
                    if p.tracked is None:
                        await p.track()
                killed = fleet.sidecar(doomed)
                address = f"127.0.0.1:{killed.port}"
                sidecar_id = db.execute(
                    "select id from realtime.sidecars where address = %s", (address,)
                ).fetchone()
                assert sidecar_id is not None, f"{address} not registered"

                async def victims_stored() -> str | None:
                    n = db.execute(
                        "select count(*) from realtime.presences where sidecar_id = %s", sidecar_id
                    ).fetchone()
                    return None if n and n[0] == len(victims) else f"{n} of {len(victims)} stored"

                await poll(victims_stored, 15, "the victims' presences")
                dead_refs = {
                    row[0]
                    for row in db.execute(
                        "select ref from realtime.presences where sidecar_id = %s", sidecar_id
                    )
                }

                killed.proc.send_signal(signal.SIGKILL)
                killed_at = time.monotonic()
                await killed.proc.wait()
                fleet.sidecars[doomed] = None
                print(f"killed sidecar {doomed} ({address}) holding {sorted(dead_refs)}")
                # Its clients are gone with it: closed on the client side (they would retry forever).
                for p in victims:
                    await p.member.close()

                await asyncio.sleep(AFTER_KILL_S)
            finally:
                stop_victims.set()
                stop_survivors.set()
                await asyncio.gather(*victim_tasks, *survivor_tasks, return_exceptions=True)
            for task in survivor_tasks:
                task.result()  # a failed action fails the test

            print("actions:", dict(sum((p.done for p in players), Counter())))
            # Every survivor is on its topic at the end.
            for p in survivors:
                if not p.joined:
                    await p.join()

            async def dead_gone() -> str | None:
                left = db.execute(
                    "select ref from realtime.presences where sidecar_id = %s", sidecar_id
                ).fetchall()
                if left:
                    return f"still in the table: {left}"
                for p in survivors:
                    state = await p.member.state()
                    held = {ref for presences in state.values() for ref, _ in presences} & dead_refs
                    if held:
                        return f"still in the state of {p.name}: {sorted(held)}"
                return None

            await poll(
                dead_gone, max(0.0, killed_at + GONE_WITHIN_S - time.monotonic()), "the dead's presences"
            )

            for topic in TOPICS:
                on_topic = [p.member for p in survivors if p.topic == topic]
                await converge(on_topic, db, topic, expected(survivors, topic))
            # The victims' keys live on only where a survivor tracks under the same key.
            for topic in TOPICS:
                state = table_state(db, topic)
                assert not {ref for presences in state.values() for ref, _ in presences} & dead_refs
        finally:
            for p in players:
                if isinstance(p.member, PyMember):
                    await p.member.close()
            db.close()


async def test_a_sidecar_stopping_in_order_takes_its_presences_with_it(fleet: Fleet) -> None:
    db = psycopg.connect(fleet.dsn, autocommit=True)
    s0, s1, s2 = (fleet.sidecar(n) for n in range(3))
    topic = "arena"
    async with JsDriver(call_timeout=30) as js:
        watcher = PyMember("watcher", s0.url, s0.token(), topic, "watcher")
        stays = JsMember(js, "stays", s1.url, s1.token(), topic, "stays")
        goes = JsMember(js, "goes", s2.url, s2.token(), topic, "goes", vsn="1.0.0")
        try:
            for m in (watcher, stays, goes):
                await m.subscribe()
            await stays.track({"n": 1})
            await goes.track({"n": 2})
            await converge([watcher, stays, goes], db, topic, {"stays": [{"n": 1}], "goes": [{"n": 2}]})
            address = f"127.0.0.1:{s2.port}"
            row = db.execute("select id from realtime.sidecars where address = %s", (address,)).fetchone()
            assert row is not None

            # SIGTERM: by the time the process has exited, it has left the registry and the table.
            await s2.stop()
            assert s2.proc.returncode == 0, s2.describe()
            fleet.sidecars[2] = None
            assert db.execute("select count(*) from realtime.sidecars where id = %s", row).fetchone() == (0,)
            assert db.execute(
                "select count(*) from realtime.presences where sidecar_id = %s", row
            ).fetchone() == (0,)
            await goes.close()
            await converge([watcher, stays], db, topic, {"stays": [{"n": 1}]})
        finally:
            await watcher.close()
            db.close()
