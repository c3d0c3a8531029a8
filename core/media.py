"""A cheap first-bytes check that refuses objects which are certainly not video, before a job exists.

The authoritative check is the worker's probe (PyAV); this one only spares a queue round trip for the
obvious mistakes — an empty file, a JPEG, a PDF, a ZIP, a text or JSON file — so the client gets a 4xx at
submission instead of a failed job. Anything unknown passes: a false "not a video" would be worse
than a probe failure later.
"""

from __future__ import annotations

# Signatures of common files that are not videos, checked at offset 0.
NOT_VIDEO_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF87a", "a GIF image"),
    (b"GIF89a", "a GIF image"),
    (b"%PDF-", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\x1f\x8b", "a gzip archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-zip archive"),
    (b"fLaC", "a FLAC audio file"),
    (b"ID3", "an MP3 audio file"),
    (b"\x7fELF", "an executable"),
)


def not_video_reason(head: bytes) -> str | None:
    """Why the object starting with `head` cannot be a video, or None when it might be one."""
    if not head:
        return "the object is empty"
    for magic, what in NOT_VIDEO_MAGIC:
        if head.startswith(magic):
            return f"the object is {what}"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "the object is a WAV audio file"
    if _looks_like_text(head):
        return "the object is text, not a video"
    return None


def _looks_like_text(head: bytes) -> bool:
    # Video containers put binary bytes (sizes, NULs, 0x1A45DFA3, 0x47 sync + binary) in the first 64.
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(ch.isprintable() or ch in "\r\n\t" for ch in text)
