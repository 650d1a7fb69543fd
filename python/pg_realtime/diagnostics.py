"""Why a message did not arrive: near-misses found at fan-out, and told where users look.

A message that reaches nobody, or fewer subscribers than it nearly did, usually missed them by
a little: subscribers on the same topic with the other visibility (``realtime.send()`` defaults
to ``private => true`` while clients join public channels), a topic built differently on each
side (case, a stray space, a ``realtime:`` prefix), a private join refused, a subscriber dropped
as a slow consumer. Each of these is a *cause* (:data:`CAUSES`), counted in
``realtime_undelivered_messages_total{cause}`` and logged once per topic, cause and period with
what to change.

What it costs. The registry tells the :class:`~pg_realtime.near_miss_index.NearMissIndex` when
a ``(subtopic, private)`` key appears or disappears (the first join and the last leave of a key,
not every join). Keys are grouped by their :func:`normalise`\\ d topic; a subtopic whose group
holds more than one key, or that had a refused join or a slow consumer in the last few minutes,
or that someone asked the diagnostics endpoint about, is in ``NearMissIndex.watched``. The
broadcaster looks further only when a message reached nobody or its subtopic is watched: for any
other message the whole cost is one set lookup. Everything kept is bounded (topics, events and
messages per topic).

The index lives in :mod:`pg_realtime.near_miss_index`, the records and their wording in
:mod:`pg_realtime.undelivered`; here they are kept, counted, logged and reported.

No I/O: the log is a :class:`~pg_realtime.logs.RateLimitedLog` and the counters are passed in.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

import orjson

from .logs import RateLimitedLog
from .near_miss_index import Key, NearMissIndex, difference, normalise
from .phoenix import PayloadEncoding, UserBroadcast
from .rows import Row
from .undelivered import EVENT_WINDOW_S, Event, MessageRecord, Miss, Recent, explain

#: The causes of a near-miss, the label values of ``realtime_undelivered_messages_total``.
CAUSES = ("visibility", "topic_case", "topic_whitespace", "topic_prefix", "refused_join", "slow_consumer")
#: A topic asked about through the endpoint has all its messages recorded for this long.
TRACE_WINDOW_S = 600.0
MAX_MESSAGES_PER_TOPIC = 20
MAX_EVENTS_PER_TOPIC = 20
#: Topics with recorded messages, events, or traces, each (the oldest are forgotten first).
MAX_TOPICS = 500
MAX_TRACED_TOPICS = 100
#: Near-misses kept for the inspector page, by (topic, cause).
MAX_RECENT = 100
PAYLOAD_PREVIEW_CHARS = 200
LOG_PERIOD_S = 60.0


class Counter(Protocol):
    def inc(self, amount: float = 1) -> None: ...


class Subscribers(Protocol):
    """What the diagnostics read of the registry."""

    def count(self, subtopic: str, private: bool) -> int: ...

    def formats(self, subtopic: str, private: bool) -> dict[str, int]: ...


# -- what the message was --------------------------------------------------------------------------
def _origin(origin: object) -> tuple[str | None, float | None, str | None]:
    """(event, committed_at, payload preview) of what was fanned out."""
    if isinstance(origin, Row):
        if origin.payload is not None:
            preview: str | None = origin.payload[:PAYLOAD_PREVIEW_CHARS]
        else:
            preview = f"<{len(origin.binary_payload or b'')} bytes, binary>"
        return origin.event, origin.inserted_at, preview
    if isinstance(origin, UserBroadcast):
        if origin.encoding is PayloadEncoding.JSON:
            preview = origin.payload[:PAYLOAD_PREVIEW_CHARS].decode("utf-8", "replace")
        else:
            preview = f"<{len(origin.payload)} bytes, binary>"
        return origin.event, None, preview
    if isinstance(origin, dict):
        event = origin.get("event")
        try:
            preview = orjson.dumps(origin.get("payload")).decode()[:PAYLOAD_PREVIEW_CHARS]
        except TypeError:
            preview = None
        return event if isinstance(event, str) else None, None, preview
    return None, None, None


class Diagnostics:
    """Near-miss detection for one server: its index, recent events, and recorded messages."""

    def __init__(
        self,
        subscribers: Subscribers,
        counters: Mapping[str, Counter],
        logger: logging.Logger | RateLimitedLog,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.subscribers = subscribers
        self.index = NearMissIndex()
        #: The set the broadcaster tests each message's subtopic against (shared, updated in place).
        self.watched = self.index.watched
        self.counters = counters
        self.log = logger if isinstance(logger, RateLimitedLog) else RateLimitedLog(logger, LOG_PERIOD_S)
        self.clock = clock
        self._events: OrderedDict[str, deque[Event]] = OrderedDict()  # by normalised topic
        self._event_until: OrderedDict[str, float] = OrderedDict()  # watched subtopic -> until
        self._traced: OrderedDict[str, float] = OrderedDict()  # subtopic -> until
        self._history: OrderedDict[str, deque[MessageRecord]] = OrderedDict()
        self._recent: OrderedDict[tuple[str, str], Recent] = OrderedDict()

    # -- inputs ---------------------------------------------------------------------------------
    def refused_join(self, subtopic: str, private: bool, reason: str, detail: str) -> None:
        self._event(Event(self.clock(), "refused_join", subtopic, private, reason, detail))

    def slow_consumer(self, keys: Iterable[Key]) -> None:
        now = self.clock()
        for subtopic, private in keys:
            self._event(Event(now, "slow_consumer", subtopic, private))

    def trace(self, subtopic: str) -> float:
        """Record every message of ``subtopic`` for the next TRACE_WINDOW_S; returns until when."""
        now = self.clock()
        self._expire(now)
        until = now + TRACE_WINDOW_S
        if subtopic in self._traced:
            self._traced.move_to_end(subtopic)
        else:
            self.index.watch(subtopic)
            if len(self._traced) >= MAX_TRACED_TOPICS:
                oldest, _until = self._traced.popitem(last=False)
                self.index.unwatch(oldest)
        self._traced[subtopic] = until
        return until

    def fanned_out(
        self, source: str, subtopic: str, private: bool, origin: object, delivered: int
    ) -> MessageRecord | None:
        """A message that reached nobody, or whose subtopic is watched: find its near-misses,
        count and log them, and record it if it had any or its topic is traced. Returns the
        record, if one was kept."""
        now = self.clock()
        self._expire(now)
        misses = self.near_misses(subtopic, private, now)
        # Many applications broadcast to topics nobody watches: such a message costs this much.
        if not misses and subtopic not in self._traced:
            return None
        event, committed_at, preview = _origin(origin)
        record = MessageRecord(
            source=source,
            subtopic=subtopic,
            private=private,
            event=event,
            committed_at=committed_at,
            read_at=now,
            matched=self.subscribers.count(subtopic, private),
            delivered=delivered,
            misses=tuple(misses),
            payload=preview,
        )
        self._remember(record)
        for miss in misses:
            counter = self.counters.get(miss.cause)
            if counter is not None:
                counter.inc()
            text, fix = explain(record, miss)
            self.log.log(
                logging.WARNING, f"{miss.cause}:{subtopic}", "%s", f"UndeliveredMessage: {text}: {fix}"
            )
            recent = self._recent.get((subtopic, miss.cause))
            if recent is None:
                if len(self._recent) >= MAX_RECENT:
                    self._recent.popitem(last=False)
                self._recent[(subtopic, miss.cause)] = Recent(
                    subtopic, miss.cause, event, private, text, fix, now
                )
            else:
                recent.event, recent.private, recent.text, recent.fix, recent.at = (
                    event,
                    private,
                    text,
                    fix,
                    now,
                )
                recent.count += 1
                self._recent.move_to_end((subtopic, miss.cause))
        return record

    # -- what is known --------------------------------------------------------------------------
    def near_misses(self, subtopic: str, private: bool, now: float | None = None) -> list[Miss]:
        """The subscribers a message on (subtopic, private) nearly reached, each with its cause."""
        now = self.clock() if now is None else now
        misses: list[Miss] = []
        if not self.index.groups and not self._events:
            return misses
        for other, other_private in sorted(self.index.group(subtopic)):
            if other == subtopic and other_private == private:
                continue
            count = self.subscribers.count(other, other_private)
            if count:
                misses.append(Miss(difference(subtopic, other), other, other_private, count))
        events = self._events.get(normalise(subtopic))
        if events:
            since = now - EVENT_WINDOW_S
            counted: dict[tuple[str, str, bool, str], tuple[int, str]] = {}
            for event in events:
                if event.at >= since:
                    key = (event.cause, event.subtopic, event.private, event.reason)
                    count, _detail = counted.get(key, (0, ""))
                    counted[key] = (count + 1, event.detail)
            for (cause, other, other_private, reason), (count, detail) in counted.items():
                misses.append(Miss(cause, other, other_private, count, reason, detail))
        return misses

    def messages(self, subtopic: str) -> list[MessageRecord]:
        return list(self._history.get(subtopic, ()))

    def recent(self) -> list[Recent]:
        """The latest near-miss of each (topic, cause), newest first."""
        return sorted(self._recent.values(), key=lambda r: r.at, reverse=True)

    def traced_until(self, subtopic: str) -> float | None:
        return self._traced.get(subtopic)

    def report(self, subtopic: str, with_payloads: bool) -> dict[str, Any]:
        """The diagnostics of one topic: subscribers (counts), near topics, events, messages."""
        now = self.clock()
        self._expire(now)
        subscribers = [
            {"topic": subtopic, "private": private, "vsn": vsn, "count": count}
            for private in (False, True)
            for vsn, count in sorted(self.subscribers.formats(subtopic, private).items())
        ]
        near = [
            {
                "topic": other,
                "private": private,
                "subscribers": self.subscribers.count(other, private),
                "cause": difference(subtopic, other),
            }
            for other, private in sorted(self.index.group(subtopic))
            if other != subtopic
        ]
        since = now - EVENT_WINDOW_S
        events = [
            {
                "at": e.at,
                "cause": e.cause,
                "topic": e.subtopic,
                "private": e.private,
                "reason": e.reason,
                "detail": e.detail,
            }
            for e in self._events.get(normalise(subtopic), ())
            if e.at >= since
        ]
        return {
            "topic": subtopic,
            "subscribers": subscribers,
            "similar_topics": near,
            "events": events,
            "messages": [record.to_json(with_payloads) for record in self.messages(subtopic)],
            "recording_until": self._traced.get(subtopic),
        }

    # -- bookkeeping ----------------------------------------------------------------------------
    def _event(self, event: Event) -> None:
        self._expire(event.at)
        norm = normalise(event.subtopic)
        events = self._events.get(norm)
        if events is None:
            if len(self._events) >= MAX_TOPICS:
                self._events.popitem(last=False)
            events = self._events[norm] = deque(maxlen=MAX_EVENTS_PER_TOPIC)
        else:
            self._events.move_to_end(norm)
        events.append(event)
        # Watched, so that a message that still reaches someone on this topic is looked at too.
        subtopic = event.subtopic
        if subtopic in self._event_until:
            self._event_until.move_to_end(subtopic)
        else:
            self.index.watch(subtopic)
            if len(self._event_until) >= MAX_TOPICS:
                oldest, _until = self._event_until.popitem(last=False)
                self.index.unwatch(oldest)
        self._event_until[subtopic] = event.at + EVENT_WINDOW_S

    def _expire(self, now: float) -> None:
        # Both are ordered by their deadline: each refresh moves an entry to the end.
        for deadlines in (self._event_until, self._traced):
            while deadlines:
                subtopic, until = next(iter(deadlines.items()))
                if until > now:
                    break
                del deadlines[subtopic]
                self.index.unwatch(subtopic)

    def _remember(self, record: MessageRecord) -> None:
        history = self._history.get(record.subtopic)
        if history is None:
            if len(self._history) >= MAX_TOPICS:
                self._history.popitem(last=False)
            history = self._history[record.subtopic] = deque(maxlen=MAX_MESSAGES_PER_TOPIC)
        else:
            self._history.move_to_end(record.subtopic)
        history.append(record)


__all__ = ["CAUSES", "Diagnostics"]
