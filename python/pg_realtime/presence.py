"""Presence as the official clients expect it, with no I/O: refs, metas, state, and diffs.

A presence is one channel's tracked payload under its key on a topic. Its meta is the payload
with ``phx_ref`` (unique, as Phoenix makes it) and, after an update, ``phx_ref_prev``. A topic's
state, as ``presence_state`` carries it, is ``{key: {"metas": [meta, ...]}}``; a change is a
``presence_diff``, ``{"joins": <state>, "leaves": <state>}``.

The database keeps the presences (``realtime.presences``) and records every change as an event
(``realtime.presence_events``) that each sidecar reads with its commit-safe read, in commit
order. A sidecar keeps the state of a topic in memory while it has a client that needs it:
loaded from the table together with the snapshot it was read in, so the events that reach the
sidecar afterwards but were already in that snapshot are not applied twice
(:func:`visible_in`). Each event a sidecar reads for a topic gets the next number of that topic
(:class:`TopicPresence.seen`), so a channel that waited for the state can drop the diffs the
state already holds.
"""

from __future__ import annotations

import base64
import os
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

Meta = dict[str, Any]
#: {key: {"metas": [meta, ...]}}
State = dict[str, dict[str, list[Meta]]]


def new_ref() -> str:
    """A fresh ``phx_ref``: the time in nanoseconds and random bits, URL-safe base64 (16 chars),
    unique across sidecars without coordination (as Phoenix makes its refs)."""
    raw = time.time_ns().to_bytes(8, "big") + os.urandom(4)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def presence_key(configured: Any) -> str:
    """The key of a channel's presence: ``config.presence.key`` as given (upstream groups keys by
    their text), or a fresh UUID (version 1, as upstream) when it is missing or empty."""
    if configured is None or configured == "":
        return str(uuid.uuid1())
    if isinstance(configured, bool):
        return "true" if configured else "false"
    return configured if isinstance(configured, str) else str(configured)


def meta(payload: dict[str, Any], ref: str, previous: str | None = None) -> Meta:
    """The meta of a tracked payload: the payload with its ref (and the ref it replaces)."""
    value: Meta = {**payload, "phx_ref": ref}
    value.pop("phx_ref_prev", None)
    if previous is not None:
        value["phx_ref_prev"] = previous
    return value


def group(entries: Iterable[tuple[str, Meta]]) -> State:
    """(key, meta) pairs as a state."""
    state: State = {}
    for key, value in entries:
        state.setdefault(key, {"metas": []})["metas"].append(value)
    return state


def snapshot_visible(snapshot: str) -> tuple[int, int, frozenset[int]]:
    """(xmin, xmax, xip) of a pg_snapshot in text form, ``xmin:xmax:xip,...``."""
    xmin, xmax, xip = snapshot.split(":", 2)
    return int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x)


def visible_in(snapshot: str, xid: int) -> bool:
    """Whether the (committed) transaction ``xid`` is visible in ``snapshot``, as
    ``pg_visible_in_snapshot()`` decides."""
    xmin, xmax, xip = snapshot_visible(snapshot)
    if xid < xmin:
        return True
    if xid >= xmax:
        return False
    return xid not in xip


@dataclass(slots=True)
class PresenceEvent:
    """One row of realtime.presence_events, as the reader returns it."""

    id: str
    topic: str
    private: bool
    payload: str  # {"joins": ..., "leaves": ...} as JSON text
    xid: int
    inserted_at: float


@dataclass
class TopicPresence:
    """The presences of one (topic, private) as this sidecar knows them."""

    #: ref -> (key, meta); None until loaded (no client here needed the state yet).
    refs: dict[str, tuple[str, Meta]] | None = None
    #: Events read for this topic so far (each diff fanned out carries its number).
    seen: int = 0
    #: While a load is under way: the events read meanwhile, with their xid.
    pending: list[tuple[int, dict[str, Any]]] | None = None
    waiters: list[Any] = field(default_factory=list)

    @property
    def loaded(self) -> bool:
        return self.refs is not None

    def apply(self, diff: dict[str, Any]) -> None:
        """Fold one diff into a loaded state: joins first, then leaves, as the clients apply it."""
        refs = self.refs
        if refs is None:
            return
        joins, leaves = diff.get("joins"), diff.get("leaves")
        for key, value in _metas(joins):
            ref = value.get("phx_ref")
            if isinstance(ref, str):
                refs[ref] = (key, value)
        for _key, value in _metas(leaves):
            ref = value.get("phx_ref")
            if isinstance(ref, str):
                refs.pop(ref, None)

    def load(self, snapshot: str, rows: Iterable[tuple[str, str, Meta]]) -> None:
        """The state as read in ``snapshot`` ((ref, key, meta) rows), then the events read since
        the load began that the snapshot does not hold."""
        self.refs = {ref: (key, value) for ref, key, value in rows}
        pending, self.pending = self.pending or [], None
        for xid, diff in pending:
            if not visible_in(snapshot, xid):
                self.apply(diff)

    def state(self) -> State:
        return group((key, value) for key, value in (self.refs or {}).values())

    def count(self) -> int:
        return len(self.refs or {})


def _metas(part: Any) -> Iterable[tuple[str, Meta]]:
    if not isinstance(part, dict):
        return
    for key, entry in part.items():
        metas = entry.get("metas") if isinstance(entry, dict) else None
        if isinstance(metas, list):
            for value in metas:
                if isinstance(value, dict):
                    yield str(key), value


@dataclass(frozen=True, slots=True)
class PresenceSnapshot:
    """The presences of a topic for one channel's ``presence_state``, with the number of the last
    event they hold (held diffs up to it are dropped)."""

    state: State
    seen: int


class ClientPresenceLimit:
    """Upstream's per-channel limit on presence pushes: ``max_calls`` per window of ``window_s``
    that starts at the first push after the previous window ended (track and untrack alike)."""

    __slots__ = ("count", "max_calls", "reset_at", "window_s")

    def __init__(self, max_calls: int, window_s: float) -> None:
        self.max_calls = max_calls
        self.window_s = window_s
        self.count = 0
        self.reset_at: float | None = None

    def allow(self, now: float) -> bool:
        if not self.max_calls:
            return True
        if self.reset_at is None or now > self.reset_at:
            self.count = 1
            self.reset_at = now + self.window_s
            return True
        if self.count >= self.max_calls:
            return False
        self.count += 1
        return True


__all__ = [
    "ClientPresenceLimit",
    "PresenceEvent",
    "PresenceSnapshot",
    "State",
    "TopicPresence",
    "group",
    "meta",
    "new_ref",
    "presence_key",
    "visible_in",
]
