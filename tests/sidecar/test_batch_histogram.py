"""The stream-lag histogram fed one read at a time exports what prometheus_client's would."""

from __future__ import annotations

from pg_realtime.metrics import BatchHistogram
from prometheus_client import CollectorRegistry, Histogram, generate_latest

BUCKETS = (0.001, 0.0025, 0.005, 1, 60)
VALUES = [0.0, 0.0005, 0.001, 0.001, 0.002, 0.0025, 0.3, 1.0, 59.9, 60.0, 61.0, 3600.0]


def series(registry: CollectorRegistry) -> dict[str, float]:
    out = {}
    for line in generate_latest(registry).decode().splitlines():
        if line.startswith("lag_") and not line.startswith("lag_created"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_same_buckets_count_and_sum_as_prometheus_client() -> None:
    reference = CollectorRegistry()
    histogram = Histogram("lag", "lag", buckets=BUCKETS, registry=reference)
    for value in VALUES:
        histogram.observe(value)
    ours = CollectorRegistry()
    batch = BatchHistogram("lag", "lag", buckets=BUCKETS)
    ours.register(batch)
    batch.observe_many(VALUES[:5])
    batch.observe_many([])
    for value in VALUES[5:7]:
        batch.observe(value)
    batch.observe_many(VALUES[7:])
    assert series(ours) == series(reference)
