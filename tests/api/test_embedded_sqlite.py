"""The same API on embedded mode's stack: SQLite, kombu's SQLAlchemy transport, a local storage folder."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.api.helpers import assert_problem


@pytest.fixture
def embedded_client(tmp_path) -> Any:
    from alembic import command

    from api.main import create_app
    from core.db import make_engine, make_sessionmaker
    from core.security import create_api_key
    from core.settings import Settings
    from tests.migrations.test_migrations import alembic_config

    settings = Settings(embedded=True, data_dir=tmp_path, url_allow_cidrs=("127.0.0.0/8",))
    command.upgrade(alembic_config(str(settings.database_url)), "head")
    engine = make_engine(settings)
    key = create_api_key(make_sessionmaker(engine)(), "local")
    engine.dispose()
    app = create_app(settings)
    with TestClient(app, raise_server_exceptions=False) as client:
        client.headers["Authorization"] = f"Bearer {key}"
        yield client
    app.state.db_engine.dispose()


def test_submit_poll_list_cancel_on_sqlite(embedded_client, sample_video_path) -> None:
    upload = embedded_client.post(
        "/v1/uploads", content=sample_video_path.read_bytes(), headers={"Content-Type": "video/mp4"}
    )
    assert upload.status_code == 201 and upload.json()["size_bytes"] == sample_video_path.stat().st_size
    source = upload.json()["source"]
    ids = []
    for i in range(3):
        answer = embedded_client.post(
            "/v1/jobs", json={"source": source, "queries": ["a bike"]}, headers={"Idempotency-Key": f"k{i}"}
        )
        assert answer.status_code == 202, answer.text
        ids.append(answer.json()["id"])
    replay = embedded_client.post(
        "/v1/jobs", json={"source": source, "queries": ["a bike"]}, headers={"Idempotency-Key": "k0"}
    )
    assert replay.json()["id"] == ids[0]
    assert_problem(
        embedded_client.post(
            "/v1/jobs", json={"source": source, "queries": ["other"]}, headers={"Idempotency-Key": "k0"}
        ),
        422,
        "idempotency-key-reused",
    )
    first = embedded_client.get("/v1/jobs", params={"page_size": 2}).json()
    second = embedded_client.get(
        "/v1/jobs", params={"page_size": 2, "page_token": first["next_page_token"]}
    ).json()
    assert [j["id"] for j in first["data"] + second["data"]] == list(reversed(ids))
    canceled = embedded_client.post(f"/v1/jobs/{ids[0]}:cancel")
    assert canceled.status_code == 202 and canceled.json()["state"] == "canceled"
    assert embedded_client.get(f"/v1/jobs/{ids[0]}/segments").json()["data"] == []
    assert embedded_client.delete(f"/v1/jobs/{ids[0]}").status_code == 204
    assert embedded_client.get("/readyz").json()["checks"] == {"database": "ok", "broker": "ok"}
    # A local storage folder has no buckets: s3:// sources and batches are refused, not a 500.
    s3_job = embedded_client.post("/v1/jobs", json={"source": "s3://bucket/v.mp4", "queries": ["q"]})
    assert_problem(s3_job, 422, "validation-error")
    batch = embedded_client.post("/v1/batches", json={"source": "s3://bucket/p/", "job": {"queries": ["q"]}})
    assert_problem(batch, 422, "validation-error")
