"""`pg-realtime diagnose <topic>`: what became of a topic's recent messages, on every sidecar asked.

It reads ``GET /api/diagnostics/topic/<topic>`` of each sidecar (``--url``, repeatable) with a
service_role key and prints one table: the subscribers each sidecar holds, then the recorded
messages of all of them in the order they were read, each with why it missed subscribers.
"""

from __future__ import annotations

import datetime as dt
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from .auth import sign

DEFAULT_URL = "http://127.0.0.1:4000"
#: Lifetime of the service_role token minted from a JWT secret for one run.
TOKEN_LIFETIME_S = 60


@dataclass(frozen=True)
class Answer:
    url: str
    body: dict[str, Any] | None
    error: str | None = None


def service_key(key: str | None, secret: str | None) -> str | None:
    """The key given, or a short-lived service_role token signed with the server's JWT secret."""
    if key:
        return key
    if secret:
        now = int(time.time())
        return sign(
            {"role": "service_role", "iss": "pg-realtime", "iat": now, "exp": now + TOKEN_LIFETIME_S}, secret
        )
    return None


def fetch(url: str, topic: str, key: str, timeout: float = 5.0) -> Answer:
    address = f"{url.rstrip('/')}/api/diagnostics/topic/{urllib.parse.quote(topic, safe=':')}"
    request = urllib.request.Request(address, headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Answer(url, orjson.loads(response.read()))
    except urllib.error.HTTPError as exc:
        try:
            reason = str(orjson.loads(exc.read()).get("error"))
        except (orjson.JSONDecodeError, AttributeError):
            reason = exc.reason
        return Answer(url, None, f"HTTP {exc.code}: {reason}")
    except (urllib.error.URLError, OSError) as exc:
        return Answer(url, None, str(getattr(exc, "reason", exc)))


def _clock(epoch: float | None) -> str:
    if epoch is None:
        return "-"
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%H:%M:%S.%f")[:-3]


def _table(header: Sequence[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(header[i]), *(len(row[i]) for row in rows)) for i in range(len(header) - 1)]
    lines = []
    for row in [list(header), *rows]:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return lines


def render(topic: str, answers: list[Answer]) -> str:
    """One table of the messages of every sidecar, with each sidecar's subscribers above it."""
    out = [f"topic {orjson.dumps(topic).decode()}"]
    messages: list[tuple[float, str, dict[str, Any]]] = []
    recording: list[float] = []
    for answer in answers:
        if answer.body is None:
            out.append(f"  {answer.url}: unreachable or refused ({answer.error})")
            continue
        body = answer.body
        subscribers = ", ".join(
            f"{s['count']} {'private' if s['private'] else 'public'} v{s['vsn']}" for s in body["subscribers"]
        )
        out.append(f"  {answer.url}: subscribers {subscribers or 'none'}")
        for near in body.get("similar_topics", []):
            visibility = "private" if near["private"] else "public"
            out.append(
                f"    also {near['subscribers']} {visibility} on {orjson.dumps(near['topic']).decode()}"
                f" ({near['cause']})"
            )
        for event in body.get("events", []):
            what = "join refused" if event["cause"] == "refused_join" else "dropped as a slow consumer"
            out.append(f"    {_clock(event['at'])} {what}: {event['detail'] or event['topic']}")
        for message in body["messages"]:
            messages.append((message["read_at"], answer.url, message))
        if body.get("recording_until"):
            recording.append(body["recording_until"])
    out.append("")
    if not messages:
        until = f" until {_clock(min(recording))} UTC" if recording else ""
        out.append(
            "No message recorded yet. Every message of this topic is recorded from now on"
            f"{until}: send again, then run this again."
        )
        return "\n".join(out) + "\n"
    rows = []
    for _read_at, url, message in sorted(messages, key=lambda m: m[0]):
        committed = message["committed_at"]
        lag = f"{(message['read_at'] - committed) * 1000:.0f} ms" if committed is not None else "-"
        undelivered = message["undelivered"]
        if undelivered:
            why = "; ".join(f"{u['cause']}: {u['fix']}" for u in undelivered)
        elif message["delivered"]:
            why = "delivered"
        else:
            why = "no subscriber on this or a similar topic"
        rows.append(
            [
                url,
                _clock(committed),
                _clock(message["read_at"]),
                message["source"],
                "private" if message["private"] else "public",
                str(message["event"]),
                lag,
                str(message["matched"]),
                str(message["delivered"]),
                why,
            ]
        )
    out += _table(
        [
            "sidecar",
            "committed",
            "read",
            "source",
            "visibility",
            "event",
            "lag",
            "matched",
            "delivered",
            "why",
        ],
        rows,
    )
    return "\n".join(out) + "\n"


# The live sidecars of a database, from the registry they keep (realtime.sidecars).
_LIVE_SIDECARS = """
select address from realtime.sidecars where expires_at > pg_catalog.now() order by started_at
"""


def registered_urls(database_url: str) -> list[str]:
    """The base URLs of every live sidecar registered in the database (a wildcard bind address is
    reached on loopback)."""
    import psycopg

    with psycopg.connect(database_url, connect_timeout=5, application_name="pg-realtime diagnose") as conn:
        addresses = [str(row[0]) for row in conn.execute(_LIVE_SIDECARS).fetchall()]
    urls = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        if host in ("0.0.0.0", "::", "[::]", ""):
            host = "127.0.0.1"
        urls.append(f"http://{host}:{port}")
    return urls


def diagnose(topic: str, urls: Sequence[str], key: str) -> tuple[str, int]:
    """The table, and the exit status: 0, or 1 when no sidecar answered."""
    answers = [fetch(url, topic, key) for url in urls]
    status = 0 if any(answer.body is not None for answer in answers) else 1
    return render(topic, answers), status
