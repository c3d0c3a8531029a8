"""Opening a video source with PyAV: local paths and http(s) URLs, with timeouts and typed errors.

Probing and decoding both go through `open_input`, so every FFmpeg failure is translated once into a
`VideoError` subclass and every network read is bounded: PyAV's `timeout=` (an interrupt callback on
open and on each read) plus the protocol's own `rw_timeout`. `s3://` URIs are not opened here; the
caller presigns them first (core.storage), which keeps credentials out of the runtime.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

import av
import av.error

from model_runtime.video.errors import (
    EmptyFileError,
    NoVideoStreamError,
    TruncatedVideoError,
    UnreadableVideoError,
    UnsupportedCodecError,
    VideoError,
    VideoNotFoundError,
    VideoSourceError,
    VideoTimeoutError,
)

NETWORK_PREFIXES = ("http://", "https://")


# errno values of a URL read that mean "the network or the server", not "the bytes".
NETWORK_ERRNOS = frozenset(
    {
        errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.ETIMEDOUT, errno.EHOSTUNREACH,
        errno.ENETUNREACH, errno.ENETDOWN, errno.EPIPE, errno.EAGAIN, errno.EIO,
    }
)  # fmt: skip


def is_url(source: str) -> bool:
    return source.startswith(NETWORK_PREFIXES)


def display_name(source: str) -> str:
    """A short name for messages: the file name, or the URL without its (possibly signed) query."""
    if is_url(source):
        return source.split("?", 1)[0]
    return os.path.basename(source) or source


def _looks_like_mp4(path: str) -> bool:
    """ISO-BMFF files carry an 'ftyp' box at byte 4; a failed open of one means a missing moov atom."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
    except OSError:
        return False
    return head[4:8] == b"ftyp"


def translate_error(exc: BaseException, source: str) -> VideoError:
    """Map a PyAV / OS exception to the typed error a job reports."""
    name = display_name(source)
    if isinstance(exc, VideoError):
        return exc
    if isinstance(exc, av.error.ExitError | av.error.TimeoutError | TimeoutError):
        return VideoTimeoutError(f"timed out reading {name}")
    if isinstance(
        exc, av.error.HTTPNotFoundError | av.error.HTTPForbiddenError | av.error.HTTPUnauthorizedError
    ):
        return VideoNotFoundError(
            f"{name} answered {type(exc).__name__.removeprefix('HTTP').removesuffix('Error')}"
        )
    if isinstance(exc, av.error.HTTPError):
        return VideoSourceError(f"{name} answered an HTTP error")
    if isinstance(exc, av.error.FileNotFoundError | FileNotFoundError):
        return VideoNotFoundError(f"{name} does not exist")
    if isinstance(exc, av.error.DecoderNotFoundError):
        return UnsupportedCodecError(f"{name}: no decoder for its video codec")
    if isinstance(exc, av.error.InvalidDataError | av.error.EOFError):
        if not is_url(source) and _looks_like_mp4(source):
            return TruncatedVideoError(
                f"{name} is an MP4 without a readable index (moov atom missing or cut)"
            )
        return UnreadableVideoError(f"{name} is not a video FFmpeg can read")
    if isinstance(exc, ConnectionError | av.error.ConnectionRefusedError | av.error.ConnectionResetError):
        return VideoSourceError(f"cannot connect to {name}")
    if isinstance(exc, av.error.FFmpegError | OSError):
        # Only network-shaped failures are worth retrying; EBUSY/EINVAL/ENOMEM on a URL come from what
        # the stream holds (e.g. an absurd frame-size header), and will fail the same way again.
        if is_url(source) and getattr(exc, "errno", None) in NETWORK_ERRNOS:
            return VideoSourceError(f"cannot read {name}: {exc.strerror or exc}")
        return UnreadableVideoError(f"cannot read {name}: {exc.strerror or exc}")
    return UnreadableVideoError(f"cannot read {name}: {exc}")


def check_local_source(source: str) -> None:
    """Fail fast on local paths before FFmpeg sees them."""
    if source.startswith("s3://"):
        raise VideoSourceError("s3:// URIs must be presigned before decoding")
    if is_url(source):
        return
    if not os.path.exists(source):
        raise VideoNotFoundError(f"{display_name(source)} does not exist")
    if os.path.isdir(source):
        raise UnreadableVideoError(f"{display_name(source)} is a directory")
    if os.path.getsize(source) == 0:
        raise EmptyFileError(f"{display_name(source)} is empty (0 bytes)")


@contextlib.contextmanager
def open_input(source: str, *, timeout_s: float = 15.0) -> Iterator[av.container.InputContainer]:
    """Open `source` for reading; every exception inside the block comes out as a `VideoError`."""
    check_local_source(source)
    options: dict[str, str] = {}
    timeout: tuple[float, float] | None = None
    if is_url(source):
        # rw_timeout bounds each protocol read (µs); the interrupt callback behind `timeout=` also
        # covers connect and TLS, which rw_timeout alone does not in every FFmpeg version.
        options = {"rw_timeout": str(int(timeout_s * 1e6)), "reconnect": "0"}
        timeout = (timeout_s, timeout_s)
    try:
        container = av.open(source, mode="r", options=options, timeout=timeout)
    except Exception as exc:  # noqa: BLE001 - every failure becomes one typed error
        raise translate_error(exc, source) from exc
    try:
        yield container
    except VideoError:
        raise
    except (av.error.FFmpegError, OSError) as exc:
        raise translate_error(exc, source) from exc
    finally:
        container.close()


def video_stream(container: av.container.InputContainer, source: str) -> av.video.stream.VideoStream:
    """The first video stream, or a typed error saying what the file holds instead."""
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams})
        held = ", ".join(kinds) if kinds else "no streams"
        raise NoVideoStreamError(f"{display_name(source)} has no video stream ({held})")
    stream = container.streams.video[0]
    codec = stream.codec_context
    if codec is None or not codec.is_decoder:
        raise UnsupportedCodecError(f"{display_name(source)}: no decoder for its video codec")
    return stream
