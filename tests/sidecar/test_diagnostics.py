"""The near-miss index and its explanations, with plain values: no server, no socket."""

from __future__ import annotations

import logging

import pytest
from pg_realtime.channels import Channel, Registry
from pg_realtime.diagnostics import (
    CAUSES,
    MAX_MESSAGES_PER_TOPIC,
    MAX_TOPICS,
    MAX_TRACED_TOPICS,
    TRACE_WINDOW_S,
    Diagnostics,
)
from pg_realtime.logs import RateLimitedLog
from pg_realtime.near_miss_index import NearMissIndex, difference, normalise
from pg_realtime.phoenix import Vsn
from pg_realtime.rows import Row
from pg_realtime.undelivered import EVENT_WINDOW_S, explain


class Peer:
    def __init__(self, vsn: Vsn = Vsn.V2) -> None:
        self.vsn = vsn
        self.frames: list[object] = []

    def send(self, frame: object) -> None:
        self.frames.append(frame)


class Count:
    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def join(registry: Registry, subtopic: str, private: bool = False, vsn: Vsn = Vsn.V2) -> Channel:
    channel = Channel(
        peer=Peer(vsn), topic="realtime:" + subtopic, subtopic=subtopic, join_ref="1", private=private
    )
    if private:
        channel.can_read = True
    registry.add(channel)
    return channel


def row(topic: str, private: bool, event: str = "update") -> Row:
    return Row("id-1", topic, event, private, '{"secret": 1}', None, 1_000_000.0 - 0.5)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def counters() -> dict[str, Count]:
    return {}


@pytest.fixture
def setup(clock, counters):
    registry = Registry()
    for cause in CAUSES:
        counters[cause] = Count()
    log = RateLimitedLog(logging.getLogger("pg_realtime.test"), 60.0, clock=clock)
    diagnostics = Diagnostics(registry, counters, log, clock=clock)
    registry.attach(diagnostics.index)
    return registry, diagnostics


@pytest.mark.parametrize(
    ("topic", "normal"),
    [
        ("room:1", "room:1"),
        ("Room:ABC", "room:abc"),
        (" room:1 ", "room:1"),
        ("realtime:room:1", "room:1"),
        ("Realtime: room:1", "room:1"),
        ("realtime:realtime:x", "x"),
        ("", ""),
    ],
)
def test_normalise(topic, normal):
    assert normalise(topic) == normal


@pytest.mark.parametrize(
    ("sent", "joined", "cause"),
    [
        ("room:1", "room:1", "visibility"),
        ("room:ABC", "room:abc", "topic_case"),
        ("room:1 ", "room:1", "topic_whitespace"),
        (" Room:1", "room:1", "topic_whitespace"),
        ("realtime:room:1", "room:1", "topic_prefix"),
        ("room:1", "realtime:Room:1", "topic_prefix"),
    ],
)
def test_difference(sent, joined, cause):
    assert difference(sent, joined) == cause


def test_index_watches_only_subtopics_of_groups_with_two_keys():
    index = NearMissIndex()
    index.added("room:1", False)
    assert index.watched == {}
    index.added("room:2", False)
    assert index.watched == {}
    index.added("room:1", True)
    assert index.watched == {"room:1": 2}
    index.added("Room:1", False)
    assert index.watched == {"room:1": 2, "Room:1": 1}
    index.removed("room:1", True)
    assert index.watched == {"room:1": 1, "Room:1": 1}
    index.removed("Room:1", False)
    assert index.watched == {}
    index.removed("room:1", False)
    index.removed("room:2", False)
    assert index.groups == {} and index.watched == {}


def test_registry_tells_the_index_only_of_first_joins_and_last_leaves(setup):
    registry, diagnostics = setup
    a = join(registry, "room:1")
    b = join(registry, "room:1")
    assert diagnostics.index.groups == {"room:1": {("room:1", False)}}
    registry.remove(a)
    assert diagnostics.index.groups == {"room:1": {("room:1", False)}}
    registry.remove(b)
    assert diagnostics.index.groups == {}


def test_attach_indexes_the_keys_already_joined():
    registry = Registry()
    join(registry, "room:1")
    join(registry, "room:1", private=True)
    index = NearMissIndex()
    registry.attach(index)
    assert index.watched == {"room:1": 2}


def test_private_message_with_public_subscribers(setup, counters, caplog):
    registry, diagnostics = setup
    for _ in range(3):
        join(registry, "room:1")
    with caplog.at_level(logging.WARNING, "pg_realtime.test"):
        record = diagnostics.fanned_out("database", "room:1", True, row("room:1", True), 0)
    assert record is not None and record.matched == 0 and record.delivered == 0
    [miss] = record.misses
    assert (miss.cause, miss.subtopic, miss.private, miss.count) == ("visibility", "room:1", False, 3)
    assert counters["visibility"].value == 1
    assert caplog.messages == [
        'UndeliveredMessage: message to "room:1" (event "update") is private and reached nobody; '
        '3 public subscribers are on "room:1": join with config.private = true, or send with private => false'
    ]
    assert record.committed_at == 1_000_000.0 - 0.5


def test_public_message_with_private_subscribers(setup):
    registry, diagnostics = setup
    join(registry, "room:1", private=True)
    record = diagnostics.fanned_out("rest", "room:1", False, {"event": "e", "payload": {}}, 0)
    assert record is not None
    text = " ".join(part for miss in record.misses for part in explain(record, miss))
    assert "1 private subscriber is on" in text
    assert "send with private => true" in text


@pytest.mark.parametrize(
    ("sent", "joined", "cause", "words"),
    [
        ("Room:1", "room:1", "topic_case", "differs only in case"),
        ("room:1 ", "room:1", "topic_whitespace", "leading or trailing spaces"),
        ("realtime:room:1", "room:1", "topic_prefix", 'use "room:1" on both sides'),
    ],
)
def test_topic_spelled_differently(setup, counters, caplog, sent, joined, cause, words):
    registry, diagnostics = setup
    join(registry, joined)
    with caplog.at_level(logging.WARNING, "pg_realtime.test"):
        record = diagnostics.fanned_out("database", sent, False, row(sent, False), 0)
    assert record is not None
    assert [m.cause for m in record.misses] == [cause]
    assert counters[cause].value == 1
    assert len(caplog.messages) == 1 and words in caplog.messages[0]


def test_refused_join_and_slow_consumer_are_near_misses_for_a_while(setup, clock, counters):
    _registry, diagnostics = setup
    diagnostics.refused_join(
        "secret:1", True, "unauthorized", "Unauthorized: You do not have permissions to read ..."
    )
    diagnostics.slow_consumer([("feed", False)])
    record = diagnostics.fanned_out("database", "secret:1", True, row("secret:1", True), 0)
    assert record is not None
    [miss] = record.misses
    assert (miss.cause, miss.reason) == ("refused_join", "unauthorized")
    record = diagnostics.fanned_out("client", "feed", False, {"event": "tick", "payload": {}}, 0)
    assert record is not None and [m.cause for m in record.misses] == ["slow_consumer"]
    assert counters["refused_join"].value == 1 and counters["slow_consumer"].value == 1
    # Watched while they count, so that a message that still reaches someone is looked at too.
    assert "secret:1" in diagnostics.watched and "feed" in diagnostics.watched
    clock.now += EVENT_WINDOW_S + 1
    assert diagnostics.fanned_out("database", "secret:1", True, row("secret:1", True), 0) is None
    assert diagnostics.watched == {}


def test_fewer_than_it_nearly_did(setup, counters):
    registry, diagnostics = setup
    join(registry, "room:1")
    join(registry, "room:1", private=True)
    join(registry, "room:1", private=True)
    assert "room:1" in diagnostics.watched
    record = diagnostics.fanned_out("database", "room:1", False, row("room:1", False), 1)
    assert record is not None and record.matched == 1
    [miss] = record.misses
    assert (miss.cause, miss.count) == ("visibility", 2)
    assert "reached only 1 subscriber;" in explain(record, miss)[0]


def test_a_delivered_message_without_near_miss_is_not_kept(setup, counters):
    registry, diagnostics = setup
    join(registry, "room:1")
    assert diagnostics.watched == {}
    assert diagnostics.fanned_out("database", "room:1", False, row("room:1", False), 1) is None
    assert diagnostics.messages("room:1") == []
    assert all(c.value == 0 for c in counters.values())


def test_a_message_to_nobody_near_is_kept_only_while_its_topic_is_traced(setup, counters):
    registry, diagnostics = setup
    join(registry, "elsewhere")
    assert diagnostics.fanned_out("database", "lonely", False, row("lonely", False), 0) is None
    diagnostics.trace("lonely")
    record = diagnostics.fanned_out("database", "lonely", False, row("lonely", False), 0)
    assert record is not None and record.misses == ()
    assert diagnostics.messages("lonely") == [record]
    assert all(c.value == 0 for c in counters.values())


def test_trace_records_delivered_messages_until_it_expires(setup, clock):
    registry, diagnostics = setup
    join(registry, "room:1")
    diagnostics.trace("room:1")
    assert "room:1" in diagnostics.watched
    assert diagnostics.fanned_out("database", "room:1", False, row("room:1", False), 1) is not None
    clock.now += TRACE_WINDOW_S + 1
    assert diagnostics.fanned_out("database", "room:1", False, row("room:1", False), 1) is None
    assert diagnostics.watched == {}


def test_one_log_line_per_topic_and_cause_per_period(setup, caplog):
    registry, diagnostics = setup
    join(registry, "room:1")
    with caplog.at_level(logging.WARNING, "pg_realtime.test"):
        for _ in range(5):
            diagnostics.fanned_out("database", "room:1", True, row("room:1", True), 0)
    assert len(caplog.messages) == 1
    [recent] = diagnostics.recent()
    assert recent.count == 5 and recent.cause == "visibility"


def test_memory_is_bounded(setup):
    _registry, diagnostics = setup
    for i in range(MAX_TOPICS + 50):
        diagnostics.refused_join(f"t{i}", True, "unauthorized", "no")
        diagnostics.trace(f"t{i}")
        for _ in range(MAX_MESSAGES_PER_TOPIC + 5):
            diagnostics.fanned_out("database", f"t{i}", True, row(f"t{i}", True), 0)
    assert len(diagnostics._history) <= MAX_TOPICS
    assert all(len(h) <= MAX_MESSAGES_PER_TOPIC for h in diagnostics._history.values())
    assert len(diagnostics._events) <= MAX_TOPICS
    assert len(diagnostics.watched) <= MAX_TOPICS + MAX_TRACED_TOPICS


def test_report_counts_subscribers_by_visibility_and_format_and_hides_payloads(setup):
    registry, diagnostics = setup
    join(registry, "room:1", vsn=Vsn.V1)
    join(registry, "room:1", vsn=Vsn.V2)
    join(registry, "Room:1", private=True)
    diagnostics.fanned_out("database", "room:1", True, row("room:1", True), 0)
    report = diagnostics.report("room:1", with_payloads=False)
    assert report["subscribers"] == [
        {"topic": "room:1", "private": False, "vsn": "1.0.0", "count": 1},
        {"topic": "room:1", "private": False, "vsn": "2.0.0", "count": 1},
    ]
    assert report["similar_topics"] == [
        {"topic": "Room:1", "private": True, "subscribers": 1, "cause": "topic_case"}
    ]
    [message] = report["messages"]
    assert "payload" not in message
    assert {u["cause"] for u in message["undelivered"]} == {"visibility", "topic_case"}
    assert diagnostics.report("room:1", with_payloads=True)["messages"][0]["payload"] == '{"secret": 1}'
