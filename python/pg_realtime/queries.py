"""What a session asks of the database, and the answers it is given.

The shell performs each request and answers with a plain value, or with a failure value
instead of raising: the session's rules decide what a failure means to the client.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .presence import PresenceSnapshot
from .rows import Row

if TYPE_CHECKING:
    from .channels import Channel


@dataclass(frozen=True, slots=True)
class ReadCheck:
    """May these claims read the private ``subtopic``'s broadcasts (or, with ``extension``
    "presence", its presences)? Answer: bool or a Failure."""

    subtopic: str
    claims: dict[str, Any]
    extension: str = "broadcast"


@dataclass(frozen=True, slots=True)
class WriteCheck:
    """May these claims broadcast to the private ``subtopic`` (or track a presence there, with
    ``extension`` "presence")? Answer: bool or a Failure."""

    subtopic: str
    claims: dict[str, Any]
    extension: str = "broadcast"


@dataclass(frozen=True, slots=True)
class ReplayQuery:
    """The newest private messages of a topic since a time. Answer: list[Row] or a Failure."""

    subtopic: str
    since_ms: int
    limit: int


@dataclass(frozen=True, slots=True)
class PresenceSync:
    """The presences of (subtopic, private), for a channel's presence_state.
    Answer: a PresenceSnapshot or a Failure."""

    subtopic: str
    private: bool


@dataclass(frozen=True, slots=True)
class PresenceTrack:
    """Track ``payload`` as the channel's presence under ``key`` (replacing what it tracked).
    Answer: True once stored, or a Failure."""

    channel: Channel
    key: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class StreamResume:
    """The reader of committed messages pauses while no channel is joined: have it take up
    reading (from a fresh snapshot) before the joining channel is answered, so that nothing
    committed after the join reply can be missed. Answer: True once it reads, or a Failure."""


Request = ReadCheck | WriteCheck | ReplayQuery | PresenceSync | PresenceTrack | StreamResume


@dataclass(frozen=True, slots=True)
class Unavailable:
    """The database could not be reached."""

    detail: str


@dataclass(frozen=True, slots=True)
class PolicyFailed:
    """The policies could not be evaluated (a broken policy, an unknown role...)."""

    detail: str


Failure = Unavailable | PolicyFailed
Answer = bool | list[Row] | PresenceSnapshot | Failure
#: A session's rule: a generator that yields requests and is sent their answers.
Rule = Generator[Request, Answer, None]
