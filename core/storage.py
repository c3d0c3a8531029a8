"""Object storage behind one small interface: S3 through boto3, or a local folder in embedded mode.

Objects are named by URI (`s3://bucket/key` or `file:///abs/path`) so a job row says where its video
lives whatever the backend. Uploads stream through an `ObjectWriter` (S3 multipart, one part in memory
at a time; a temp file renamed into place locally) that refuses to grow past a byte limit. Workers get
something PyAV can open from `presigned_url(uri)`: a presigned HTTPS GET for S3, the path for a file.
Listing pages through S3 with ETags so batches can dedupe objects; `read_head` feeds the sniffer.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from core.settings import Settings


class StorageError(Exception):
    """The storage backend failed (network, permissions); the caller answers 503 or retries."""


class ObjectNotFound(StorageError):
    pass


class ObjectTooLarge(StorageError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"object exceeds the limit of {limit} bytes")
        self.limit = limit


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int
    etag: str


def split_s3_uri(uri: str) -> tuple[str, str]:
    """`s3://bucket/key` → (bucket, key); key may be empty for a bucket or prefix root."""
    parts = urlsplit(uri)
    if parts.scheme != "s3" or not parts.netloc:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    return parts.netloc, parts.path.lstrip("/")


def file_uri_path(uri: str) -> Path:
    parts = urlsplit(uri)
    if parts.scheme != "file":
        raise ValueError(f"not a file:// URI: {uri!r}")
    return Path(unquote(parts.path))


class ObjectWriter(Protocol):
    """A streaming write: `write` pieces, then `commit` (→ ObjectInfo) or `abort`."""

    uri: str
    size: int
    sha256: str

    def write(self, data: bytes) -> None: ...
    def commit(self, content_type: str | None = None) -> ObjectInfo: ...
    def abort(self) -> None: ...


class Storage(Protocol):
    base_uri: str

    def uri_for(self, key: str) -> str: ...
    def open_writer(self, key: str, *, max_bytes: int, content_type: str | None = None) -> ObjectWriter: ...
    def head(self, uri: str) -> ObjectInfo: ...
    def read_head(self, uri: str, n_bytes: int = 64) -> bytes: ...
    def list_objects(self, prefix_uri: str, *, max_objects: int) -> Iterator[ObjectInfo]: ...
    def presigned_url(self, uri: str) -> str: ...
    def delete(self, uri: str) -> None: ...


# ---------------------------------------------------------------------------------------------- S3


class S3Writer:
    """Multipart upload that buffers exactly one part; small objects become one PUT at commit."""

    def __init__(self, client: Any, bucket: str, key: str, *, part_bytes: int, max_bytes: int) -> None:
        self.uri = f"s3://{bucket}/{key}"
        self.size = 0
        self._client, self._bucket, self._key = client, bucket, key
        self._part_bytes, self._max_bytes = part_bytes, max_bytes
        self._buffer = bytearray()
        self._digest = hashlib.sha256()
        self._upload_id: str | None = None
        self._parts: list[dict[str, Any]] = []

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self._max_bytes:
            self.abort()
            raise ObjectTooLarge(self._max_bytes)
        self._digest.update(data)
        self._buffer += data
        while len(self._buffer) >= self._part_bytes:
            self._flush_part(bytes(self._buffer[: self._part_bytes]))
            del self._buffer[: self._part_bytes]

    def _flush_part(self, body: bytes) -> None:
        try:
            if self._upload_id is None:
                self._upload_id = self._client.create_multipart_upload(Bucket=self._bucket, Key=self._key)[
                    "UploadId"
                ]
            number = len(self._parts) + 1
            answer = self._client.upload_part(
                Bucket=self._bucket, Key=self._key, UploadId=self._upload_id, PartNumber=number, Body=body
            )
        except Exception as err:
            self.abort()
            raise StorageError(f"S3 upload failed: {type(err).__name__}") from err
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def commit(self, content_type: str | None = None) -> ObjectInfo:
        extra = {"ContentType": content_type} if content_type else {}
        try:
            if self._upload_id is None:
                answer = self._client.put_object(
                    Bucket=self._bucket, Key=self._key, Body=bytes(self._buffer), **extra
                )
            else:
                if self._buffer:
                    self._flush_part(bytes(self._buffer))
                answer = self._client.complete_multipart_upload(
                    Bucket=self._bucket,
                    Key=self._key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
        except StorageError:
            raise
        except Exception as err:
            self.abort()
            raise StorageError(f"S3 upload failed: {type(err).__name__}") from err
        self._buffer.clear()
        return ObjectInfo(self.uri, self.size, answer["ETag"].strip('"'))

    def abort(self) -> None:
        self._buffer.clear()
        if self._upload_id is not None:
            upload_id, self._upload_id = self._upload_id, None
            # Best effort: a bucket lifecycle rule cleans up whatever an abort leaves behind.
            with contextlib.suppress(Exception):
                self._client.abort_multipart_upload(Bucket=self._bucket, Key=self._key, UploadId=upload_id)


class S3Storage:
    def __init__(self, settings: Settings) -> None:
        import boto3
        from botocore.config import Config

        self.base_uri = str(settings.storage_url).rstrip("/")
        self._bucket, self._prefix = split_s3_uri(self.base_uri)
        secret = settings.s3_secret_access_key
        self._client = boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=Config(
                connect_timeout=5, read_timeout=30, retries={"max_attempts": 3, "mode": "standard"}
            ),
        )
        self._part_bytes = settings.upload_chunk_bytes
        self._url_ttl = settings.presigned_url_ttl_s
        from botocore.exceptions import BotoCoreError, ClientError

        self._errors = (BotoCoreError, ClientError)

    def uri_for(self, key: str) -> str:
        return f"s3://{self._bucket}/{self._prefix + '/' if self._prefix else ''}{key}"

    def open_writer(self, key: str, *, max_bytes: int, content_type: str | None = None) -> S3Writer:
        bucket, object_key = split_s3_uri(self.uri_for(key))
        return S3Writer(self._client, bucket, object_key, part_bytes=self._part_bytes, max_bytes=max_bytes)

    def _call(self, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self._client, method)(**kwargs)
        except self._errors as err:
            code = getattr(err, "response", {}).get("Error", {}).get("Code", "")
            if code in ("404", "NoSuchKey", "NoSuchBucket", "NotFound"):
                raise ObjectNotFound(kwargs.get("Key") or kwargs.get("Bucket", "")) from err
            raise StorageError(f"S3 {method} failed: {code or type(err).__name__}") from err

    def head(self, uri: str) -> ObjectInfo:
        bucket, key = split_s3_uri(uri)
        if not key:
            raise ObjectNotFound(uri)
        answer = self._call("head_object", Bucket=bucket, Key=key)
        return ObjectInfo(uri, int(answer["ContentLength"]), answer["ETag"].strip('"'))

    def read_head(self, uri: str, n_bytes: int = 64) -> bytes:
        bucket, key = split_s3_uri(uri)
        try:
            answer = self._call("get_object", Bucket=bucket, Key=key, Range=f"bytes=0-{n_bytes - 1}")
        except StorageError as err:
            if "InvalidRange" in str(err):  # S3 refuses any range of an empty object
                return b""
            raise
        return answer["Body"].read()

    def list_objects(self, prefix_uri: str, *, max_objects: int) -> Iterator[ObjectInfo]:
        """Objects under the prefix in key order, paging 1000 at a time; stops after `max_objects`."""
        bucket, prefix = split_s3_uri(prefix_uri)
        token: str | None = None
        seen = 0
        while True:
            kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": 1000}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call("list_objects_v2", **kwargs)
            for item in page.get("Contents", []):
                if item["Key"].endswith("/"):
                    continue  # "folder" placeholder objects
                yield ObjectInfo(f"s3://{bucket}/{item['Key']}", int(item["Size"]), item["ETag"].strip('"'))
                seen += 1
                if seen >= max_objects:
                    return
            if not page.get("IsTruncated"):
                return
            token = page["NextContinuationToken"]

    def bucket_exists(self, bucket: str) -> bool:
        try:
            self._call("head_bucket", Bucket=bucket)
        except ObjectNotFound:
            return False
        return True

    def presigned_url(self, uri: str) -> str:
        bucket, key = split_s3_uri(uri)
        return self._client.generate_presigned_url(
            "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=self._url_ttl
        )

    def delete(self, uri: str) -> None:
        bucket, key = split_s3_uri(uri)
        self._call("delete_object", Bucket=bucket, Key=key)


# ------------------------------------------------------------------------------------- local folder


class LocalWriter:
    """Writes to a temp file beside the target and renames it into place at commit (atomic)."""

    def __init__(self, path: Path, *, max_bytes: int) -> None:
        self.uri = path.as_uri()
        self.size = 0
        self._path, self._max_bytes = path, max_bytes
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp = tempfile.mkstemp(dir=path.parent, prefix=".upload-")
        self._file = os.fdopen(handle, "wb")
        self._temp = Path(temp)
        self._digest = hashlib.sha256()
        self._md5 = hashlib.md5(usedforsecurity=False)

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()

    def write(self, data: bytes) -> None:
        self.size += len(data)
        if self.size > self._max_bytes:
            self.abort()
            raise ObjectTooLarge(self._max_bytes)
        self._digest.update(data)
        self._md5.update(data)
        self._file.write(data)

    def commit(self, content_type: str | None = None) -> ObjectInfo:
        self._file.close()
        os.replace(self._temp, self._path)
        return ObjectInfo(self.uri, self.size, self._md5.hexdigest())

    def abort(self) -> None:
        if not self._file.closed:
            self._file.close()
        self._temp.unlink(missing_ok=True)


class LocalStorage:
    def __init__(self, settings: Settings) -> None:
        self.root = file_uri_path(str(settings.storage_url)).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.base_uri = self.root.as_uri()

    def _path(self, uri: str) -> Path:
        path = file_uri_path(uri).resolve()
        if not path.is_relative_to(self.root):
            raise ObjectNotFound(uri)  # never read outside the storage folder
        return path

    def uri_for(self, key: str) -> str:
        return (self.root / key).as_uri()

    def open_writer(self, key: str, *, max_bytes: int, content_type: str | None = None) -> LocalWriter:
        return LocalWriter(self._path(self.uri_for(key)), max_bytes=max_bytes)

    def head(self, uri: str) -> ObjectInfo:
        path = self._path(uri)
        if not path.is_file():
            raise ObjectNotFound(uri)
        return ObjectInfo(uri, path.stat().st_size, _file_md5(path))

    def read_head(self, uri: str, n_bytes: int = 64) -> bytes:
        path = self._path(uri)
        if not path.is_file():
            raise ObjectNotFound(uri)
        with path.open("rb") as handle:
            return handle.read(n_bytes)

    def list_objects(self, prefix_uri: str, *, max_objects: int) -> Iterator[ObjectInfo]:
        prefix = self._path(prefix_uri)
        folder = prefix if prefix.is_dir() else prefix.parent
        seen = 0
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
            if not str(path).startswith(str(prefix)):
                continue
            yield ObjectInfo(path.as_uri(), path.stat().st_size, _file_md5(path))
            seen += 1
            if seen >= max_objects:
                return

    def presigned_url(self, uri: str) -> str:
        return str(self._path(uri))

    def delete(self, uri: str) -> None:
        self._path(uri).unlink(missing_ok=True)


def _file_md5(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as handle:
        shutil.copyfileobj(handle, _DigestSink(digest), length=1 << 20)
    return digest.hexdigest()


class _DigestSink:
    def __init__(self, digest: Any) -> None:
        self._digest = digest

    def write(self, data: bytes) -> int:
        self._digest.update(data)
        return len(data)


def open_storage(settings: Settings) -> S3Storage | LocalStorage:
    """The storage backend `settings.storage_url` names."""
    if str(settings.storage_url).startswith("s3://"):
        return S3Storage(settings)
    return LocalStorage(settings)


def presigned_url(uri: str, settings: Settings) -> str:
    """Something PyAV can open for `uri`: a presigned GET for s3://, a path for file://, https as is."""
    if uri.startswith(("https://", "http://")):
        return uri
    return open_storage(settings).presigned_url(uri)
