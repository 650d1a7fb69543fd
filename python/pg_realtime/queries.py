"""What a session asks of the database, and the answers it is given.

The shell performs each request and answers with a plain value, or with a failure value
instead of raising: the session's rules decide what a failure means to the client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .rows import Row


@dataclass(frozen=True, slots=True)
class ReadCheck:
    """May these claims read (subtopic, private)? Answer: bool or a Failure."""

    subtopic: str
    claims: dict[str, Any]


@dataclass(frozen=True, slots=True)
class WriteCheck:
    """May these claims broadcast to (subtopic, private)? Answer: bool or a Failure."""

    subtopic: str
    claims: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ReplayQuery:
    """The newest private messages of a topic since a time. Answer: list[Row] or a Failure."""

    subtopic: str
    since_ms: int
    limit: int


Request = ReadCheck | WriteCheck | ReplayQuery


@dataclass(frozen=True, slots=True)
class Unavailable:
    """The database could not be reached."""

    detail: str


@dataclass(frozen=True, slots=True)
class PolicyFailed:
    """The policies could not be evaluated (a broken policy, an unknown role...)."""

    detail: str


Failure = Unavailable | PolicyFailed
Answer = bool | list[Row] | Failure
