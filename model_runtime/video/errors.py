"""Typed errors for every way a video source can be unusable.

A job that cannot read its video fails with a problem document built from one of these: `str(err)` is
a short one-line message a user can act on, `err.code` a stable slug the API and tests match on, and
`err.retryable` says whether trying again later could help (a network timeout) or not (a text file
renamed to .mp4). Low-level PyAV / FFmpeg exceptions never leave this package unwrapped.
"""

from __future__ import annotations


class VideoError(Exception):
    """Base of all video input errors; `code` is a stable slug, `str(err)` one short line."""

    code: str = "video-error"
    retryable: bool = False

    def __init__(self, message: str) -> None:
        # One line only: problem documents show it verbatim.
        super().__init__(" ".join(message.split()))


class VideoNotFoundError(VideoError):
    """The path does not exist or the URL answered 404/403."""

    code = "not-found"


class EmptyFileError(VideoError):
    """A zero-byte file."""

    code = "empty-file"


class UnreadableVideoError(VideoError):
    """FFmpeg cannot recognise the container (not a video, or garbage)."""

    code = "unreadable"


class TruncatedVideoError(UnreadableVideoError):
    """A container cut short: MP4 without its moov atom, or packets missing where the index says frames are."""

    code = "truncated"


class NoVideoStreamError(VideoError):
    """The container holds no video stream (audio-only, subtitles, data)."""

    code = "no-video-stream"


class NoFramesError(VideoError):
    """A video stream exists but yields no decodable frame."""

    code = "no-frames"


class UnsupportedCodecError(VideoError):
    """The video stream's codec has no decoder in this build of FFmpeg."""

    code = "unsupported-codec"


class AbsurdDimensionsError(VideoError):
    """Width/height outside what the model can use (too large, zero, or aspect ratio above 200)."""

    code = "absurd-dimensions"


class InvalidTimestampError(VideoError):
    """A requested time that is negative, NaN/infinite, or outside the video."""

    code = "invalid-timestamp"


class VideoTimeoutError(VideoError):
    """A network read took longer than its timeout; the source may answer later."""

    code = "timeout"
    retryable = True


class VideoSourceError(VideoError):
    """The source could not be reached (connection refused, DNS, HTTP 5xx)."""

    code = "source-unreachable"
    retryable = True


class BackendMissingError(VideoError):
    """The requested decoding backend (e.g. decord) is not installed or not known."""

    code = "backend-missing"
