"""Settings from the environment and flags; the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from pg_realtime.cli import build_parser
from pg_realtime.config import Settings


def test_defaults_bind_to_loopback_with_limits_off():
    settings = Settings()
    assert (settings.host, settings.port) == ("127.0.0.1", 4000)
    assert settings.max_connections == 0
    assert settings.max_events_per_second == 0
    assert settings.max_joins_per_second == 0
    assert settings.max_payload_bytes == 3_000_000
    assert settings.embedded


def test_environment_then_flags_win():
    env = {"REALTIME_PORT": "5000", "DATABASE_URL": "postgresql://x/y", "REALTIME_EPHEMERAL": "yes"}
    from_env = Settings.from_env(env)
    assert from_env.port == 5000 and from_env.database_url == "postgresql://x/y" and from_env.ephemeral
    args = build_parser().parse_args(["serve", "--port", "6000", "--no-ephemeral", "--data-dir", "/tmp/d"])
    merged = Settings.from_args(args, env)
    assert merged.port == 6000 and not merged.ephemeral and merged.data_dir == Path("/tmp/d")
    assert merged.database_url == "postgresql://x/y"


@pytest.mark.parametrize(
    "env",
    [
        {"REALTIME_PORT": "http"},
        {"REALTIME_PORT": "70000"},
        {"REALTIME_LOG_LEVEL": "loud"},
        {"REALTIME_EPHEMERAL": "maybe"},
    ],
)
def test_bad_values_are_clear_errors(env):
    with pytest.raises(ValueError):
        Settings.from_env(env)


def test_help_documents_every_option():
    out = subprocess.run(
        [sys.executable, "-m", "pg_realtime.cli", "serve", "--help"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for flag in (
        "--database-url",
        "--host",
        "--port",
        "--jwt-secret",
        "--jwks",
        "--log-level",
        "--poll-interval-ms",
    ):
        assert flag in out
    assert "REALTIME_JWT_SECRET" in out and "DATABASE_URL" in out


def test_serve_without_a_secret_refuses_to_start():
    result = subprocess.run(
        [sys.executable, "-m", "pg_realtime.cli", "serve", "--database-url", "postgresql://127.0.0.1:1/x"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 2
    assert "no JWT secret" in result.stderr


def test_bad_flag_value_exits_with_usage_error():
    result = subprocess.run(
        [sys.executable, "-m", "pg_realtime.cli", "serve", "--port", "nope"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 2
    assert "invalid value for port" in result.stderr
