"""An undelivered message as the diagnostics record it, and the words that explain each near-miss.

The records (:class:`Event`, :class:`Miss`, :class:`MessageRecord`, :class:`Recent`) are plain
values; :func:`explain` says what happened and what to change, for the log line, the diagnostics
endpoint and the inspector page alike. No I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .logs import printable
from .near_miss_index import bare

#: Refused joins and slow-consumer drops count as near-misses for this long.
EVENT_WINDOW_S = 300.0


@dataclass(frozen=True, slots=True)
class Event:
    """A refused join or a subscriber dropped as a slow consumer."""

    at: float
    cause: str  # refused_join or slow_consumer
    subtopic: str
    private: bool
    reason: str = ""  # the refusal's metric name (unauthorized, rls_error, invalid_token, ...)
    detail: str = ""  # the refusal's text


@dataclass(frozen=True, slots=True)
class Miss:
    """Subscribers a message nearly reached, and why it did not."""

    cause: str
    subtopic: str
    private: bool
    count: int
    reason: str = ""
    detail: str = ""


@dataclass(frozen=True, slots=True)
class MessageRecord:
    """One message's fan-out, as the diagnostics endpoint shows it."""

    source: str  # client, rest, database
    subtopic: str
    private: bool
    event: str | None
    committed_at: float | None  # a database row's inserted_at
    read_at: float
    matched: int  # subscribers of its (topic, visibility)
    delivered: int
    misses: tuple[Miss, ...]
    payload: str | None  # a preview, for service_role callers only

    def to_json(self, with_payload: bool) -> dict[str, Any]:
        body: dict[str, Any] = {
            "source": self.source,
            "private": self.private,
            "event": self.event,
            "committed_at": self.committed_at,
            "read_at": self.read_at,
            "matched": self.matched,
            "delivered": self.delivered,
            "undelivered": [{"cause": miss.cause, **explain_json(self, miss)} for miss in self.misses],
        }
        if with_payload:
            body["payload"] = self.payload
        return body


@dataclass(slots=True)
class Recent:
    """The latest near-miss of one (topic, cause), for the inspector page."""

    subtopic: str
    cause: str
    event: str | None
    private: bool
    text: str
    fix: str
    at: float
    count: int = 1


# -- what to say -----------------------------------------------------------------------------------
def _quote(value: str) -> str:
    return '"' + printable(value).replace('"', '\\"') + '"'


def _plural(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else (many or one + 's')}"


def _vis(private: bool) -> str:
    return "private" if private else "public"


_REFUSAL_FIX = {
    "unauthorized": (
        "let the subscriber's role read the topic with a SELECT policy on realtime.messages "
        "(realtime.topic() is the topic), or send with private => false to public channels"
    ),
    "rls_error": "fix the error of the SELECT policy on realtime.messages (logged with the refusal)",
    "invalid_token": "give the client a valid, unexpired token for this server",
    "database_unavailable": "the database was unreachable at join time: the client joins again by itself",
}


def explain(record: MessageRecord, miss: Miss) -> tuple[str, str]:
    """(what happened, what to change) for one near-miss of a message."""
    reached = (
        "reached nobody"
        if not record.delivered
        else f"reached only {_plural(record.delivered, 'subscriber')}"
    )
    event = _quote(record.event) if record.event is not None else "none"
    head = f"message to {_quote(record.subtopic)} (event {event}) is {_vis(record.private)} and {reached}"
    on = _quote(miss.subtopic)
    are = "is" if miss.count == 1 else "are"
    others = f"{_plural(miss.count, _vis(miss.private) + ' subscriber')} {are} on {on}"
    if miss.cause == "visibility":
        fix = (
            "join with config.private = true, or send with private => false"
            if record.private
            else "send with private => true, or join without config.private"
        )
        return f"{head}; {others}", fix
    if miss.cause in ("topic_case", "topic_whitespace", "topic_prefix"):
        also = "" if miss.private == record.private else f", and {_vis(record.private)} on both sides"
        if miss.cause == "topic_case":
            what, fix = (
                "differs only in case",
                "build the topic the same way on both sides (topics are case-sensitive)",
            )
        elif miss.cause == "topic_whitespace":
            what, fix = "differs only in leading or trailing spaces", "trim the topic on both sides"
        else:
            what = 'differs by a "realtime:" prefix'
            fix = (
                f'use {_quote(bare(record.subtopic))} on both sides (clients add "realtime:" to a channel '
                "name themselves; realtime.send() and the REST API take the topic without it)"
            )
        return f"{head}; {others}, which {what}", fix + also
    if miss.cause == "refused_join":
        joins = _plural(miss.count, f"{_vis(miss.private)} join")
        was = "was" if miss.count == 1 else "were"
        fix = _REFUSAL_FIX.get(miss.reason, "see the refusal reason")
        minutes = f"{EVENT_WINDOW_S / 60:.0f} minutes"
        return f"{head}; {joins} to {on} {was} refused in the last {minutes} ({printable(miss.detail)})", fix
    # slow_consumer
    dropped = _plural(miss.count, "subscriber")
    was = "was" if miss.count == 1 else "were"
    minutes = f"{EVENT_WINDOW_S / 60:.0f} minutes"
    return (
        f"{head}; {dropped} of {on} {was} dropped as a slow consumer in the last {minutes}",
        "the client must read its socket faster, or raise --outbox-limit-bytes",
    )


def explain_json(record: MessageRecord, miss: Miss) -> dict[str, Any]:
    text, fix = explain(record, miss)
    return {
        "topic": miss.subtopic,
        "private": miss.private,
        "subscribers": miss.count,
        "text": text,
        "fix": fix,
    }


def log_line(record: MessageRecord, miss: Miss) -> str:
    text, fix = explain(record, miss)
    return f"UndeliveredMessage: {text}: {fix}"


__all__ = [
    "EVENT_WINDOW_S",
    "Event",
    "MessageRecord",
    "Miss",
    "Recent",
    "explain",
    "explain_json",
    "log_line",
]
