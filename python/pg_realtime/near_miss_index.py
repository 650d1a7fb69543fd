"""The near-miss index: the registry's keys grouped by normalised topic, and the subtopics to watch.

Two keys nearly meet when their topics differ only by case, leading or trailing spaces or a
``realtime:`` prefix (:func:`normalise`), or only by visibility; :func:`difference` names the
cause. The registry tells the index when a ``(subtopic, private)`` key gets its first channel or
loses its last (``Registry.attach``); :class:`~pg_realtime.diagnostics.Diagnostics` adds the
subtopics it watches for other reasons. No I/O.
"""

from __future__ import annotations

from collections.abc import Iterable

PREFIX = "realtime:"

Key = tuple[str, bool]


def normalise(subtopic: str) -> str:
    """The topic as the other side may have meant it: trimmed, case-folded, no ``realtime:``."""
    topic = subtopic.strip()
    while topic[: len(PREFIX)].casefold() == PREFIX:
        topic = topic[len(PREFIX) :].strip()
    return topic.casefold()


def bare(subtopic: str) -> str:
    """``subtopic`` trimmed and without ``realtime:`` prefixes, its case kept."""
    topic = subtopic.strip()
    while topic[: len(PREFIX)].casefold() == PREFIX:
        topic = topic[len(PREFIX) :].strip()
    return topic


def difference(sent: str, joined: str) -> str:
    """The cause that tells two subtopics of one normalised group apart (the biggest one)."""
    if sent == joined:
        return "visibility"
    if sent.casefold() == joined.casefold():
        return "topic_case"
    if sent.strip().casefold() == joined.strip().casefold():
        return "topic_whitespace"
    return "topic_prefix"


class NearMissIndex:
    """The registry's keys grouped by normalised topic, and the subtopics worth a closer look.

    ``watched`` counts, per subtopic, the reasons to look: one per key of the subtopic in a group
    of two keys or more, one per live event or trace (:meth:`watch` and :meth:`unwatch`).
    """

    __slots__ = ("groups", "watched")

    def __init__(self) -> None:
        self.groups: dict[str, set[Key]] = {}
        self.watched: dict[str, int] = {}

    def added(self, subtopic: str, private: bool) -> None:
        group = self.groups.setdefault(normalise(subtopic), set())
        key = (subtopic, private)
        if key in group:
            return
        group.add(key)
        if len(group) == 2:
            for other, _private in group:
                self.watch(other)
        elif len(group) > 2:
            self.watch(subtopic)

    def removed(self, subtopic: str, private: bool) -> None:
        norm = normalise(subtopic)
        group = self.groups.get(norm)
        key = (subtopic, private)
        if group is None or key not in group:
            return
        if len(group) >= 2:
            self.unwatch(subtopic)
        group.discard(key)
        if len(group) == 1:
            for other, _private in group:
                self.unwatch(other)
        elif not group:
            del self.groups[norm]

    def group(self, subtopic: str) -> Iterable[Key]:
        return self.groups.get(normalise(subtopic), ())

    def watch(self, subtopic: str) -> None:
        self.watched[subtopic] = self.watched.get(subtopic, 0) + 1

    def unwatch(self, subtopic: str) -> None:
        left = self.watched.get(subtopic, 0) - 1
        if left > 0:
            self.watched[subtopic] = left
        else:
            self.watched.pop(subtopic, None)


__all__ = ["Key", "NearMissIndex", "bare", "difference", "normalise"]
