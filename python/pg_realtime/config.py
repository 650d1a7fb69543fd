"""One typed Settings object, read from the environment and overridden by flags.

Every option has a flag (``--port``) and an environment variable (``REALTIME_PORT``); the
flag wins. Defaults bind to loopback and set limits that keep one anonymous client (the anon
key is public) from exhausting the server, sized for a self-hosted service; every limit is a
flag, and docs/security.md lists them.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOG_LEVELS = ("debug", "info", "warning", "error")
#: HS secrets shorter than this are refused (RFC 7518 §3.2 asks for at least the hash size).
MIN_SECRET_BYTES = 32


@dataclass(frozen=True)
class Option:
    env: str
    help: str


def _opt(default: Any, env: str, help: str) -> Any:
    return field(default=default, metadata={"option": Option(env=env, help=help)})


@dataclass(frozen=True)
class Settings:
    # -- where ------------------------------------------------------------------------------
    database_url: str | None = _opt(
        None,
        "DATABASE_URL",
        "PostgreSQL connection URL. Unset: run an embedded PostgreSQL in --data-dir.",
    )
    host: str = _opt("127.0.0.1", "REALTIME_HOST", "address to listen on")
    port: int = _opt(4000, "REALTIME_PORT", "port to listen on (0 picks a free one)")
    log_level: str = _opt("info", "REALTIME_LOG_LEVEL", "debug, info, warning or error")
    log_format: str = _opt("text", "REALTIME_LOG_FORMAT", "text, or json (one object per line)")
    # -- auth -------------------------------------------------------------------------------
    jwt_secret: str | None = _opt(None, "REALTIME_JWT_SECRET", "HS256/384/512 secret for client tokens")
    jwks: str | None = _opt(
        None, "REALTIME_JWKS", "JWKS for RS*/ES*/EdDSA tokens: the JSON itself or a file path"
    )
    allowed_roles: str = _opt(
        "anon,authenticated,service_role",
        "REALTIME_ALLOWED_ROLES",
        "comma-separated roles a token may name; never none, a superuser or the sidecar's own login",
    )
    jwt_claim_validators: str = _opt(
        "",
        "REALTIME_JWT_CLAIM_VALIDATORS",
        'claims every token must carry with these exact values, as JSON: {"iss": "...", "aud": "..."}',
    )
    # -- embedded PostgreSQL ----------------------------------------------------------------
    data_dir: Path = _opt(
        Path(".data"), "REALTIME_DATA_DIR", "embedded PostgreSQL data directory (reused across runs)"
    )
    ephemeral: bool = _opt(False, "REALTIME_EPHEMERAL", "embedded mode: a throwaway cluster, deleted at exit")
    # -- delivery ---------------------------------------------------------------------------
    poll_interval_ms: float = _opt(
        2.0,
        "REALTIME_POLL_INTERVAL_MS",
        "the pause between two reads of new commits after a read of 8 rows or more, shorter after "
        "smaller reads (rows committed meanwhile are read together)",
    )
    maintain_interval_s: float = _opt(
        3600.0, "REALTIME_MAINTAIN_INTERVAL_S", "how often to run realtime.maintain() (and at start)"
    )
    retention: str = _opt("3 days", "REALTIME_RETENTION", "how long messages stay in realtime.messages")
    db_pool_size: int = _opt(10, "REALTIME_DB_POOL_SIZE", "connections for RLS checks and REST writes")
    # -- limits (0 = off) -------------------------------------------------------------------
    max_payload_kb: int = _opt(3000, "REALTIME_MAX_PAYLOAD_KB", "largest broadcast payload, in KB")
    max_channels_per_client: int = _opt(100, "REALTIME_MAX_CHANNELS_PER_CLIENT", "channels per socket")
    max_frame_bytes: int = _opt(5_000_000, "REALTIME_MAX_FRAME_BYTES", "largest WebSocket frame accepted")
    idle_timeout_s: float = _opt(
        60.0, "REALTIME_IDLE_TIMEOUT_S", "close a socket that sends nothing for this long"
    )
    max_connections: int = _opt(
        0,
        "REALTIME_MAX_CONNECTIONS",
        "concurrent sockets (0 = derived from the process's file-descriptor limit)",
    )
    max_connections_per_address: int = _opt(
        250, "REALTIME_MAX_CONNECTIONS_PER_ADDRESS", "concurrent sockets from one client address (0 = off)"
    )
    trusted_proxies: str = _opt(
        "",
        "REALTIME_TRUSTED_PROXIES",
        "comma-separated addresses or networks of proxies whose X-Forwarded-For names the client",
    )
    max_joins_per_second: int = _opt(0, "REALTIME_MAX_JOINS_PER_SECOND", "joins/s, server-wide (0 = off)")
    max_client_joins_per_second: int = _opt(
        100, "REALTIME_MAX_CLIENT_JOINS_PER_SECOND", "joins/s per socket (0 = off); more closes the socket"
    )
    refused_join_delay_ms: float = _opt(
        5000.0, "REALTIME_REFUSED_JOIN_DELAY_MS", "a refused join is answered after this long"
    )
    refused_connect_delay_ms: float = _opt(
        2000.0,
        "REALTIME_REFUSED_CONNECT_DELAY_MS",
        "a refused WebSocket handshake is answered after this long",
    )
    no_channel_timeout_s: float = _opt(
        600.0, "REALTIME_NO_CHANNEL_TIMEOUT_S", "close a socket that holds no channel for this long (0 = off)"
    )
    max_events_per_second: int = _opt(
        0, "REALTIME_MAX_EVENTS_PER_SECOND", "client events/s, server-wide (0 = off; DB rows never count)"
    )
    max_client_events_per_second: int = _opt(
        100, "REALTIME_MAX_CLIENT_EVENTS_PER_SECOND", "client events/s per socket (0 = off)"
    )
    client_presence_max_calls: int = _opt(
        5,
        "REALTIME_CLIENT_PRESENCE_MAX_CALLS",
        "presence pushes (track, untrack) per channel per window (0 = off); more closes the channel",
    )
    client_presence_window_ms: float = _opt(
        30_000.0, "REALTIME_CLIENT_PRESENCE_WINDOW_MS", "the window of --client-presence-max-calls"
    )
    max_presence_events_per_second: int = _opt(
        1000,
        "REALTIME_MAX_PRESENCE_EVENTS_PER_SECOND",
        "presence tracks and states sent per second, server-wide (0 = off); more closes the channel",
    )
    rest_max_batch_messages: int = _opt(
        1000, "REALTIME_REST_MAX_BATCH_MESSAGES", "messages in one REST batch (0 = off)"
    )
    rest_max_batch_private_topics: int = _opt(
        100, "REALTIME_REST_MAX_BATCH_PRIVATE_TOPICS", "distinct private topics in one REST batch (0 = off)"
    )
    outbox_limit_bytes: int = _opt(
        16 * 1024 * 1024,
        "REALTIME_OUTBOX_LIMIT_BYTES",
        "a socket whose unsent frames exceed this is closed (slow consumer)",
    )
    diagnostics: bool = _opt(
        True,
        "REALTIME_DIAGNOSTICS",
        "near-miss diagnostics of undelivered messages (log lines, a metric, /api/diagnostics)",
    )
    shutdown_timeout_s: float = _opt(5.0, "REALTIME_SHUTDOWN_TIMEOUT_S", "grace period on SIGTERM")

    #: Set by ``pg-realtime serve`` once it runs the embedded PostgreSQL: ``database_url`` is then
    #: that cluster's (demo mode). Not an option: it follows from leaving DATABASE_URL unset.
    embedded_database: bool = field(default=False, metadata={})

    def __post_init__(self) -> None:
        if self.log_level.lower() not in LOG_LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, not {self.log_level!r}")
        if self.log_format not in ("text", "json"):
            raise ValueError(f"log format must be text or json, not {self.log_format!r}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port out of range: {self.port}")
        if self.poll_interval_ms <= 0:
            raise ValueError("poll interval must be positive")
        if self.jwt_secret is not None and len(self.jwt_secret.encode()) < MIN_SECRET_BYTES:
            raise ValueError(
                f"the JWT secret must be at least {MIN_SECRET_BYTES} bytes: a shorter one can be guessed"
            )
        self.claim_validators  # noqa: B018 - raises on invalid JSON now, not at the first token
        for proxy in self.trusted_proxy_networks:
            del proxy

    @property
    def roles(self) -> frozenset[str]:
        """The roles a token may name; ``none`` and the empty name never."""
        return frozenset(
            r.strip() for r in self.allowed_roles.split(",") if r.strip() and r.strip() != "none"
        )

    @property
    def claim_validators(self) -> dict[str, Any]:
        if not self.jwt_claim_validators.strip():
            return {}
        try:
            value = json.loads(self.jwt_claim_validators)
        except json.JSONDecodeError as exc:
            raise ValueError(f"jwt claim validators must be a JSON object: {exc}") from None
        if not isinstance(value, dict):
            raise ValueError("jwt claim validators must be a JSON object")
        return value

    @property
    def trusted_proxy_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        try:
            return tuple(
                ipaddress.ip_network(p.strip(), strict=False)
                for p in self.trusted_proxies.split(",")
                if p.strip()
            )
        except ValueError as exc:
            raise ValueError(f"trusted proxies: {exc}") from None

    @property
    def max_payload_bytes(self) -> int:
        # 0 = no limit, as for the other limits.
        return self.max_payload_kb * 1000 if self.max_payload_kb > 0 else sys.maxsize

    @property
    def embedded(self) -> bool:
        """Runs (or is to run) on the embedded PostgreSQL."""
        return self.embedded_database or not self.database_url

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> Settings:
        values: dict[str, Any] = {}
        for f in _options(cls):
            option: Option = f.metadata["option"]
            raw = environ.get(option.env)
            if raw is not None and raw != "":
                values[f.name] = _parse(f, raw)
        return cls(**values)

    @classmethod
    def add_arguments(cls, parser: argparse.ArgumentParser) -> None:
        for f in _options(cls):
            option: Option = f.metadata["option"]
            flag = "--" + f.name.replace("_", "-")
            kind = _kind(f)
            help_text = f"{option.help} [env {option.env}; default {f.default!r}]"
            if kind is bool:
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
            else:
                parser.add_argument(flag, default=None, help=help_text, metavar=f.name.upper())

    @classmethod
    def from_args(cls, args: argparse.Namespace, environ: Mapping[str, str]) -> Settings:
        base = cls.from_env(environ)
        changes: dict[str, Any] = {}
        for f in _options(cls):
            value = getattr(args, f.name, None)
            if value is not None:
                changes[f.name] = value if isinstance(value, bool) else _parse(f, str(value))
        return base.replace(**changes)


def _options(cls: type[Settings]) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if "option" in f.metadata]


def _kind(f: dataclasses.Field[Any]) -> type:
    annotation = str(f.type)
    for name, kind in (("bool", bool), ("int", int), ("float", float), ("Path", Path)):
        if annotation.startswith(name):
            return kind
    return str


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = _kind(f)
    try:
        if kind is bool:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return kind(raw)
    except ValueError:
        raise ValueError(f"invalid value for {f.name}: {raw!r}") from None
