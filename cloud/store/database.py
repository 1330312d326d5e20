"""Opening the results database: URL rules, SQLite pragmas (WAL), and Alembic migrations to the head revision.

URLs: ``sqlite:///PATH`` (the parent folder is created on first start) or ``postgresql://...`` (the psycopg 3
driver is selected for ``postgresql://`` and ``postgres://``). Any other scheme is refused.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import URL, make_url

MIGRATIONS = Path(__file__).with_name("migrations")


def normalize_url(url: str) -> URL:
    """The SQLAlchemy URL of ``url``; ``ValueError`` naming the accepted forms for anything else."""
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise ValueError(f"database URL {url!r} does not parse: {exc}") from exc
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ValueError(f"database URL {url!r}: SQLite needs a file path, e.g. sqlite:///var/fpnlink.db")
        return parsed
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername="postgresql+psycopg")
    raise ValueError(f"database URL {url!r}: use sqlite:///PATH or postgresql://USER@HOST:PORT/DB")


def sqlite_url(path: Path) -> str:
    """``sqlite:///`` URL of a file path."""
    return f"sqlite:///{path}"


def connect(url: str, timeout_s: float = 5.0) -> sa.Engine:
    """A pooled engine for ``url``; nothing is connected yet (connections open on first use).

    Args:
        url: ``sqlite:///PATH`` or ``postgresql://...``.
        timeout_s: connect timeout (PostgreSQL), or how long a write waits for another writer's lock (SQLite).
    """
    parsed = normalize_url(url)
    if parsed.get_backend_name() == "sqlite":
        Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(parsed, connect_args={"timeout": timeout_s, "check_same_thread": False})
        sa.event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    return sa.create_engine(parsed, pool_pre_ping=True, connect_args={"connect_timeout": max(1, int(timeout_s))})


def _sqlite_pragmas(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def migrate(engine: sa.Engine, revision: str = "head") -> None:
    """Upgrade the database to ``revision`` with the Alembic scripts in ``migrations/``."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def current_revision(engine: sa.Engine) -> str | None:
    """The Alembic revision the database is at (None before the first migration)."""
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()
