"""The poll read: one job row by id and tenant, through psycopg's async API on the event loop.

Polls are most of a job API's traffic. Through the ORM in a worker thread, about half of a poll's API
CPU went to compiling and loading the ORM statement and to the thread hop (py-spy, `BENCHMARKS.md`);
here a poll is one prepared statement on a pooled async connection. PostgreSQL only: on SQLite (the
embedded default) `PollReader.open` returns None and the route keeps the ORM path.
"""

from __future__ import annotations

import asyncio
import uuid
from types import SimpleNamespace
from typing import Any

import psycopg
from psycopg.rows import dict_row
from sqlalchemy import make_url

from core.settings import Settings

# The columns `api.views.job_view` reads, named as the ORM attributes it reads them by.
JOB_COLUMNS = (
    "id, state, stage, chunks_done, chunks_total, error, source, task, queries, sampling, strategy, "
    "webhook_url, metadata AS meta, client_ref, batch_id, attempts, video_seconds, tokens, gpu_seconds, "
    "created_at, updated_at, started_at, finished_at"
)
JOB_BY_ID = f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = %s AND tenant_id = %s"


class DatabaseUnavailable(Exception):
    """The poll could not reach PostgreSQL (answered 503 like the ORM path's outages)."""


class PollReader:
    """At most `size` async connections, opened on demand and reused; a broken one is dropped."""

    def __init__(self, conninfo: str, size: int, connect_kwargs: dict[str, Any]):
        self.conninfo, self.connect_kwargs = conninfo, connect_kwargs
        self.idle: list[psycopg.AsyncConnection] = []
        self.slots = asyncio.Semaphore(size)

    @classmethod
    def open(cls, settings: Settings) -> PollReader | None:
        url = make_url(str(settings.database_url))
        if url.get_backend_name() != "postgresql":
            return None
        kwargs: dict[str, Any] = {"connect_timeout": 5, "application_name": "timemark-api-poll"}
        if settings.db_statement_timeout_ms:
            kwargs["options"] = f"-c statement_timeout={settings.db_statement_timeout_ms}"
        conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        return cls(conninfo, settings.db_pool_size, kwargs)

    async def job(self, job_id: uuid.UUID, tenant_id: uuid.UUID) -> SimpleNamespace | None:
        async with self.slots:
            row = await self._fetch_one(job_id, tenant_id)
        return SimpleNamespace(**row) if row is not None else None

    async def _fetch_one(self, *params: Any) -> dict[str, Any] | None:
        """A failure on a reused connection retries once on a fresh one: after a database restart every
        idle connection is dead, and a read is safe to repeat. A fresh connection's failure is an outage."""
        while True:
            reused = bool(self.idle)
            try:
                conn = self.idle.pop() if reused else await self._connect()
            except psycopg.OperationalError as exc:
                raise DatabaseUnavailable(str(exc)) from exc
            try:
                cursor = await conn.execute(JOB_BY_ID, params, prepare=True)
                row = await cursor.fetchone()
            except psycopg.Error as exc:
                await conn.close()
                if not isinstance(exc, psycopg.OperationalError):
                    raise
                if reused:
                    await self.close()  # its siblings are as old: drop them too, and retry fresh
                    continue
                raise DatabaseUnavailable(str(exc)) from exc
            self.idle.append(conn)
            return row

    async def _connect(self) -> psycopg.AsyncConnection:
        return await psycopg.AsyncConnection.connect(
            self.conninfo, autocommit=True, row_factory=dict_row, **self.connect_kwargs
        )

    async def close(self) -> None:
        while self.idle:
            await self.idle.pop().close()
