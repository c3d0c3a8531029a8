"""`/v1/uploads`: stream a video file into object storage; the upload id then serves as a job's source.

The body is the raw file (`Content-Type: video/*` or `application/octet-stream`; the name may come in
`?filename=`), read from the socket piece by piece and written through a storage writer that holds at
most one S3 part in memory. The size limit is enforced on the declared Content-Length *and* while
streaming; the first bytes are sniffed so an image or a text file is refused before it is stored.
The upload row is written only once the object is complete, so a refused upload leaves no row.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import select

from api.deps import ReadSessionDep, SessionDep, SettingsDep, StorageDep, TenantDep
from api.schemas import UploadView
from api.views import upload_view
from core.media import not_video_reason
from core.models import Upload
from core.problems import Kinds, Problem
from core.storage import ObjectTooLarge

router = APIRouter(prefix="/v1/uploads", tags=["uploads"])
STREAMING_PATHS = frozenset({"/v1/uploads"})
SNIFF_BYTES = 64
BUFFER_BYTES = 1024 * 1024  # hop to the storage thread once per MiB, not once per socket read


def _check_content_type(value: str | None) -> str:
    media = (value or "").split(";", 1)[0].strip().lower()
    if not (media.startswith("video/") or media == "application/octet-stream"):
        raise Problem(
            Kinds.UNSUPPORTED_MEDIA_TYPE, "upload the raw file as video/* or application/octet-stream"
        )
    return media


@router.post(
    "",
    status_code=201,
    response_model=UploadView,
    summary="Upload a video (raw request body)",
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "video/mp4": {"schema": {"type": "string", "format": "binary"}},
            },
        }
    },
)
async def create_upload(
    request: Request,
    settings: SettingsDep,
    principal: TenantDep,
    storage: StorageDep,
    session: SessionDep,
    filename: Annotated[str | None, Query(max_length=255)] = None,
) -> UploadView:
    content_type = _check_content_type(request.headers.get("content-type"))
    declared = request.headers.get("content-length")
    limit = settings.max_upload_bytes
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise Problem(Kinds.PAYLOAD_TOO_LARGE, f"uploads are limited to {limit} bytes")
    upload_id = uuid.uuid4()
    writer = await run_in_threadpool(
        storage.open_writer,
        f"uploads/{principal.tenant_id}/{upload_id}",
        max_bytes=limit,
        content_type=content_type,
    )
    buffer = bytearray()
    sniffed = False
    try:
        async for piece in request.stream():
            buffer += piece
            if not sniffed and len(buffer) >= SNIFF_BYTES:
                _refuse_non_video(bytes(buffer[:SNIFF_BYTES]))
                sniffed = True
            if len(buffer) >= BUFFER_BYTES:
                await run_in_threadpool(writer.write, bytes(buffer))
                buffer.clear()
        if not sniffed:
            _refuse_non_video(bytes(buffer))
        if buffer:
            await run_in_threadpool(writer.write, bytes(buffer))
        stored = await run_in_threadpool(writer.commit, content_type)
    except ObjectTooLarge as err:
        raise Problem(Kinds.PAYLOAD_TOO_LARGE, f"uploads are limited to {limit} bytes") from err
    except BaseException:
        await run_in_threadpool(writer.abort)
        raise
    upload = Upload(
        id=upload_id,
        tenant_id=principal.tenant_id,
        state="complete",
        filename=filename,
        content_type=content_type,
        size_bytes=stored.size,
        sha256=writer.sha256,
        storage_uri=stored.uri,
        completed_at=datetime.now(UTC),
    )
    session.add(upload)
    try:
        await run_in_threadpool(session.commit)
    except BaseException:
        await run_in_threadpool(storage.delete, stored.uri)  # no object without its row
        raise
    return upload_view(upload)


def _refuse_non_video(head: bytes) -> None:
    reason = not_video_reason(head)
    if reason is not None:
        raise Problem(Kinds.UNSUPPORTED_MEDIA_TYPE, f"not a video: {reason}")


@router.get("/{upload_id:uuid}", response_model=UploadView, summary="An upload's metadata")
def get_upload(upload_id: uuid.UUID, session: ReadSessionDep, principal: TenantDep) -> UploadView:
    upload = session.scalar(
        select(Upload).where(Upload.id == upload_id, Upload.tenant_id == principal.tenant_id)
    )
    if upload is None:
        raise Problem(Kinds.NOT_FOUND, "no such upload")
    return upload_view(upload)
