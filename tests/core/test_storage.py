"""Storage on moto's S3 server and on a local folder: streaming writes, limits, listing, presigned GETs."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import httpx
import pytest

from core.settings import Settings
from core.storage import LocalStorage, ObjectNotFound, ObjectTooLarge, S3Storage, open_storage, presigned_url
from tests.conftest import s3_client


@pytest.fixture
def s3_storage(service_settings) -> S3Storage:
    storage = open_storage(service_settings)
    assert isinstance(storage, S3Storage)
    return storage


@pytest.fixture
def local_storage(tmp_path) -> LocalStorage:
    storage = open_storage(Settings(embedded=True, data_dir=tmp_path))
    assert isinstance(storage, LocalStorage)
    return storage


@pytest.mark.parametrize("kind", ["s3", "local"])
def test_streamed_write_head_presign_delete(
    kind, s3_storage, local_storage, service_settings, tmp_path
) -> None:
    storage = s3_storage if kind == "s3" else local_storage
    # 11 MiB in 1 MiB pieces: more than one 8 MiB multipart part on S3.
    piece = bytes(range(256)) * 4096
    writer = storage.open_writer(f"uploads/{uuid.uuid4().hex}", max_bytes=64 * 1024**2)
    for _ in range(11):
        writer.write(piece)
    info = writer.commit("video/mp4")
    assert info.size == 11 * len(piece) and writer.sha256 == hashlib.sha256(piece * 11).hexdigest()
    assert storage.head(info.uri).size == info.size
    assert storage.read_head(info.uri, 8) == piece[:8]
    if kind == "s3":
        assert info.etag.endswith("-2")  # multipart
        url = storage.presigned_url(info.uri)
        assert url.startswith(service_settings.s3_endpoint_url)
        got = httpx.get(url)
        assert got.status_code == 200 and hashlib.sha256(got.content).hexdigest() == writer.sha256
    else:
        path = presigned_url(info.uri, Settings(embedded=True, data_dir=tmp_path))
        assert Path(path).read_bytes()[:8] == piece[:8]
    storage.delete(info.uri)
    with pytest.raises(ObjectNotFound):
        storage.head(info.uri)


@pytest.mark.parametrize("kind", ["s3", "local"])
def test_writer_refuses_growth_past_limit_and_leaves_nothing(kind, s3_storage, local_storage) -> None:
    storage = s3_storage if kind == "s3" else local_storage
    key = f"uploads/{uuid.uuid4().hex}"
    writer = storage.open_writer(key, max_bytes=10 * 1024**2)
    writer.write(b"x" * (9 * 1024**2))  # forces one multipart part on S3
    with pytest.raises(ObjectTooLarge):
        writer.write(b"x" * (2 * 1024**2))
    with pytest.raises(ObjectNotFound):
        storage.head(storage.uri_for(key))
    if kind == "s3":
        bucket = storage.uri_for("").split("/")[2]
        pending = storage._client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        assert all(not u["Key"].endswith(key) for u in pending)


def test_s3_listing_pages_and_etags(s3_storage, s3_endpoint, s3_bucket) -> None:
    client = s3_client(s3_endpoint)
    prefix = f"batch-{uuid.uuid4().hex[:6]}/"
    for i in range(1005):  # more than one 1000-key page
        client.put_object(
            Bucket=s3_bucket, Key=f"{prefix}v{i:04d}.mp4", Body=b"same" if i % 2 else f"{i}".encode()
        )
    client.put_object(Bucket=s3_bucket, Key=f"{prefix}folder/", Body=b"")
    listed = list(s3_storage.list_objects(f"s3://{s3_bucket}/{prefix}", max_objects=5000))
    assert len(listed) == 1005 and listed[0].uri.endswith("v0000.mp4")
    assert len({o.etag for o in listed if o.uri.endswith(("1.mp4", "3.mp4"))}) == 1  # same bytes, same etag
    assert len(list(s3_storage.list_objects(f"s3://{s3_bucket}/{prefix}", max_objects=7))) == 7
    assert s3_storage.bucket_exists(s3_bucket) and not s3_storage.bucket_exists("no-such-bucket-x1")


def test_local_storage_never_leaves_its_folder(local_storage, tmp_path) -> None:
    (tmp_path / "secret.txt").write_text("x")
    with pytest.raises(ObjectNotFound):
        local_storage.head((tmp_path / "secret.txt").as_uri())
    with pytest.raises(ObjectNotFound):
        local_storage.head(local_storage.uri_for("../secret.txt"))
