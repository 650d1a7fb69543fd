"""What the tests and the benchmarks share: tokens, databases, servers, frames and Node drivers.

``tests/`` imports it as ``tests.harness``; ``python -m bench`` (run from the repository root)
imports the same package. Nothing in it asserts anything about the product: it only starts,
prepares and decodes, so that a test and a benchmark of the same thing do it the same way.
"""

from __future__ import annotations

from .database import prepare_database, scalar, with_dbname
from .frames import Kind4, parse_kind4, payload_offset
from .servers import (
    TEST_JWT_SECRET,
    WEBSOCKET_PATH,
    Endpoint,
    LiveServer,
    ServerExited,
    ServerProcess,
    pg_realtime_command,
    serve_in_process,
    server_process,
    server_settings,
)
from .tokens import mint_token

__all__ = [
    "TEST_JWT_SECRET",
    "WEBSOCKET_PATH",
    "Endpoint",
    "Kind4",
    "LiveServer",
    "ServerExited",
    "ServerProcess",
    "mint_token",
    "parse_kind4",
    "payload_offset",
    "pg_realtime_command",
    "prepare_database",
    "scalar",
    "serve_in_process",
    "server_process",
    "server_settings",
    "with_dbname",
]
