"""The one broadcast step: encode once per wire format, fan out to local subscribers, count.

Every path a message arrives by (a client push, the REST API, a committed database row) ends
here. Frames are built lazily, the first time a subscriber of a wire format needs one, so the
cost of encoding does not grow with the number of subscribers. The cluster bus
(``bus.ClusterBroadcaster``) extends ``relay`` and ``rest``: what a client sends goes to the
local subscribers here and to the other sidecars there; what arrives from the bus comes back in
through ``remote``, the same fan-out.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from . import phoenix
from .channels import Channel, Encoder, Frame, Registry
from .diagnostics import Diagnostics
from .metrics import Metrics
from .phoenix import PayloadEncoding, UserBroadcast, Vsn
from .rows import Row

log = logging.getLogger("pg_realtime")

#: What a client or the REST API broadcasts: a binary-protocol message, or a JSON map
#: ``{"type": "broadcast", "event": ..., "payload": ...}``.
Broadcast = UserBroadcast | dict[str, Any]

_NOTHING_WATCHED: dict[str, int] = {}


def encoder(topic: str, message: Broadcast) -> Encoder:
    """Frames of ``message`` on ``topic`` ("realtime:<subtopic>"), one per wire format."""
    if isinstance(message, UserBroadcast):

        def encode_user(vsn: Vsn) -> Frame | None:
            return phoenix.encode_user_broadcast(vsn, topic, message)

        return encode_user

    def encode_map(vsn: Vsn) -> Frame | None:
        return phoenix.encode_broadcast(vsn, topic, message)

    return encode_map


def row_message(row: Row, replayed: bool = False) -> UserBroadcast | None:
    """A stored message as the reference server sends it: the row id (and replay flag) in meta."""
    if row.event is None:
        return None
    meta: dict[str, Any] = {"id": row.id}
    if replayed:
        meta["replayed"] = True
    if row.binary_payload is not None:
        return UserBroadcast(row.event, row.binary_payload, PayloadEncoding.BINARY, meta)
    if row.payload is not None:
        return UserBroadcast(row.event, row.payload.encode(), PayloadEncoding.JSON, meta)
    return None


def row_frame(vsn: Vsn, row: Row, replayed: bool = False) -> Frame | None:
    message = row_message(row, replayed)
    if message is None:
        return None
    return phoenix.encode_user_broadcast(vsn, phoenix.SUBTOPIC_PREFIX + row.topic, message)


class Broadcaster:
    """Local fan-out of the three paths, counted once per call rather than once per message.

    With ``diagnostics``, a message that reached nobody, or whose subtopic the near-miss index
    watches, is handed to it after its fan-out (see :mod:`pg_realtime.diagnostics`); any other
    message costs one set lookup more.
    """

    def __init__(self, registry: Registry, metrics: Metrics, diagnostics: Diagnostics | None = None) -> None:
        self.registry = registry
        self.metrics = metrics
        self.diagnostics = diagnostics

    def _fan_out(
        self,
        path: str,
        items: Iterable[tuple[str, bool, Encoder, Channel | None, str | None, object]],
        received: int | None = None,
    ) -> int:
        fan_out = self.registry.fan_out
        diagnostics = self.diagnostics
        watched = diagnostics.watched if diagnostics is not None else _NOTHING_WATCHED
        messages = delivered = 0
        # ``origin`` (the message or row) is read only by the diagnostics, off the common path.
        for subtopic, private, encode, exclude, message_id, origin in items:
            messages += 1
            reached = fan_out(subtopic, private, encode, exclude, message_id)
            delivered += reached
            if (not reached or subtopic in watched) and diagnostics is not None:
                diagnostics.fanned_out(path, subtopic, private, origin, reached)
        # Label lookups per message showed up in profiles: count once per call.
        self.metrics.messages_in.labels(path).inc(messages if received is None else received)
        self.metrics.deliveries.labels(path).inc(delivered)
        return delivered

    def relay(self, subtopic: str, private: bool, message: Broadcast, exclude: Channel | None = None) -> int:
        """A client's broadcast, to every subscriber of its topic and visibility but ``exclude``."""
        topic = phoenix.SUBTOPIC_PREFIX + subtopic
        return self._fan_out("client", [(subtopic, private, encoder(topic, message), exclude, None, message)])

    def rest(self, messages: Iterable[tuple[str, bool, Broadcast]]) -> int:
        """Broadcasts accepted by the REST API: (subtopic, private, message) each."""
        return self._fan_out(
            "rest",
            (
                (subtopic, private, encoder(phoenix.SUBTOPIC_PREFIX + subtopic, message), None, None, message)
                for subtopic, private, message in messages
            ),
        )

    def remote(self, messages: Iterable[tuple[str, bool, Broadcast]]) -> int:
        """Client broadcasts another sidecar accepted (the cluster bus): none excluded here."""
        return self._fan_out(
            "bus",
            (
                (subtopic, private, encoder(phoenix.SUBTOPIC_PREFIX + subtopic, message), None, None, message)
                for subtopic, private, message in messages
            ),
        )

    def rows(self, rows: list[Row]) -> None:
        """Rows the commit-safe reader found committed, in its order."""
        now = time.time()
        # One call per read, not one lock and bucket walk per row (see metrics.BatchHistogram).
        self.metrics.stream_lag.observe_many([max(0.0, now - row.inserted_at) for row in rows])
        items: list[tuple[str, bool, Encoder, Channel | None, str | None, object]] = []
        for row in rows:
            if (
                row.event is None
                or row.private is None
                or (row.payload is None and row.binary_payload is None)
            ):
                # As the reference server: a row without event, private flag or payload is not a message.
                log.warning("UnableToBroadcastChanges: message %s lacks event, private or payload", row.id)
                continue
            items.append((row.topic, row.private, RowEncoder(row), None, row.id, row))
        self._fan_out("database", items, received=len(rows))


class RowEncoder:
    """The frames of one stored message, one per wire format (the Encoder of a row)."""

    __slots__ = ("row",)

    def __init__(self, row: Row) -> None:
        self.row = row

    def __call__(self, vsn: Vsn) -> Frame | None:
        return row_frame(vsn, self.row)
