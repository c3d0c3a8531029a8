"""`/v1/uploads`: streamed into S3 (moto) with a size limit, sniffed, scoped to the tenant."""

from __future__ import annotations

import hashlib
import uuid

import httpx
import pytest

from core.models import Upload
from core.storage import open_storage
from tests.api.helpers import assert_problem


def test_upload_streams_to_s3_and_records_checksum(
    api_client, tenant, sample_video_path, service_settings
) -> None:
    data = sample_video_path.read_bytes()

    def pieces():  # chunked request body, as a large upload would arrive
        for start in range(0, len(data), 100_000):
            yield data[start : start + 100_000]

    answer = api_client.post(
        "/v1/uploads",
        params={"filename": "bikes.mp4"},
        content=pieces(),
        headers={**tenant.headers, "Content-Type": "video/mp4"},
    )
    assert answer.status_code == 201, answer.text
    upload = answer.json()
    assert upload["size_bytes"] == len(data) and upload["sha256"] == hashlib.sha256(data).hexdigest()
    assert upload["source"] == f"upload:{upload['id']}" and upload["filename"] == "bikes.mp4"
    fetched = api_client.get(f"/v1/uploads/{upload['id']}", headers=tenant.headers)
    assert fetched.status_code == 200 and fetched.json() == upload
    storage = open_storage(service_settings)
    with api_client.app.state.sessions() as session:
        row = session.get(Upload, uuid.UUID(upload["id"]))
    stored = httpx.get(storage.presigned_url(row.storage_uri))
    assert stored.content == data


def test_upload_over_limit_is_413_and_leaves_nothing(
    service_settings, db_engine, make_tenant, count_rows, sample_video_path
) -> None:
    from fastapi.testclient import TestClient

    from api.main import create_app

    small = service_settings.model_copy(update={"max_upload_bytes": 100_000})
    tenant = make_tenant()
    data = sample_video_path.read_bytes()
    with TestClient(create_app(small), raise_server_exceptions=False) as client:
        declared = client.post(
            "/v1/uploads", content=data, headers={**tenant.headers, "Content-Type": "video/mp4"}
        )
        assert_problem(declared, 413, "payload-too-large")

        def lying():  # no Content-Length: the limit must hold while streaming
            yield data[:60_000]
            yield data[60_000:200_000]

        streamed = client.post(
            "/v1/uploads", content=lying(), headers={**tenant.headers, "Content-Type": "video/mp4"}
        )
        assert_problem(streamed, 413, "payload-too-large")
    assert count_rows(Upload, tenant_id=tenant.tenant_id) == 0
    storage = open_storage(service_settings)
    assert list(storage.list_objects(storage.uri_for(f"uploads/{tenant.tenant_id}/"), max_objects=10)) == []


@pytest.mark.parametrize(
    ("content", "content_type", "status", "slug"),
    [
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 200, "video/mp4", 415, "unsupported-media-type"),
        (b'{"a": 1}' * 20, "application/octet-stream", 415, "unsupported-media-type"),
        (b"", "video/mp4", 415, "unsupported-media-type"),
        (b"\0\0\0\x18ftypmp42" + b"\0" * 100, "application/json", 415, "unsupported-media-type"),
        (
            b"\0\0\0\x18ftypmp42" + b"\0" * 100,
            "multipart/form-data; boundary=x",
            415,
            "unsupported-media-type",
        ),
        (b"\0\0\0\x18ftypmp42" + b"\0" * 100, "", 415, "unsupported-media-type"),
    ],
)
def test_bad_uploads(api_client, tenant, count_rows, content, content_type, status, slug) -> None:
    headers = dict(tenant.headers)
    if content_type:
        headers["Content-Type"] = content_type
    assert_problem(api_client.post("/v1/uploads", content=content, headers=headers), status, slug)
    assert count_rows(Upload, tenant_id=tenant.tenant_id) == 0


def test_upload_needs_auth_and_is_tenant_scoped(api_client, tenant, other_tenant, uploaded_source) -> None:
    assert_problem(api_client.post("/v1/uploads", content=b"x", headers={"Content-Type": "video/mp4"}), 401)
    upload_id = uploaded_source.removeprefix("upload:")
    assert_problem(api_client.get(f"/v1/uploads/{upload_id}", headers=other_tenant.headers), 404)
    assert api_client.get(f"/v1/uploads/{upload_id}", headers=tenant.headers).status_code == 200
