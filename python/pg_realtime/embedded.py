"""A private PostgreSQL cluster in a data directory: initdb, start, stop.

Used by `pg-realtime serve` when no database URL is given and by the test suite.
PostgreSQL refuses to run as root, so when this process is root the cluster's
files belong to the ``postgres`` OS user and every server command runs as that
user through ``runuser``.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

SERVER_OS_USER = "postgres"


class EmbeddedPostgresError(RuntimeError):
    """The embedded cluster could not be created, started or stopped."""


def pg_bindir() -> Path:
    """The directory of initdb, pg_ctl and postgres (from ``pg_config``)."""
    override = os.environ.get("PG_BINDIR")
    if override:
        return Path(override)
    pg_config = shutil.which("pg_config")
    if pg_config is None:
        raise EmbeddedPostgresError("pg_config not found: install PostgreSQL (postgresql-15)")
    out = subprocess.run([pg_config, "--bindir"], check=True, capture_output=True, text=True)
    bindir = Path(out.stdout.strip())
    # Debian's /usr/bin/pg_config belongs to the client package and points at /usr/bin,
    # where initdb does not live; the server binaries sit in /usr/lib/postgresql/<major>/bin.
    if not (bindir / "initdb").exists():
        candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
        if candidates:
            bindir = candidates[0].parent
    return bindir


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on ``host``."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _running_as_root() -> bool:
    return os.geteuid() == 0


@dataclass
class EmbeddedPostgres:
    """One PostgreSQL cluster owned by this process (or by ``postgres`` when we are root)."""

    data_dir: Path
    port: int = 0
    host: str = "127.0.0.1"
    superuser: str = "postgres"
    #: Durability off: for throwaway clusters (tests), where speed matters and a crash loses nothing.
    fast: bool = False
    settings: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).absolute()
        self._bindir = pg_bindir()

    # -- paths -----------------------------------------------------------------------------
    @property
    def pgdata(self) -> Path:
        return self.data_dir / "pgdata"

    @property
    def socket_dir(self) -> Path:
        return self.data_dir / "run"

    @property
    def logfile(self) -> Path:
        return self.data_dir / "postgres.log"

    @property
    def port_file(self) -> Path:
        return self.data_dir / "port"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.superuser}@{self.host}:{self.port}/{dbname}"

    # -- running commands as the right user ------------------------------------------------
    def _as_server_user(self, argv: list[str]) -> list[str]:
        if _running_as_root():
            runuser = shutil.which("runuser") or "/usr/sbin/runuser"
            return [runuser, "-u", SERVER_OS_USER, "--", *argv]
        return argv

    def _run(self, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            self._as_server_user(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd="/",  # the server user may not be able to enter our working directory
            check=False,
        )
        if result.returncode != 0:
            output = result.stderr.strip() or result.stdout.strip()
            raise EmbeddedPostgresError(f"{Path(argv[0]).name} failed ({result.returncode}): {output}")
        return result

    def _chown_to_server_user(self, path: Path) -> None:
        if _running_as_root():
            entry = pwd.getpwnam(SERVER_OS_USER)
            os.chown(path, entry.pw_uid, entry.pw_gid)
            for root, dirs, files in os.walk(path):
                os.chown(root, entry.pw_uid, entry.pw_gid)
                for name in dirs + files:
                    os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def initialized(self) -> bool:
        return (self.pgdata / "PG_VERSION").exists()

    def _prepare_dirs(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if _running_as_root():
            # The server user must be able to reach its data directory through ours.
            self.data_dir.chmod(0o755)
            for parent in self.data_dir.parents:
                if parent == Path("/"):
                    break
                mode = parent.stat().st_mode
                if not mode & 0o001:
                    parent.chmod(mode | 0o001)
        self.socket_dir.mkdir(exist_ok=True)
        self._chown_to_server_user(self.socket_dir)

    def init(self) -> None:
        """initdb the cluster if the data directory holds none yet."""
        self._prepare_dirs()
        if self.initialized:
            return
        self.pgdata.mkdir(exist_ok=True)
        self._chown_to_server_user(self.pgdata)
        argv = [
            str(self._bindir / "initdb"),
            "-D",
            str(self.pgdata),
            "-U",
            self.superuser,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
        ]
        if self.fast:
            argv.append("--no-sync")
        self._run(argv)

    def start(self) -> str:
        """Start the server (initdb first if needed); return the superuser's DSN."""
        self.init()
        if not self.port:
            previous = self.port_file.read_text().strip() if self.port_file.exists() else ""
            self.port = int(previous) if previous.isdigit() else free_port(self.host)
        options = {
            "port": str(self.port),
            "listen_addresses": self.host,
            # A Unix socket path holds at most 107 bytes; a deeper data directory gets TCP only.
            "unix_socket_directories": str(self.socket_dir)
            if len(str(self.socket_dir / ".s.PGSQL.65535")) <= 107
            else "''",
            "max_connections": "200",
            "timezone": "UTC",
        }
        if self.fast:
            options.update({"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"})
        options.update(self.settings)
        opts = " ".join(f"-c {key}={value}" for key, value in options.items())
        self.logfile.touch()
        self._chown_to_server_user(self.logfile)
        self._run(
            [
                str(self._bindir / "pg_ctl"),
                "-D",
                str(self.pgdata),
                "-l",
                str(self.logfile),
                "-o",
                opts,
                "-w",
                "-t",
                "60",
                "start",
            ]
        )
        self.port_file.write_text(f"{self.port}\n")
        self._wait_ready()
        return self.dsn()

    def _wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection((self.host, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise EmbeddedPostgresError(f"PostgreSQL did not accept connections on {self.host}:{self.port}")

    def replica(self, data_dir: Path) -> EmbeddedPostgres:
        """A streaming replica of this running cluster in ``data_dir`` (a base backup, not started).

        ``pg_basebackup -R`` writes standby.signal and primary_conninfo, so the copy starts as a
        hot standby that follows this cluster until it is promoted.
        """
        standby = EmbeddedPostgres(data_dir, host=self.host, superuser=self.superuser, fast=self.fast)
        standby.settings = dict(self.settings)
        standby._prepare_dirs()
        # pg_basebackup fills an empty directory; it needs one that the server user owns.
        standby.pgdata.mkdir(mode=0o700, exist_ok=True)
        standby._chown_to_server_user(standby.pgdata)
        argv = [
            str(self._bindir / "pg_basebackup"),
            "-D",
            str(standby.pgdata),
            "-h",
            self.host,
            "-p",
            str(self.port),
            "-U",
            self.superuser,
            "-R",
            "-X",
            "stream",
            "-c",
            "fast",
        ]
        if self.fast:
            argv.append("--no-sync")
        self._run(argv)
        return standby

    def promote(self) -> None:
        """End recovery on a standby: it becomes a primary on a new timeline."""
        self._run([str(self._bindir / "pg_ctl"), "-D", str(self.pgdata), "-w", "-t", "60", "promote"])

    @property
    def running(self) -> bool:
        return (self.pgdata / "postmaster.pid").exists()

    def stop(self, mode: str = "fast") -> None:
        """Stop the server if it runs; ``mode`` is pg_ctl's (smart, fast, immediate)."""
        if not self.running:
            return
        self._run([str(self._bindir / "pg_ctl"), "-D", str(self.pgdata), "-m", mode, "-w", "stop"])

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def remove(self) -> None:
        """Stop the server and delete the whole data directory."""
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.data_dir, ignore_errors=True)
