"""Fixtures for the API tests: a tenant per test, a real video uploaded or put on S3, row counting."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import func, select

from tests.conftest import s3_client


@pytest.fixture
def tenant(make_tenant: Any) -> Any:
    return make_tenant()


@pytest.fixture
def other_tenant(make_tenant: Any) -> Any:
    return make_tenant()


@pytest.fixture
def uploaded_source(api_client: Any, tenant: Any, sample_video_path: Any) -> str:
    """`upload:<id>` of the sample video, uploaded through the API by `tenant`."""
    answer = api_client.post(
        "/v1/uploads?filename=bikes.mp4",
        content=sample_video_path.read_bytes(),
        headers={**tenant.headers, "Content-Type": "video/mp4"},
    )
    assert answer.status_code == 201, answer.text
    return answer.json()["source"]


@pytest.fixture
def s3_video(s3_endpoint: str, s3_bucket: str, sample_video_path: Any) -> str:
    key = f"inbox/{uuid.uuid4().hex}.mp4"
    s3_client(s3_endpoint).put_object(Bucket=s3_bucket, Key=key, Body=sample_video_path.read_bytes())
    return f"s3://{s3_bucket}/{key}"


@pytest.fixture
def count_rows(session_factory: Any) -> Any:
    """`count_rows(Model, **filters)` → rows in the table now (fresh session each call)."""

    def count(model: Any, **filters: Any) -> int:
        with session_factory() as session:
            statement = select(func.count()).select_from(model)
            for name, value in filters.items():
                statement = statement.where(getattr(model, name) == value)
            return int(session.scalar(statement))

    return count
