"""The cluster bus: client broadcasts from one sidecar to the others.

Any number of sidecars on one database are one service. What a client sends (WebSocket or
REST) is delivered to this sidecar's subscribers at once, in process, and published on the bus;
every other sidecar fans it out to its own subscribers, each making its own private-channel read
checks (``Channel.receives_broadcasts``). ``self`` and ``ack`` are the sender's sidecar's
business: nothing is excluded on the others.

The bus sits behind :class:`Bus` so that another broker can replace it; the one there is,
:class:`~pg_realtime.postgres_bus.PostgresBus`, goes through PostgreSQL itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol

from .broadcast import Broadcast, Broadcaster
from .channels import Channel, Registry
from .diagnostics import Diagnostics
from .metrics import Metrics


class Bus(Protocol):
    """Carries client broadcasts to the other sidecars; what they send comes back through ``on_messages``."""

    #: Why the bus is not up, or None while it is.
    down_reason: str | None

    def publish(self, subtopic: str, private: bool, message: Broadcast) -> bool:
        """Queue ``message`` for the other sidecars; False when it stays local (bus down)."""
        ...

    async def start(self) -> None:
        """Connect and prove the bus works (raises ``BusRefused`` if it never can)."""
        ...

    async def stop(self) -> None: ...


class ClusterBroadcaster(Broadcaster):
    """The Broadcaster with a bus: local subscribers first, in process, then the other sidecars."""

    def __init__(
        self,
        registry: Registry,
        metrics: Metrics,
        bus: Bus | None = None,
        diagnostics: Diagnostics | None = None,
    ) -> None:
        super().__init__(registry, metrics, diagnostics)
        self.bus = bus

    def relay(self, subtopic: str, private: bool, message: Broadcast, exclude: Channel | None = None) -> int:
        delivered = super().relay(subtopic, private, message, exclude)
        if self.bus is not None:
            self.bus.publish(subtopic, private, message)
        return delivered

    def rest(self, messages: Iterable[tuple[str, bool, Broadcast]]) -> int:
        listed = list(messages)
        delivered = super().rest(listed)
        if self.bus is not None:
            for subtopic, private, message in listed:
                self.bus.publish(subtopic, private, message)
        return delivered


__all__ = ["Bus", "ClusterBroadcaster"]
