"""SQLAlchemy engine and session factory built from `Settings`, for PostgreSQL (psycopg 3) and SQLite.

The API and the workers each build one engine per process with `make_engine(settings)` and one
`sessionmaker` with `make_sessionmaker(engine)`; nothing here is a module-level singleton. SQLite
(embedded mode) gets WAL, a busy timeout and enforced foreign keys, so the API and a worker process
can share the file. `is_unavailable_error` tells "the database is down" (answer 503, retry) from
programming errors (a bug: let it surface).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from sqlalchemy.orm import Session, sessionmaker

from core.settings import Settings


def make_engine(settings: Settings, *, application_name: str = "timemark", **overrides: Any) -> Engine:
    """One pooled engine for the configured database; `overrides` go to `create_engine`.

    `application_name` shows in `pg_stat_activity`, so operators see which part holds connections.
    """
    url = make_url(str(settings.database_url))
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        options: dict[str, Any] = {"connect_args": {"check_same_thread": False, "timeout": 30}}
        options.update(overrides)
        engine = create_engine(url, **options)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args: dict[str, Any] = {"connect_timeout": 5, "application_name": application_name}
    if settings.db_statement_timeout_ms:
        connect_args["options"] = f"-c statement_timeout={settings.db_statement_timeout_ms}"
    options = {
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_max_overflow,
        "pool_pre_ping": True,  # a restarted PostgreSQL leaves dead pooled connections behind
        "pool_timeout": 10,
        "connect_args": connect_args,
    }
    options.update(overrides)
    return create_engine(url, **options)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: API handlers serialise rows after committing them.
    return sessionmaker(engine, expire_on_commit=False, autoflush=False)


@contextmanager
def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session that commits on success and rolls back on any exception."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def is_unavailable_error(exc: BaseException) -> bool:
    """True when `exc` means the database cannot be reached right now (answer 503, retry later)."""
    if isinstance(exc, OperationalError | DisconnectionError | PoolTimeoutError):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated
