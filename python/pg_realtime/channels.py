"""Who listens to what, and fan-out that encodes each message once per wire format.

A channel is one joined ``realtime:<subtopic>`` on one socket. Private and public
channels of the same subtopic are separate streams, so the registry is keyed by
``(subtopic, private)``. Fan-out walks the subscribers of one key, encodes the frame the
first time a wire format is needed, and hands the same object to every socket of that
format: the cost of encoding does not grow with the number of subscribers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from .phoenix import Vsn
from .presence import ClientPresenceLimit

Frame = str | bytes


class Outbox:
    """Frames waiting for one socket, bounded in bytes so a slow reader cannot eat memory."""

    __slots__ = ("_wakeup", "closed", "frames", "limit", "overflowed", "size")

    def __init__(self, limit: int, wakeup: Callable[[], None]) -> None:
        self.frames: deque[Frame] = deque()
        self.size = 0
        self.limit = limit
        self.closed = False
        self.overflowed = False
        self._wakeup = wakeup

    def push(self, frame: Frame) -> bool:
        """Queue a frame; False when the socket is closed or has fallen too far behind."""
        if self.closed:
            return False
        if self.limit and self.size + len(frame) > self.limit:
            self.overflowed = True
            self.closed = True
            self._wakeup()
            return False
        was_empty = not self.frames
        self.frames.append(frame)
        self.size += len(frame)
        if was_empty:
            self._wakeup()
        return True

    def wake(self) -> None:
        self._wakeup()

    def pop(self) -> Frame | None:
        """The next frame to write, or None; stops handing out frames once the socket overflowed."""
        if not self.frames or self.overflowed:
            return None
        frame = self.frames.popleft()
        self.size -= len(frame)
        return frame

    def take_all(self) -> list[Frame]:
        frames = list(self.frames)
        self.frames.clear()
        self.size = 0
        return frames


class Peer(Protocol):
    """The socket side a channel needs: its wire format and a way to queue frames."""

    vsn: Vsn

    def send(self, frame: Frame) -> None: ...


@dataclass(eq=False)
class Channel:
    """One joined topic on one socket."""

    peer: Peer
    topic: str  # "realtime:<subtopic>", as the client joined it
    subtopic: str
    join_ref: str | None
    private: bool
    broadcast_self: bool = False
    broadcast_ack: bool = False
    presence_enabled: bool = False
    token: str | None = None
    claims: dict[str, Any] = field(default_factory=dict)
    #: RLS results for private channels; None means "not checked yet" (write is checked lazily).
    can_read: bool | None = None
    can_write: bool | None = None
    #: When the channel's token expires (epoch seconds), None for a token without ``exp``.
    expires_at: float | None = None
    #: When the token and the read policy are checked again (the reference: every 5 minutes).
    recheck_at: float | None = None
    #: Until when a ``replication_ready`` notice may wait for the reader (None: none asked).
    ready_deadline: float | None = None
    #: Live frames that arrived while the join was replaying or loading its presence state, with
    #: their message id (a broadcast) or the number of their presence event (a presence_diff).
    held: list[tuple[Frame, str | int | None]] | None = None
    #: Ids of the replayed messages: their live copies are not sent again.
    replayed: set[str] | None = None

    #: Presence: the key this channel tracks under, the private channel's presence policies
    #: (None: not checked yet), the payload tracked last (None: not tracking), the limit on
    #: presence pushes.
    presence_key: str = ""
    can_read_presence: bool | None = None
    can_write_presence: bool | None = None
    presence_payload: dict[str, Any] | None = None
    presence_calls: ClientPresenceLimit | None = None

    @property
    def key(self) -> tuple[str, bool]:
        return (self.subtopic, self.private)

    @property
    def receives_broadcasts(self) -> bool:
        # Public channels run no RLS; a private channel receives once its read check passed.
        return not self.private or self.can_read is True

    @property
    def receives_presence(self) -> bool:
        # As upstream: every public subscriber gets presence diffs (whether it enabled presence or
        # not); a private one once its presence read check passed.
        return not self.private or self.can_read_presence is True


Encoder = Callable[[Vsn], Frame | None]


class KeyIndex(Protocol):
    """Told when a (subtopic, private) key gets its first channel and loses its last one."""

    def added(self, subtopic: str, private: bool) -> None: ...

    def removed(self, subtopic: str, private: bool) -> None: ...


class Registry:
    """All joined channels of the server, by (subtopic, private)."""

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, bool], dict[Channel, None]] = {}
        self.channel_count = 0
        #: Told of every key's first and last channel (the diagnostics' near-miss index, presence).
        self.indexes: list[KeyIndex] = []

    def attach(self, index: KeyIndex) -> None:
        """Keep ``index`` told of every key, those already here included."""
        self.indexes.append(index)
        for subtopic, private in self._by_key:
            index.added(subtopic, private)

    def add(self, channel: Channel) -> None:
        subscribers = self._by_key.get(channel.key)
        if subscribers is None:
            subscribers = self._by_key[channel.key] = {}
            for index in self.indexes:
                index.added(channel.subtopic, channel.private)
        if channel not in subscribers:
            subscribers[channel] = None
            self.channel_count += 1

    def remove(self, channel: Channel) -> None:
        subscribers = self._by_key.get(channel.key)
        if subscribers is not None and channel in subscribers:
            del subscribers[channel]
            self.channel_count -= 1
            if not subscribers:
                del self._by_key[channel.key]
                for index in self.indexes:
                    index.removed(channel.subtopic, channel.private)

    def subscribers(self, subtopic: str, private: bool) -> Iterator[Channel]:
        return iter(tuple(self._by_key.get((subtopic, private), ())))

    def count(self, subtopic: str, private: bool) -> int:
        return len(self._by_key.get((subtopic, private), ()))

    def formats(self, subtopic: str, private: bool) -> dict[str, int]:
        """The subscribers of (subtopic, private) by wire format ("1.0.0", "2.0.0")."""
        counts: dict[str, int] = {}
        for channel in self._by_key.get((subtopic, private), ()):
            vsn = str(channel.peer.vsn)
            counts[vsn] = counts.get(vsn, 0) + 1
        return counts

    def topics(self) -> list[tuple[str, bool, int]]:
        return [(sub, private, len(chs)) for (sub, private), chs in self._by_key.items()]

    def fan_out(
        self,
        subtopic: str,
        private: bool,
        encode: Encoder,
        exclude: Channel | None = None,
        message_id: str | None = None,
    ) -> int:
        """Send to every subscriber of (subtopic, private); returns the number of deliveries.

        ``message_id`` (a stored message's) is not sent again to a channel that replayed it."""
        subscribers = self._by_key.get((subtopic, private))
        if not subscribers:
            return 0
        frames: dict[Vsn, Frame | None] = {}
        delivered = 0
        # Copy: a send may close a slow socket, which unregisters its channels mid-loop.
        for channel in tuple(subscribers):
            if channel is exclude or not channel.receives_broadcasts:
                continue
            if message_id is not None and channel.replayed is not None and message_id in channel.replayed:
                continue
            vsn = channel.peer.vsn
            if vsn in frames:
                frame = frames[vsn]
            else:
                frame = frames[vsn] = encode(vsn)
            if frame is None:
                continue
            if channel.held is None:
                channel.peer.send(frame)
            else:
                channel.held.append((frame, message_id))
            delivered += 1
        return delivered

    def presence_out(self, subtopic: str, private: bool, encode: Encoder, number: int) -> int:
        """A presence_diff to every subscriber of (subtopic, private) that receives presence; a
        channel still waiting for its presence state holds it with the event's ``number``."""
        subscribers = self._by_key.get((subtopic, private))
        if not subscribers:
            return 0
        frames: dict[Vsn, Frame | None] = {}
        delivered = 0
        for channel in tuple(subscribers):
            if not channel.receives_presence:
                continue
            vsn = channel.peer.vsn
            frame = frames[vsn] if vsn in frames else frames.setdefault(vsn, encode(vsn))
            if frame is None:
                continue
            if channel.held is None:
                channel.peer.send(frame)
            else:
                channel.held.append((frame, number))
            delivered += 1
        return delivered
