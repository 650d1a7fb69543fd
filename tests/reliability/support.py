"""Small helpers shared by the reliability tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import LiveServer


def bearer(server: LiveServer, role: str = "service_role") -> dict[str, str]:
    return {"Authorization": f"Bearer {server.token(role)}"}


def is_event(frame: Any, event: str) -> bool:
    """True for a text frame (V1 object or V2 array) carrying ``event``."""
    if isinstance(frame, list):
        return len(frame) == 5 and frame[3] == event
    if isinstance(frame, dict):
        return frame.get("event") == event
    return False


def is_close(frame: Any) -> bool:
    return isinstance(frame, aiohttp.WSMessage) and frame.type in (
        aiohttp.WSMsgType.CLOSE,
        aiohttp.WSMsgType.CLOSING,
        aiohttp.WSMsgType.CLOSED,
    )


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout}s")
        await asyncio.sleep(0.02)


async def scrape(server: LiveServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, keyed by (sample name, sorted labels)."""
    async with aiohttp.ClientSession() as http, http.get(f"{server.url}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def sample(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)
