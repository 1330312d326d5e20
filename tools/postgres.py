"""A throwaway PostgreSQL server from the installed binaries (tests and ``fpnlink bench store``).

``initdb`` a cluster in a temporary folder and run ``postgres`` on a loopback port with trust
authentication. PostgreSQL refuses to run as root, so as root the server runs as the ``postgres`` system
user (``runuser``). Binaries come from ``$FPNLINK_POSTGRES_BIN``, ``pg_config --bindir`` or
``/usr/lib/postgresql/15/bin``.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

DEFAULT_BIN_DIRS = (Path("/usr/lib/postgresql/15/bin"),)
SERVICE_USER = "postgres"
DATABASE_USER = "fpnlink"
START_TIMEOUT_S = 60


def postgres_bin_dir() -> Path:
    """Where ``initdb``, ``pg_ctl`` and ``postgres`` are; FileNotFoundError naming the fix when nowhere."""
    candidates = [Path(p) for p in [os.environ.get("FPNLINK_POSTGRES_BIN")] if p]
    pg_config = shutil.which("pg_config")
    if pg_config:
        candidates.append(Path(subprocess.run([pg_config, "--bindir"], capture_output=True, text=True).stdout.strip()))
    candidates.extend(DEFAULT_BIN_DIRS)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory
    raise FileNotFoundError(f"no PostgreSQL server binaries (initdb, pg_ctl) in {[str(c) for c in candidates]}: "
                            f"apt-get install postgresql-15, or set FPNLINK_POSTGRES_BIN")


class TemporaryPostgres:
    """One PostgreSQL cluster in a temporary folder, deleted by :meth:`close`.

    Args:
        fsync: keep PostgreSQL's durable commits (off makes tests faster; benchmarks keep it on).
    """

    def __init__(self, *, fsync: bool = True) -> None:
        self.bin_dir = postgres_bin_dir()
        self.fsync = fsync
        self.root = Path(tempfile.mkdtemp(prefix="fpnlink-pg-"))
        self.data_dir = self.root / "data"
        self.log_file = self.root / "server.log"
        self.port = _free_port()
        self._as_service_user = os.geteuid() == 0
        if self._as_service_user:
            entry = pwd.getpwnam(SERVICE_USER)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        os.chmod(self.root, 0o700)
        self._run("initdb", "-D", str(self.data_dir), "-U", DATABASE_USER, "--auth=trust", "--no-sync",
                  "-E", "UTF8", "--locale=C")

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the cluster's ``postgres`` database (psycopg 3)."""
        return f"postgresql+psycopg://{DATABASE_USER}@127.0.0.1:{self.port}/postgres"

    def start(self) -> TemporaryPostgres:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync={'on' if self.fsync else 'off'}"
        self._run("pg_ctl", "-D", str(self.data_dir), "-o", options, "-l", str(self.log_file), "-w",
                  "-t", str(START_TIMEOUT_S), "start")
        return self

    def stop(self) -> None:
        """Stop the server (fast shutdown); the cluster stays for :meth:`start`."""
        if (self.data_dir / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "fast", "-w", "stop")

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> TemporaryPostgres:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @contextlib.contextmanager
    def scratch_database(self, name: str) -> Iterator[str]:
        """Create database ``name`` on this server, yield its URL, and drop it (connections included) after."""
        import sqlalchemy as sa

        admin = sa.create_engine(self.url, isolation_level="AUTOCOMMIT", poolclass=sa.pool.NullPool)
        with admin.connect() as connection:
            connection.execute(sa.text(f"CREATE DATABASE {name}"))
        try:
            yield self.url.rsplit("/", 1)[0] + f"/{name}"
        finally:
            with admin.connect() as connection:
                connection.execute(sa.text(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            admin.dispose()

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bin_dir / program), *args]
        if self._as_service_user:
            command = ["runuser", "-u", SERVICE_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.root)
        if done.returncode != 0:
            log = self.log_file.read_text()[-2000:] if self.log_file.exists() else ""
            raise RuntimeError(f"{program} failed ({done.returncode}): {done.stderr.strip()}\n{log}")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
