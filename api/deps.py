"""FastAPI dependencies: settings, a database session per request, and the authenticated tenant.

`SessionDep` hands each request its own session from the app's sessionmaker and closes it afterwards;
handlers commit explicitly. The dependencies are `async` (no I/O on the fast path) so that a route
costs one worker-thread hop, its own, instead of one per dependency (a PostgreSQL poll costs none:
`api.poll`). `TenantDep` resolves `Authorization: Bearer <api key>` to a `Principal`.
Verified keys are cached per app for `Settings.auth_cache_ttl_s` (by the key's hash, never the key),
which keeps one database round trip off every poll; a revoked key stops working within that time.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from core.problems import Kinds, Problem
from core.security import authenticate, hash_api_key
from core.settings import Settings


def _query_names(dependant: Any) -> set[str]:
    """Query parameter names of a route's dependant and of every dependency under it."""
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def reject_unknown_query(request: Request) -> None:
    """Unknown query parameters are a 422, as unknown body fields are: a typo such as `?pagesize=5`
    would otherwise be ignored and the client would never learn why its page has 50 rows."""
    dependant = getattr(request.scope.get("route"), "dependant", None)
    if dependant is None or not request.query_params:
        return  # polls carry no query string: nothing is computed for them
    known = _query_names(dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        accepted = ", ".join(sorted(known)) or "none"
        raise Problem(
            Kinds.VALIDATION,
            f"unknown query parameter(s): {', '.join(unknown)[:200]} (accepted: {accepted})",
            errors=[{"loc": ["query", name], "msg": "unknown query parameter", "type": "extra_forbidden"}
                    for name in unknown[:50]],
        )  # fmt: skip


async def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def get_storage(request: Request) -> Any:
    return request.app.state.storage


StorageDep = Annotated[Any, Depends(get_storage)]


async def get_db(request: Request) -> AsyncIterator[Session]:
    # Async so FastAPI does not spend a thread hop on it: making a Session does no I/O (the
    # connection is taken on first use, inside the route's worker thread).
    session: Session = request.app.state.sessions()
    try:
        yield session
    finally:
        if session.in_transaction():
            await run_in_threadpool(session.close)
        else:
            session.close()


SessionDep = Annotated[Session, Depends(get_db)]


async def get_read_db(request: Request) -> AsyncIterator[Session]:
    # Autocommit: a read is one round trip, with no BEGIN before it and no ROLLBACK after it.
    session: Session = request.app.state.read_sessions()
    try:
        yield session
    finally:
        session.close()


ReadSessionDep = Annotated[Session, Depends(get_read_db)]


@dataclass(frozen=True)
class Principal:
    """Who is calling: the tenant every row the request touches must belong to."""

    tenant_id: uuid.UUID
    tenant_name: str
    api_key_id: uuid.UUID
    max_active_jobs: int | None


class AuthCache:
    """key hash → (Principal, expiry); bounded, thread-safe, owned by one app."""

    def __init__(self, ttl_s: float, max_entries: int = 10_000) -> None:
        self._ttl_s, self._max = ttl_s, max_entries
        self._entries: dict[str, tuple[Principal, float]] = {}
        self._lock = threading.Lock()

    def get(self, key_hash: str) -> Principal | None:
        with self._lock:
            hit = self._entries.get(key_hash)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def put(self, key_hash: str, principal: Principal) -> None:
        if self._ttl_s <= 0:
            return
        with self._lock:
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[key_hash] = (principal, time.monotonic() + self._ttl_s)


bearer_scheme = HTTPBearer(auto_error=False, description="An API key made by `timemark apikey create`")


async def get_principal(
    request: Request,
    session: ReadSessionDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    unauthorized = Problem(Kinds.UNAUTHORIZED, headers={"WWW-Authenticate": 'Bearer realm="timemark"'})
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise unauthorized
    cache: AuthCache = request.app.state.auth_cache
    key_hash = hash_api_key(credentials.credentials)
    principal = cache.get(key_hash)
    if principal is not None:
        return principal
    row = await run_in_threadpool(authenticate, session, credentials.credentials)
    if row is None:
        raise unauthorized
    principal = Principal(row.tenant_id, row.tenant.name, row.id, row.tenant.max_active_jobs)
    cache.put(key_hash, principal)
    return principal


TenantDep = Annotated[Principal, Depends(get_principal)]
