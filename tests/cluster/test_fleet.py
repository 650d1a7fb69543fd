"""Three sidecars on one database, HAProxy in front: one service, for the official clients.

realtime-js (Node) and realtime-py (here) subscribe on every sidecar directly and through
HAProxy; every kind of client broadcast, at every size up to the configured maximum, must reach
every other subscriber exactly once, whichever sidecar took it in.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import psycopg
import pytest

from tests.clients.drivers import JsDriver, PyEvents, py_close, py_subscribe, unb64
from tests.harness import Endpoint, scalar
from tests.reliability.support import sample, scrape

from .conftest import MAX_PAYLOAD_KB, Fleet

pytestmark = pytest.mark.asyncio

MAX_PAYLOAD = MAX_PAYLOAD_KB * 1000
SIZES = {"100B": 100, "7KB": 7_000, "64KB": 64_000, "max": MAX_PAYLOAD}


def json_payload(tag: str, size: int) -> dict[str, Any]:
    """A JSON object whose encoding (orjson, no spaces) is exactly ``size`` bytes."""
    base = f'{{"id":"{tag}","pad":""}}'
    return {"id": tag, "pad": "x" * (size - len(base))}


def binary_payload(tag: str, size: int) -> bytes:
    head = tag.encode() + b"\0"
    return head + bytes(i % 251 for i in range(size - len(head)))


@dataclass
class Subscriber:
    """One subscribed channel of one client, and what it got, by event name."""

    name: str
    v2: bool
    self_too: bool = False
    js_channel: str | None = None
    py_events: PyEvents | None = None
    py_client: Any = None
    got: Counter[str] = field(default_factory=Counter)
    payloads: dict[str, Any] = field(default_factory=dict)

    def take(self, event: str, payload: Any) -> None:
        self.got[event] += 1
        self.payloads[event] = payload


@dataclass(frozen=True)
class Sent:
    event: str
    payload: Any  # dict for JSON, bytes for binary
    sender: str | None  # the subscriber that sent it (None: REST)
    binary: bool


def endpoints(fleet: Fleet) -> list[tuple[str, Endpoint]]:
    assert fleet.proxy is not None
    return [(f"s{n}", fleet.sidecar(n)) for n in range(3)] + [("lb", fleet.proxy)]


async def drain_js(js: JsDriver, subscribers: dict[str, Subscriber]) -> None:
    by_channel = {s.js_channel: s for s in subscribers.values() if s.js_channel}
    for event in js.events(lambda e: e.get("event") == "broadcast"):
        sub = by_channel.get(str(event.get("channel")))
        if sub is None:
            continue
        msg = event["msg"]
        payload = msg.get("payload")
        if isinstance(payload, dict) and "__bytes_b64" in payload:
            payload = unb64(payload)
        sub.take(msg["event"], payload)


def drain_py(subscribers: dict[str, Subscriber]) -> None:
    for sub in subscribers.values():
        q = sub.py_events
        while q is not None and not q.empty():
            msg = q.get_nowait()
            sub.take(msg["event"], msg["payload"])


def expected_for(sub: Subscriber, sent: list[Sent]) -> set[str]:
    return {m.event for m in sent if (m.sender != sub.name or sub.self_too) and (sub.v2 or not m.binary)}


async def wait_all(
    js: JsDriver, subscribers: dict[str, Subscriber], sent: list[Sent], timeout: float = 90
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        await drain_js(js, subscribers)
        drain_py(subscribers)
        missing = {s.name: sorted(expected_for(s, sent) - set(s.got)) for s in subscribers.values()}
        missing = {k: v for k, v in missing.items() if v}
        if not missing:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not delivered within {timeout}s: {missing}")
        await asyncio.sleep(0.05)


def rest_headers(endpoint: Endpoint, role: str = "service_role") -> dict[str, str]:
    token = endpoint.token(role)
    return {"apikey": token, "Authorization": f"Bearer {token}"}


async def test_every_client_broadcast_reaches_every_other_subscriber_once(fleet: Fleet) -> None:
    topic = "lobby"
    subscribers: dict[str, Subscriber] = {}
    py_clients: list[Any] = []
    async with JsDriver(call_timeout=30) as js:
        try:
            for where, endpoint in endpoints(fleet):
                name = f"js-{where}"
                # The one through HAProxy also receives its own messages (self: true).
                self_too = where == "lb"
                await js.connect(endpoint.url, endpoint.token(), client=name, vsn="2.0.0")
                channel = await js.channel(
                    topic, client=name, channel=name, config={"broadcast": {"self": self_too}}
                )
                assert (await js.subscribe(channel))["status"] == "SUBSCRIBED"
                subscribers[name] = Subscriber(name, v2=True, self_too=self_too, js_channel=channel)
                name = f"py-{where}"
                client, ch, q = await py_subscribe(
                    endpoint.url, endpoint.token(), topic, {"broadcast": {"self": False}}
                )
                py_clients.append(client)
                subscribers[name] = Subscriber(name, v2=False, py_events=q, py_client=ch)

            sent: list[Sent] = []
            counter = itertools.count()

            def tag(kind: str, label: str) -> str:
                return f"{kind}-{label}-{next(counter)}"

            async with aiohttp.ClientSession() as http:
                for label, size in SIZES.items():
                    for where, endpoint in endpoints(fleet):
                        # realtime-js over v2: binary kind 3 frames, with a JSON and a binary payload.
                        sender = f"js-{where}"
                        js_channel = subscribers[sender].js_channel
                        assert js_channel is not None
                        event = tag("js-json", label)
                        payload = json_payload(event, size)
                        assert await js.send(js_channel, event, payload) == "ok"
                        sent.append(Sent(event, payload, sender, binary=False))
                        event = tag("js-binary", label)
                        data = binary_payload(event, size)
                        assert await js.send(js_channel, event, data) == "ok"
                        sent.append(Sent(event, data, sender, binary=True))
                        # realtime-py over v1: a JSON text frame; the frame, not only the payload,
                        # must fit under the limit.
                        sender = f"py-{where}"
                        event = tag("py-json", label)
                        payload = json_payload(event, min(size, MAX_PAYLOAD - 400))
                        await subscribers[sender].py_client.send_broadcast(event, payload)
                        sent.append(Sent(event, payload, sender, binary=False))
                        # REST, one message of a batch and a single binary message.
                        event = tag("rest-batch", label)
                        payload = json_payload(event, size)
                        body = {"messages": [{"topic": topic, "event": event, "payload": payload}]}
                        async with http.post(
                            f"{endpoint.url}/api/broadcast", json=body, headers=rest_headers(endpoint)
                        ) as response:
                            assert response.status == 202, await response.text()
                        sent.append(Sent(event, payload, None, binary=False))
                        event = tag("rest-binary", label)
                        data = binary_payload(event, size)
                        async with http.post(
                            f"{endpoint.url}/api/broadcast/{topic}/events/{event}",
                            data=data,
                            headers={**rest_headers(endpoint), "Content-Type": "application/octet-stream"},
                        ) as response:
                            assert response.status == 202, await response.text()
                        sent.append(Sent(event, data, None, binary=True))

            await wait_all(js, subscribers, sent)
            # Anything sent twice would have come by now, right behind the first copy.
            await asyncio.sleep(1.0)
            await drain_js(js, subscribers)
            drain_py(subscribers)
            by_event = {m.event: m for m in sent}
            for sub in subscribers.values():
                expected = expected_for(sub, sent)
                assert set(sub.got) == expected, sub.name
                twice = {event: n for event, n in sub.got.items() if n != 1}
                assert not twice, f"{sub.name} got these more than once: {twice}"
                for event in expected:
                    assert sub.payloads[event] == by_event[event].payload, (sub.name, event)

            # It went across: each sidecar took in messages from the others.
            for n in range(3):
                samples = await scrape(fleet.sidecar(n))  # type: ignore[arg-type]
                assert sample(samples, "realtime_bus_messages_total", direction="in") > 0
                assert sample(samples, "realtime_bus_up") == 1
            # And each lists the three in its registry (as of its last renewal, every 3 s).
            for n in range(3):
                deadline = time.monotonic() + 30
                while sample(await scrape(fleet.sidecar(n)), "realtime_cluster_sidecars") != 3:  # type: ignore[arg-type]
                    assert time.monotonic() < deadline, f"sidecar {n} does not list the three"
                    await asyncio.sleep(0.5)
        finally:
            for client in py_clients:
                await py_close(client)


async def test_private_channels_stay_private_across_sidecars(fleet: Fleet) -> None:
    topic = "room-1"
    s0, s1, s2 = (fleet.sidecar(n) for n in range(3))
    assert fleet.proxy is not None
    user = s0.token("authenticated", sub="user-1")
    clients = []
    async with JsDriver(call_timeout=30) as js:
        try:
            # Private subscribers on s1 and through HAProxy; a public one of the same topic on s2.
            await js.connect(s1.url, s1.token(), client="private-s1", access_token=user)
            private_s1 = await js.channel(topic, client="private-s1", config={"private": True}, channel="p1")
            assert (await js.subscribe(private_s1))["status"] == "SUBSCRIBED"
            await js.connect(fleet.proxy.url, fleet.proxy.token(), client="private-lb", access_token=user)
            private_lb = await js.channel(topic, client="private-lb", config={"private": True}, channel="plb")
            assert (await js.subscribe(private_lb))["status"] == "SUBSCRIBED"
            public_s2, _ch, public_q = await py_subscribe(s2.url, s2.token(), topic)
            clients.append(public_s2)
            # The senders: a private channel on s0, a public one on s2.
            await js.connect(s0.url, s0.token(), client="sender", access_token=user)
            sender = await js.channel(topic, client="sender", config={"private": True}, channel="ps0")
            assert (await js.subscribe(sender))["status"] == "SUBSCRIBED"
            await js.connect(s2.url, s2.token(), client="public-sender")
            public_sender = await js.channel(topic, client="public-sender", channel="pub")
            assert (await js.subscribe(public_sender))["status"] == "SUBSCRIBED"

            assert await js.send(sender, "secret", {"n": 1}) == "ok"
            assert await js.send(sender, "secret-bytes", b"\x00\x01private") == "ok"
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"{s2.url}/api/broadcast",
                    json={
                        "messages": [
                            {"topic": topic, "event": "secret-rest", "payload": {"n": 2}, "private": True}
                        ]
                    },
                    headers={"apikey": s2.token(), "Authorization": f"Bearer {user}"},
                ) as response,
            ):
                assert response.status == 202, await response.text()
            assert await js.send(public_sender, "public", {"n": 3}) == "ok"

            for channel in (private_s1, private_lb):
                events = [(await js.next_broadcast(channel, timeout=15))["event"] for _ in range(3)]
                assert sorted(events) == ["secret", "secret-bytes", "secret-rest"]
            got = await public_q.next(timeout=15)
            assert got["event"] == "public"
            # The public message was queued after the private ones on every path (same origin,
            # or sent last); nothing private reached the public channel, nothing public the private.
            await js.no_event(
                lambda e: e.get("event") == "broadcast" and e.get("channel") in (private_s1, private_lb),
                within=1.0,
            )
            assert public_q.empty()
        finally:
            for client in clients:
                await py_close(client)


async def test_kill_one_sidecar_while_messages_flow(fleet: Fleet) -> None:
    topic = "flow"
    s0, s1, s2 = (fleet.sidecar(n) for n in range(3))
    assert fleet.proxy is not None
    proxy = fleet.proxy
    clients: list[Any] = []
    async with JsDriver(call_timeout=30) as js:
        try:
            channels = []
            for n in range(6):
                await js.connect(proxy.url, proxy.token(), client=f"lb{n}", vsn="2.0.0")
                channel = await js.channel(topic, client=f"lb{n}", channel=f"lb{n}")
                assert (await js.subscribe(channel))["status"] == "SUBSCRIBED"
                channels.append(channel)
            # Round robin put some of them on the sidecar about to die.
            assert sample(await scrape(s2), "realtime_sockets") >= 1  # type: ignore[arg-type]
            sub0, _c, q0 = await py_subscribe(s0.url, s0.token(), topic)
            sub1, _c, q1 = await py_subscribe(s1.url, s1.token(), topic)
            clients += [sub0, sub1]
            send0, ch0, _q = await py_subscribe(s0.url, s0.token(), topic, {"broadcast": {"self": False}})
            send1, ch1, _q = await py_subscribe(s1.url, s1.token(), topic, {"broadcast": {"self": False}})
            clients += [send0, send1]

            with psycopg.connect(fleet.dsn) as conn:
                killed_started = scalar(
                    conn,
                    "select started_at from realtime.sidecars where address = %s",
                    (f"127.0.0.1:{s2.port}",),
                )
            total = 150
            for i in range(total):
                await ch0.send_broadcast("from-s0", {"i": i})
                await ch1.send_broadcast("from-s1", {"i": i})
                if i == total // 3:
                    s2.proc.send_signal(signal.SIGKILL)
                await asyncio.sleep(0.01)
            await s2.proc.wait()
            fleet.sidecars[2] = None

            # Between the survivors nothing is lost, nothing doubled, and each origin keeps its order.
            for q, mine, theirs in ((q0, "from-s0", "from-s1"), (q1, "from-s1", "from-s0")):
                got: dict[str, list[int]] = {mine: [], theirs: []}
                while len(got[mine]) < total or len(got[theirs]) < total:
                    msg = await q.next(timeout=30)
                    got[msg["event"]].append(msg["payload"]["i"])
                assert got[theirs] == list(range(total))
                assert got[mine] == list(range(total))

            # The clients of the dead sidecar reconnect through HAProxy to the others and receive again.
            deadline = time.monotonic() + 60
            waiting = set(channels)
            k = 0
            while waiting:
                assert time.monotonic() < deadline, f"not back: {sorted(waiting)}"
                await ch0.send_broadcast("after", {"k": k})
                k += 1
                await asyncio.sleep(0.5)
                for event in js.events(lambda e: e.get("event") == "broadcast"):
                    if event["msg"]["event"] == "after":
                        waiting.discard(event.get("channel"))

            # A restarted sidecar rejoins: registered, and delivering what the others take in.
            restarted = await fleet.start_sidecar(2)
            sub2, _c, q2 = await py_subscribe(restarted.url, restarted.token(), topic)
            clients.append(sub2)
            await ch1.send_broadcast("rejoined", {"n": 1})
            while (msg := await q2.next(timeout=15))["event"] != "rejoined":
                pass
            with psycopg.connect(fleet.dsn) as conn:
                rejoined = scalar(
                    conn,
                    "select max(started_at) from realtime.sidecars where address = %s",
                    (f"127.0.0.1:{restarted.port}",),
                )
            assert rejoined > killed_started
        finally:
            for client in clients:
                await py_close(client)
