"""Every bad request is a 4xx problem document, never a 500, and leaves no row behind (issue 2 + 9)."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from core.models import Job, Upload
from tests.api.helpers import assert_problem
from tests.conftest import s3_client

GOOD = {"source": "http://127.0.0.1:9/v.mp4", "queries": ["when does the door open?"]}


def with_(**changes: Any) -> dict:
    body = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if value is ...:
            body.pop(key, None)
        else:
            body[key] = value
    return body


BAD_JSON_BODIES = [
    pytest.param(with_(colour="red"), 422, "validation-error", id="unknown-field"),
    pytest.param(
        with_(sampling={"fps": 2, "turbo": True}), 422, "validation-error", id="unknown-nested-field"
    ),
    pytest.param(with_(source=...), 422, "validation-error", id="missing-source"),
    pytest.param(with_(queries=...), 422, "validation-error", id="missing-queries"),
    pytest.param(with_(queries=[]), 422, "validation-error", id="no-queries"),
    pytest.param(with_(queries=[""]), 422, "validation-error", id="empty-query"),
    pytest.param(with_(queries=["   "]), 422, "validation-error", id="blank-query"),
    pytest.param(with_(queries=["q"] * 33), 422, "validation-error", id="33-queries"),
    pytest.param(with_(queries=["q"] * 10_000), 422, "validation-error", id="10000-queries"),
    pytest.param(with_(queries=["x" * 1001]), 422, "validation-error", id="long-query"),
    pytest.param(with_(queries="when?"), 422, "validation-error", id="queries-not-list"),
    pytest.param(with_(queries=[1, 2]), 422, "validation-error", id="queries-not-strings"),
    pytest.param(with_(task="qa"), 422, "validation-error", id="unknown-task"),
    pytest.param(with_(strategy="fastest"), 422, "validation-error", id="unknown-strategy"),
    pytest.param(with_(source="ftp://example.com/v.mp4"), 422, "validation-error", id="ftp-scheme"),
    pytest.param(with_(source="file:///etc/passwd"), 422, "validation-error", id="file-scheme"),
    pytest.param(with_(source="javascript:alert(1)"), 422, "validation-error", id="js-scheme"),
    pytest.param(with_(source="just words"), 422, "validation-error", id="not-a-url"),
    pytest.param(with_(source="s3://NoSuch_Bucket/key"), 422, "validation-error", id="bad-bucket-name"),
    pytest.param(with_(source="upload:123"), 422, "validation-error", id="bad-upload-id"),
    pytest.param(with_(source=f"upload:{uuid.uuid4()}"), 422, "source-not-found", id="unknown-upload"),
    pytest.param(
        with_(source="http://169.254.169.254/latest/meta-data/"), 422, "unsafe-url", id="metadata-ip"
    ),
    pytest.param(with_(source="http://[::ffff:169.254.169.254]/x"), 422, "unsafe-url", id="mapped-metadata"),
    pytest.param(with_(source="http://10.0.0.7/v.mp4"), 422, "unsafe-url", id="private-ip"),
    pytest.param(with_(source="http://[::1]:80/v.mp4"), 422, "unsafe-url", id="ipv6-loopback"),
    pytest.param(with_(source="https://user:pw@127.0.0.1/v.mp4"), 422, "unsafe-url", id="credentials"),
    pytest.param(with_(source="https://no-such-host.invalid/v.mp4"), 422, "unsafe-url", id="unresolvable"),
    pytest.param(with_(source="https://x/" + "a" * 2100), 422, "validation-error", id="url-too-long"),
    pytest.param(with_(webhook={"url": "http://169.254.169.254/"}), 422, "unsafe-url", id="webhook-metadata"),
    pytest.param(with_(webhook={"url": "gopher://127.0.0.1/"}), 422, "validation-error", id="webhook-scheme"),
    pytest.param(
        with_(webhook={"url": "http://127.0.0.1/", "secret": "hunter2"}),
        422,
        "validation-error",
        id="webhook-bad-secret",
    ),
    pytest.param(with_(sampling={"fps": 0}), 422, "validation-error", id="fps-zero"),
    pytest.param(with_(sampling={"fps": -2}), 422, "validation-error", id="fps-negative"),
    pytest.param(with_(sampling={"fps": "fast"}), 422, "validation-error", id="fps-string"),
    pytest.param(with_(sampling={"min_pixels": 10}), 422, "validation-error", id="tiny-pixels"),
    pytest.param(
        with_(sampling={"min_pixels": 300_000, "max_pixels": 200_000}),
        422,
        "validation-error",
        id="min-over-max-pixels",
    ),
    pytest.param(
        with_(sampling={"min_frames": 50, "max_frames": 10}),
        422,
        "validation-error",
        id="min-over-max-frames",
    ),
    pytest.param(with_(metadata={"blob": "x" * 20_000}), 422, "validation-error", id="metadata-too-big"),
    pytest.param(
        with_(metadata={"a": {"b": {"c": {"d": {"e": {"f": {"g": {"h": {"i": 1}}}}}}}}}),
        422,
        "validation-error",
        id="metadata-too-deep",
    ),
    pytest.param(with_(metadata=[1, 2]), 422, "validation-error", id="metadata-not-object"),
    pytest.param(with_(client_ref="r" * 201), 422, "validation-error", id="client-ref-long"),
    pytest.param([GOOD], 422, "validation-error", id="array-body"),
    pytest.param("just a string", 422, "validation-error", id="string-body"),
    pytest.param(None, 422, "validation-error", id="null-body"),
]


@pytest.mark.parametrize(("body", "status", "slug"), BAD_JSON_BODIES)
def test_bad_job_bodies(api_client, tenant, count_rows, body, status, slug) -> None:
    answer = api_client.post("/v1/jobs", json=body, headers=tenant.headers)
    problem = assert_problem(answer, status, slug)
    assert all("input" not in error for error in problem.get("errors", []))  # never echo the input back
    assert count_rows(Job, tenant_id=tenant.tenant_id) == 0


RAW_BODIES = [
    pytest.param(b'\xff\xfe{"source": 1}', "application/json", 400, "invalid-utf8", id="invalid-utf8"),
    pytest.param(
        b'{"source": "http://127.0.0.1/\xc3\x28", "queries": ["q"]}',
        "application/json",
        400,
        "invalid-utf8",
        id="invalid-utf8-in-string",
    ),
    pytest.param(
        b'{"source": "http://127.0.0.1:9/v.mp4", "queries": ["\\ud800"]}',
        "application/json",
        400,
        "invalid-utf8",
        id="lone-surrogate",
    ),
    pytest.param(b'{"source": ', "application/json", 400, "malformed-json", id="truncated-json"),
    pytest.param(b"{'source': 'x'}", "application/json", 400, "malformed-json", id="single-quotes"),
    pytest.param(
        b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "malformed-json", id="deep-nesting"
    ),
    pytest.param(
        b"[" * 600_000 + b"]" * 600_000, "application/json", 413, "payload-too-large", id="huge-body"
    ),
    pytest.param(json.dumps(GOOD).encode(), "text/plain", 415, "unsupported-media-type", id="text-plain"),
    pytest.param(
        json.dumps(GOOD).encode(),
        "application/x-www-form-urlencoded",
        415,
        "unsupported-media-type",
        id="form",
    ),
    pytest.param(json.dumps(GOOD).encode(), "", 415, "unsupported-media-type", id="no-content-type"),
    pytest.param(b"", "application/json", 422, "validation-error", id="empty-body"),
    pytest.param(
        b'{"source": "http://127.0.0.1:9/v.mp4", "queries": ["q"], "metadata": {"x": NaN}}',
        "application/json",
        400,
        "malformed-json",
        id="nan-literal",
    ),
    pytest.param(
        b'{"source": "http://127.0.0.1:9/v.mp4", "queries": ["q"], "sampling": {"fps": Infinity}}',
        "application/json",
        400,
        "malformed-json",
        id="infinity-literal",
    ),
    pytest.param(
        b'{"source": "http://127.0.0.1:9/v.mp4", "queries": ["a\\u0000b"]}',
        "application/json",
        422,
        "validation-error",
        id="nul-in-query",
    ),
    pytest.param(
        b'{"source": "http://127.0.0.1:9/\\u0000.mp4", "queries": ["q"]}',
        "application/json",
        422,
        "validation-error",
        id="nul-in-source",
    ),
]


@pytest.mark.parametrize(("raw", "content_type", "status", "slug"), RAW_BODIES)
def test_bad_raw_bodies(api_client, tenant, count_rows, raw, content_type, status, slug) -> None:
    headers = {**tenant.headers, "Content-Type": content_type} if content_type else dict(tenant.headers)
    answer = api_client.post("/v1/jobs", content=raw, headers=headers)
    assert_problem(answer, status, slug)
    assert count_rows(Job, tenant_id=tenant.tenant_id) == 0


def test_body_over_limit_refused_even_when_content_length_lies(api_client, tenant) -> None:
    def chunks():  # chunked transfer: no Content-Length to trust
        yield b'{"source": "http://127.0.0.1:9/v.mp4", "queries": ["'
        for _ in range(40):
            yield b"x" * 65_536
        yield b'"]}'

    headers = {**tenant.headers, "Content-Type": "application/json"}
    assert_problem(api_client.post("/v1/jobs", content=chunks(), headers=headers), 413, "payload-too-large")


def test_missing_and_non_video_s3_objects(api_client, tenant, s3_endpoint, s3_bucket, count_rows) -> None:
    client = s3_client(s3_endpoint)
    client.put_object(Bucket=s3_bucket, Key="docs/readme.mp4", Body=b"This is a text file, not a video.\n")
    client.put_object(Bucket=s3_bucket, Key="docs/empty.mp4", Body=b"")
    client.put_object(Bucket=s3_bucket, Key="docs/pic.mp4", Body=b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    cases = [
        (f"s3://{s3_bucket}/docs/missing.mp4", "source-not-found"),
        (f"s3://no-such-bucket-{uuid.uuid4().hex[:6]}/v.mp4", "source-not-found"),
        (f"s3://{s3_bucket}/docs/readme.mp4", "source-not-video"),
        (f"s3://{s3_bucket}/docs/empty.mp4", "source-not-video"),
        (f"s3://{s3_bucket}/docs/pic.mp4", "source-not-video"),
    ]
    for source, slug in cases:
        answer = api_client.post("/v1/jobs", json=with_(source=source), headers=tenant.headers)
        assert_problem(answer, 422, slug)
    assert count_rows(Job, tenant_id=tenant.tenant_id) == 0


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/v1/jobs/not-a-uuid"),
        ("GET", f"/v1/jobs/{uuid.uuid4()}"),
        ("GET", f"/v1/jobs/{uuid.uuid4()}/segments"),
        ("POST", f"/v1/jobs/{uuid.uuid4()}:cancel"),
        ("POST", "/v1/jobs/%ZZ:cancel"),
        ("DELETE", f"/v1/jobs/{uuid.uuid4()}"),
        ("GET", f"/v1/uploads/{uuid.uuid4()}"),
        ("GET", f"/v1/batches/{uuid.uuid4()}"),
        ("GET", f"/v1/deliveries/{uuid.uuid4()}"),
        ("POST", f"/v1/deliveries/{uuid.uuid4()}:redeliver"),
        ("GET", "/v2/anything"),
    ],
)
def test_unknown_resources_are_404_problems(api_client, tenant, method, path) -> None:
    assert_problem(api_client.request(method, path, headers=tenant.headers), 404, "not-found")


@pytest.mark.parametrize(
    ("method", "path"), [("PUT", "/v1/jobs"), ("PATCH", "/v1/jobs"), ("POST", "/healthz")]
)
def test_wrong_method_is_405_problem(api_client, tenant, method, path) -> None:
    answer = api_client.request(
        method, path, headers={**tenant.headers, "Content-Type": "application/json"}, content=b"{}"
    )
    assert_problem(answer, 405, "method-not-allowed")
    assert answer.headers.get("allow")


@pytest.mark.parametrize(
    "params",
    [
        {"state": "exploded"},
        {"created_after": "yesterday"},
        {"batch_id": "nope"},
        {"page_token": "x" * 5000},
    ],
)
def test_bad_list_parameters(api_client, tenant, params) -> None:
    answer = api_client.get("/v1/jobs", params=params, headers=tenant.headers)
    assert 400 <= answer.status_code < 500
    assert_problem(answer, answer.status_code)


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/jobs", {"pagesize": "5"}),  # a typo of page_size
        ("/v1/webhook-endpoints", {"\u00dcuv": "1"}),  # found by schemathesis' negative data
        ("/v1/jobs/00000000-0000-0000-0000-000000000000", {"expand": "segments"}),
    ],
)
def test_unknown_query_parameters_are_refused(api_client, tenant, path, params) -> None:
    answer = api_client.get(path, params=params, headers=tenant.headers)
    assert_problem(answer, 422)
    body = answer.json()
    assert body["type"].endswith("validation-error") and list(params)[0] in body["detail"]
    assert body["errors"][0]["loc"] == ["query", list(params)[0]]


def test_known_query_parameters_still_work(api_client, tenant) -> None:
    answer = api_client.get("/v1/jobs", params={"page_size": 2, "state": "queued"}, headers=tenant.headers)
    assert answer.status_code == 200, answer.text


def test_invalid_utf8_in_query_string_is_not_a_500(api_client, tenant) -> None:
    answer = api_client.get("/v1/jobs?client_ref=%ff%fe", headers=tenant.headers)
    assert answer.status_code < 500


def test_upload_source_of_failed_upload_refused(api_client, tenant, session_factory, count_rows) -> None:
    with session_factory() as session:
        upload = Upload(tenant_id=tenant.tenant_id, state="receiving", storage_uri="s3://x/y")
        session.add(upload)
        session.commit()
        source = f"upload:{upload.id}"
    assert_problem(
        api_client.post("/v1/jobs", json=with_(source=source), headers=tenant.headers),
        422,
        "source-not-found",
    )
    assert count_rows(Job, tenant_id=tenant.tenant_id) == 0


@pytest.mark.parametrize(
    "url", ["/v1/jobs?client_ref=a%00b", "/v1/uploads?filename=%00.mp4", "/v1/jobs/a%00b"]
)
def test_nul_in_urls_is_400(api_client, tenant, url) -> None:
    if url.startswith("/v1/uploads"):
        headers = {**tenant.headers, "Content-Type": "video/mp4"}
        answer = api_client.post(url, content=b"\0\0\0\x18ftypmp42" + bytes(64), headers=headers)
    else:
        answer = api_client.get(url, headers=tenant.headers)
    assert_problem(answer, 400, "bad-request")


def test_405_allow_lists_every_method_of_the_resource(api_client, tenant) -> None:
    job = uuid.uuid4()
    cases = {
        f"/v1/jobs/{job}": "DELETE, GET, HEAD",
        f"/v1/jobs/{job}:cancel": "POST",
        "/v1/jobs": "GET, HEAD, POST",
        "/v1/webhook-endpoints": "GET, HEAD, POST",
    }
    for path, allow in cases.items():
        answer = api_client.options(path, headers=tenant.headers)
        assert_problem(answer, 405, "method-not-allowed")
        assert answer.headers["allow"] == allow, path
