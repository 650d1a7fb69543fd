"""Prometheus metrics, one registry per server instance (so tests can run several)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily


class PolledCounter:
    """A counter that another object keeps (the reader counts its own reads), read at every scrape."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self.source: Callable[[], float] = lambda: 0.0

    def collect(self) -> Iterator[Any]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.source())


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.sockets = Gauge("realtime_sockets", "Open WebSocket connections", registry=r)
        self.channels = Gauge("realtime_channels", "Joined channels", registry=r)
        self.messages_in = Counter(
            "realtime_messages_in_total",
            "Broadcasts received, by path (client, rest, database, bus: from other sidecars)",
            ["path"],
            registry=r,
        )
        self.deliveries = Counter(
            "realtime_deliveries_total", "Frames queued to sockets, by path", ["path"], registry=r
        )
        self.refusals = Counter(
            "realtime_refusals_total",
            "Refused connections, joins and messages, by reason",
            ["reason"],
            registry=r,
        )
        self.stream_up = Gauge("realtime_stream_up", "1 while the database reader is live", registry=r)
        self.stream_reads = PolledCounter("realtime_stream_reads", "Reads of realtime.messages")
        r.register(self.stream_reads)
        self.stream_lag = Histogram(
            "realtime_stream_lag_seconds",
            "From the writing transaction's start (inserted_at) to the fan-out of the row",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60),
            registry=r,
        )
        self.slow_consumers = Counter(
            "realtime_slow_consumer_disconnects_total", "Sockets closed for not reading", registry=r
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
