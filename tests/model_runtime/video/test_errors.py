"""Every bad input named in issue 3 raises one typed VideoError with a stable code and one short line."""

from __future__ import annotations

from pathlib import Path

import pytest

from model_runtime.video import (
    AbsurdDimensionsError,
    EmptyFileError,
    NoVideoStreamError,
    TruncatedVideoError,
    UnreadableVideoError,
    UnsupportedCodecError,
    VideoError,
    VideoNotFoundError,
    VideoSourceError,
    check_dimensions,
    probe_video,
)


@pytest.mark.parametrize(
    ("name", "error", "code"),
    [
        ("empty", EmptyFileError, "empty-file"),
        ("text", UnreadableVideoError, "unreadable"),
        ("truncated", TruncatedVideoError, "truncated"),
        ("audio_only", NoVideoStreamError, "no-video-stream"),
        ("unknown_codec", UnsupportedCodecError, "unsupported-codec"),
        ("thin", AbsurdDimensionsError, "absurd-dimensions"),
    ],
)
def test_bad_files(bad_files: dict[str, Path], name: str, error: type[VideoError], code: str) -> None:
    with pytest.raises(error) as err:
        probe_video(str(bad_files[name]))
    assert type(err.value) is error
    assert err.value.code == code and not err.value.retryable
    message = str(err.value)
    assert message and "\n" not in message and len(message) < 200
    assert bad_files[name].name in message  # says which file, never a full local path
    assert str(bad_files[name].parent) not in message


def test_audio_only_message_says_what_is_there(bad_files: dict[str, Path]) -> None:
    with pytest.raises(NoVideoStreamError, match="audio"):
        probe_video(str(bad_files["audio_only"]))


def test_missing_paths_and_unsigned_s3(tmp_path: Path) -> None:
    with pytest.raises(VideoNotFoundError):
        probe_video(str(tmp_path / "nope.mp4"))
    with pytest.raises(UnreadableVideoError):
        probe_video(str(tmp_path))  # a directory
    with pytest.raises(VideoSourceError, match="presigned"):
        probe_video("s3://bucket/key.mp4")


@pytest.mark.parametrize(("width", "height"), [(20_000, 20_000), (1, 5000), (0, 480), (16_385, 720)])
def test_absurd_dimensions(width: int, height: int) -> None:
    with pytest.raises(AbsurdDimensionsError):
        check_dimensions(width, height)


def test_reasonable_dimensions_pass() -> None:
    for width, height in [(7680, 4320), (2, 2), (200, 1), (16_384, 16_384)]:
        check_dimensions(width, height)


def test_http_errors(http_base: str) -> None:
    with pytest.raises(VideoNotFoundError) as err:
        probe_video(f"{http_base}/missing.mp4?X-Amz-Signature=secret", timeout_s=5)
    assert "secret" not in str(err.value)  # presigned query strings never reach messages


def test_connection_refused() -> None:
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    with pytest.raises(VideoSourceError) as err:
        probe_video(f"http://127.0.0.1:{port}/v.mp4", timeout_s=2)
    assert err.value.retryable
