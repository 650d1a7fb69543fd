"""Prometheus metrics, one registry per server instance (so tests can run several)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from .diagnostics import CAUSES as UNDELIVERED_CAUSES

if TYPE_CHECKING:
    from .stream import MessageStream


class PolledCounter:
    """A counter that another object keeps (the reader counts its own reads), read at every scrape."""

    def __init__(self, name: str, documentation: str) -> None:
        self.name = name
        self.documentation = documentation
        self.source: Callable[[], float] = lambda: 0.0

    def collect(self) -> Iterator[Any]:
        yield CounterMetricFamily(self.name, self.documentation, value=self.source())


class PolledLabelledCounter:
    """A counter family kept elsewhere as {label value: count}, read at every scrape."""

    def __init__(self, name: str, documentation: str, label: str) -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self.source: Callable[[], dict[str, int]] = dict

    def collect(self) -> Iterator[Any]:
        family = CounterMetricFamily(self.name, self.documentation, labels=[self.label])
        for value, count in sorted(self.source().items()):
            family.add_metric([value], count)
        yield family


class BatchHistogram:
    """A histogram fed a whole read's values at once, read at every scrape.

    prometheus_client's ``Histogram.observe`` takes a lock and walks the buckets per value; at
    10,000 rows a second that showed as a tenth of the sidecar's time in profiles. This one
    counts a batch with one ``bisect`` per value into plain integers (the event loop is its
    only writer) and publishes the same series: ``_bucket{le}``, ``_count`` and ``_sum``.
    """

    def __init__(self, name: str, documentation: str, buckets: Iterable[float]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = sorted(float(b) for b in buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def observe_many(self, values: Iterable[float]) -> None:
        counts, bounds = self.counts, self.bounds
        total = 0.0
        for value in values:
            counts[bisect_left(bounds, value)] += 1
            total += value
        self.sum += total

    def collect(self) -> Iterator[Any]:
        cumulative = []
        running = 0
        for bound, count in zip([*self.bounds, float("inf")], self.counts, strict=True):
            running += count
            cumulative.append((_le(bound), running))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=cumulative, sum_value=self.sum)


def _le(bound: float) -> str:
    """A bucket bound as prometheus_client writes it (``0.005``, ``1.0``, ``+Inf``)."""
    return "+Inf" if bound == float("inf") else repr(bound)


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
        self.stream_probes = PolledCounter(
            "realtime_stream_probes", "Polls that found the snapshot unchanged and read nothing"
        )
        r.register(self.stream_probes)
        self.stream_waits = PolledCounter(
            "realtime_stream_waits", "Reads that waited in the database for a transaction to end"
        )
        r.register(self.stream_waits)
        self.stream_pauses = PolledCounter(
            "realtime_stream_pauses", "Times the reader paused because nothing here wanted messages"
        )
        r.register(self.stream_pauses)
        self.stream_paused = Gauge(
            "realtime_stream_paused", "1 while the reader is paused (no channel joined)", registry=r
        )
        self.stream_failovers = PolledLabelledCounter(
            "realtime_stream_failovers",
            "Changes of the server behind the database URL, by cause (system_identifier, timeline, "
            "snapshot_backwards)",
            "cause",
        )
        r.register(self.stream_failovers)
        self.stream_catch_ups = PolledCounter(
            "realtime_stream_catch_ups", "Catch-up reads after a changed or restarted server"
        )
        r.register(self.stream_catch_ups)
        self.stream_standby_refusals = PolledCounter(
            "realtime_stream_standby_refusals", "Connections refused because the server was in recovery"
        )
        r.register(self.stream_standby_refusals)
        self.stream_lag = BatchHistogram(
            "realtime_stream_lag_seconds",
            "From the writing transaction's start (inserted_at) to the fan-out of the row",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60),
        )
        r.register(self.stream_lag)
        self.slow_consumers = Counter(
            "realtime_slow_consumer_disconnects_total", "Sockets closed for not reading", registry=r
        )
        self.undelivered = Counter(
            "realtime_undelivered_messages_total",
            "Messages that missed subscribers they nearly reached, by cause (a message with two "
            "causes counts under both)",
            ["cause"],
            registry=r,
        )
        for cause in UNDELIVERED_CAUSES:
            self.undelivered.labels(cause)

    def watch_stream(self, stream: MessageStream) -> None:
        """Read the reader's own counters at every scrape."""
        self.stream_reads.source = lambda: stream.reads
        self.stream_probes.source = lambda: stream.probes
        self.stream_waits.source = lambda: stream.waits
        self.stream_pauses.source = lambda: stream.pauses
        self.stream_paused.set_function(lambda: 1 if stream.paused else 0)
        self.stream_failovers.source = lambda: stream.failovers
        self.stream_catch_ups.source = lambda: stream.catch_ups
        self.stream_standby_refusals.source = lambda: stream.refusals

    def render(self) -> bytes:
        return generate_latest(self.registry)


class BusMetrics:
    """The cluster bus's metrics, in the server's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.up = Gauge("realtime_bus_up", "1 while the cluster bus can send and receive", registry=r)
        self.messages = Counter(
            "realtime_bus_messages_total",
            "Client broadcasts over the cluster bus, by direction (out: published, in: from others)",
            ["direction"],
            registry=r,
        )
        self.local_only = Counter(
            "realtime_bus_local_only_total",
            "Client broadcasts delivered on this sidecar only, the bus being down or behind",
            registry=r,
        )
        self.lost = Counter(
            "realtime_bus_lost_total",
            "Bus messages received but not deliverable (attachment gone, malformed)",
            registry=r,
        )
        self.batch_size = Histogram(
            "realtime_bus_batch_messages",
            "Messages per bus transaction",
            buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 5000),
            registry=r,
        )
        self.latency = Histogram(
            "realtime_bus_latency_seconds",
            "From publishing on one sidecar to the fan-out on another (clocks of both hosts)",
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 5),
            registry=r,
        )
        self.reconnects = Counter(
            "realtime_bus_reconnects_total", "Bus connections re-established after a loss", registry=r
        )
        self.queue_usage = Gauge(
            "realtime_bus_queue_usage",
            "pg_notification_queue_usage(): the share of the server's notification queue in use",
            registry=r,
        )
