"""`pg-realtime serve`: the command line, the embedded database and the process lifecycle."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import psycopg
from aiohttp import web
from psycopg import sql

from . import __version__
from .auth import sign
from .config import Settings
from .diagnose import DEFAULT_URL, diagnose, registered_urls, service_key
from .embedded import EmbeddedPostgres, EmbeddedPostgresError
from .logs import RedactTokens
from .postgres_bus import BusRefused
from .server import RealtimeServer

log = logging.getLogger("pg_realtime")

SUPABASE_ROLES = ("anon", "authenticated", "service_role")
# Ten years: keys printed for a local demo, like Supabase's local development keys.
DEMO_KEY_LIFETIME_S = 10 * 365 * 24 * 3600


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pg-realtime",
        description="Supabase Realtime Broadcast for any PostgreSQL.",
    )
    parser.add_argument("--version", action="version", version=f"pg-realtime {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser(
        "serve",
        help="run the broadcast server",
        description=(
            "Serve Supabase's Realtime protocol (WebSocket and REST). Without --database-url, "
            "run a private PostgreSQL in --data-dir with the extension, the Supabase roles and a "
            "JWT secret kept in that directory."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    Settings.add_arguments(serve)
    diagnose = commands.add_parser(
        "diagnose",
        help="why a topic's messages did (not) arrive",
        description=(
            "Read the delivery diagnostics of TOPIC from each sidecar (GET /api/diagnostics/topic/TOPIC, "
            "service_role key) and print one table: subscribers, then the recorded messages with the "
            "cause of each non-delivery. A sidecar records every message of a topic for 10 minutes after "
            "it is asked, and always those that missed subscribers."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    diagnose.add_argument("topic", help="the topic as sent (without the realtime: prefix clients add)")
    diagnose.add_argument(
        "--url",
        action="append",
        metavar="URL",
        help=f"a sidecar's base URL; repeat for each sidecar (default: {DEFAULT_URL})",
    )
    diagnose.add_argument(
        "--database-url",
        default=os.environ.get("DATABASE_URL"),
        help="read every live sidecar from this database's registry (env DATABASE_URL), instead of --url",
    )
    diagnose.add_argument(
        "--key",
        default=os.environ.get("REALTIME_SERVICE_ROLE_KEY"),
        help="a service_role key (env REALTIME_SERVICE_ROLE_KEY); else one is signed with --jwt-secret",
    )
    diagnose.add_argument(
        "--jwt-secret",
        default=os.environ.get("REALTIME_JWT_SECRET"),
        help="the sidecars' HS secret (env REALTIME_JWT_SECRET), to sign a 60 s service_role key",
    )
    return parser


@dataclass
class EmbeddedDatabase:
    cluster: EmbeddedPostgres
    database_url: str
    jwt_secret: str


def start_embedded(settings: Settings) -> EmbeddedDatabase:
    """Start (initdb on first use) the embedded cluster and prepare the database."""
    data_dir = settings.data_dir
    if settings.ephemeral:
        import tempfile

        data_dir = Path(tempfile.mkdtemp(prefix="pg-realtime-"))
    cluster = EmbeddedPostgres(data_dir)
    cluster.start()
    database_url = cluster.dsn("postgres")
    with psycopg.connect(database_url, autocommit=True, application_name="pg-realtime setup") as conn:
        ensure_supabase_roles(conn)
        conn.execute("create extension if not exists realtime")
        # The extension grants the Supabase roles their privileges only if they existed at install
        # time; granting again is harmless and covers a data directory made before the roles.
        for role in SUPABASE_ROLES:
            conn.execute("select realtime.grant_access(%s)", (role,))
    secret_file = data_dir / "jwt_secret"
    if settings.jwt_secret:
        secret = settings.jwt_secret
    elif secret_file.exists():
        secret = secret_file.read_text().strip()
    else:
        secret = secrets.token_urlsafe(32)
        secret_file.write_text(secret + "\n")
        secret_file.chmod(0o600)
    return EmbeddedDatabase(cluster, database_url, secret)


def ensure_supabase_roles(conn: psycopg.Connection[Any]) -> None:
    """Create the roles Supabase's policies name, where missing (roles are cluster-wide)."""
    for role in SUPABASE_ROLES:
        if not conn.execute("select 1 from pg_roles where rolname = %s", (role,)).fetchone():
            conn.execute(sql.SQL("create role {} nologin").format(sql.Identifier(role)))


def demo_banner(url: str, database_url: str, secret: str) -> str:
    now = int(time.time())
    anon = sign({"role": "anon", "iss": "pg-realtime", "iat": now, "exp": now + DEMO_KEY_LIFETIME_S}, secret)
    service = sign(
        {"role": "service_role", "iss": "pg-realtime", "iat": now, "exp": now + DEMO_KEY_LIFETIME_S}, secret
    )
    http = url.rstrip("/")
    return "\n".join(
        [
            "",
            f"  pg-realtime {__version__} is serving {http}  (inspector: {http}/)",
            f"  database:          {database_url}",
            f"  anon key:          {anon}",
            f"  service_role key:  {service}",
            "",
            "  Open the inspector, join the topic 'room1' (public), then send a message from SQL:",
            f'    psql \'{database_url}\' -c "select realtime.send(\'{{\\"hello\\": \\"world\\"}}\'::jsonb,'
            " 'greeting', 'room1', false)\"",
            "  or over REST:",
            f"    curl -i -X POST {http}/realtime/v1/api/broadcast -H 'Content-Type: application/json'"
            f" -H 'Authorization: Bearer {service}'"
            ' -d \'{"messages":[{"topic":"room1","event":"greeting","payload":{"hello":"rest"}}]}\'',
            "",
            "  Ctrl-C stops the server and the database.",
            "",
        ]
    )


#: Young objects allowed before the collector runs (CPython's default is 700). A read of thousands
#: of rows allocates a few tracked objects per row that reference counting frees within the read;
#: at 700 the collector ran in the middle of each such batch, promoted it to the oldest generation,
#: and so set off full collections of the whole heap (95-440 ms each with 1,000 sockets, six in ten
#: seconds at 10,000 msg/s in bench latency).
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Once serving: what exists now lives as long as the process and is frozen out of the
    collector's scans, and short-lived garbage is left to reference counting."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, middle, old)


async def serve(settings: Settings) -> int:
    embedded: EmbeddedDatabase | None = None
    if settings.embedded:
        try:
            embedded = await asyncio.to_thread(start_embedded, settings)
        except (EmbeddedPostgresError, psycopg.Error) as exc:
            log.error("could not start the embedded PostgreSQL: %s", exc)
            return 1
        settings = settings.replace(
            database_url=embedded.database_url, embedded_database=True, jwt_secret=embedded.jwt_secret
        )
    if not settings.jwt_secret and not settings.jwks:
        log.error("no JWT secret: set --jwt-secret or REALTIME_JWT_SECRET (or --jwks)")
        return 2
    server = RealtimeServer(settings)
    runner = web.AppRunner(server.app, handle_signals=False, shutdown_timeout=settings.shutdown_timeout_s)
    try:
        await runner.setup()
    except BusRefused as exc:
        log.error("%s", exc)
        await runner.cleanup()
        if embedded is not None:
            await asyncio.to_thread(_stop_embedded, embedded, settings)
        return 2
    site = web.TCPSite(runner, settings.host, settings.port, reuse_address=True)
    try:
        await site.start()
    except OSError as exc:
        log.error("cannot listen on %s:%s: %s", settings.host, settings.port, exc)
        await runner.cleanup()
        if embedded is not None:
            await asyncio.to_thread(_stop_embedded, embedded, settings)
        return 1
    port = runner.addresses[0][1] if runner.addresses else settings.port
    server.listening_on(settings.host, port)
    tune_gc()
    url = f"http://{settings.host}:{port}"
    log.info("listening on %s", url)
    if embedded is not None:
        print(demo_banner(url, embedded.database_url, embedded.jwt_secret), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await runner.cleanup()
    if embedded is not None:
        await asyncio.to_thread(_stop_embedded, embedded, settings)
    return 0


def _stop_embedded(embedded: EmbeddedDatabase, settings: Settings) -> None:
    if settings.ephemeral:
        embedded.cluster.remove()
    else:
        embedded.cluster.stop()


class JsonFormatter(logging.Formatter):
    """One JSON object per line; ``code`` is the reference server's error code when the message has one."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        entry: dict[str, object] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": message,
        }
        head = message.split(":", 1)[0]
        if head.isidentifier() and head[:1].isupper() and ":" in message:
            entry["code"] = head
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    # Tokens travel in query strings (?apikey=) and headers: never write them out.
    handler.addFilter(RedactTokens())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aiohttp's access log is per request; keep it at warning unless debugging.
    logging.getLogger("aiohttp.access").setLevel(logging.DEBUG if level == "debug" else logging.WARNING)


def run_diagnose(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    key = service_key(args.key, args.jwt_secret)
    if key is None:
        parser.error("diagnose needs a service_role key: --key, REALTIME_SERVICE_ROLE_KEY or --jwt-secret")
    urls = args.url
    if not urls and args.database_url:
        try:
            urls = registered_urls(args.database_url)
        except psycopg.Error as exc:
            log.error("cannot read the sidecar registry: %s", exc)
            return 1
        if not urls:
            sys.stdout.write("No live sidecar is registered in this database.\n")
            return 1
    table, status = diagnose(args.topic, urls or [DEFAULT_URL], key)
    sys.stdout.write(table)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "diagnose":
        return run_diagnose(args, parser)
    try:
        settings = Settings.from_args(args, os.environ)
    except ValueError as exc:
        parser.error(str(exc))
    configure_logging(settings.log_level, settings.log_format)
    try:
        import uvloop
    except ImportError:
        return asyncio.run(serve(settings))
    return uvloop.run(serve(settings))


if __name__ == "__main__":
    sys.exit(main())
