"""After the database drops the API's connections (as a PostgreSQL restart does), the API recovers by itself.

Killing our own backends with `pg_terminate_backend` is what a restart looks like from the client
side, without stopping the server other people's tests use. The API runs without pool pre-ping, so
the first request on a dead connection may answer 503 (never 500); the pool is then rebuilt.
"""

from __future__ import annotations

import psycopg
from fastapi.testclient import TestClient

from tests.api.helpers import assert_problem


def test_api_recovers_after_its_connections_are_killed(
    service_settings, api_app, make_tenant, pg_url
) -> None:
    from api.main import create_app

    tenant = make_tenant()
    app = create_app(service_settings.model_copy(update={"auth_cache_ttl_s": 0.0}))
    dsn = pg_url.replace("postgresql+psycopg://", "postgresql://")
    with TestClient(app, raise_server_exceptions=False) as client:
        for _ in range(5):  # fill the pool with live connections
            assert client.get("/v1/jobs", headers=tenant.headers).status_code == 200
        with psycopg.connect(dsn, autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = current_database() AND application_name = 'timemark-api'"
            ).fetchone()[0]
        assert killed >= 1
        statuses = []
        for _ in range(4):
            answer = client.get("/v1/jobs", headers=tenant.headers)
            statuses.append(answer.status_code)
            if answer.status_code == 503:
                assert_problem(answer, 503, "service-unavailable")
                assert answer.headers["retry-after"]
        assert 500 not in statuses and statuses[-1] == 200 and statuses.count(503) <= 1, statuses
    app.state.db_engine.dispose()
    api_app.state.db_engine.dispose()  # the shared app's pooled connections died with the others
