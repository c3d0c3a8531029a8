"""Synthetic videos with known events: the ground truth for tests, the demo and the small trained model.

Each event is a coloured shape ("red circle", "blue star") that appears, moves across the frame during
a known interval and disappears; distractor shapes (colour/shape pairs no event uses) come and go, and
optional scene cuts change the background, so a model must look rather than guess. Every frame can
carry its index as a 16-bit black/white column barcode in a top band (`read_barcode`), which proves
that a sampler picked the frame it claims. Encoding is PyAV + libx264 with explicit GOP, B-frames
and scene-cut settings (frames are created with picture type NONE, so x264 makes real GOPs instead of
all-intra), optional rotation metadata, odd sizes (yuv444p) and variable frame rate. Deterministic
per seed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from PIL import Image, ImageDraw

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 40),
    "blue": (40, 70, 240),
    "yellow": (245, 225, 20),
    "purple": (150, 40, 200),
    "orange": (250, 140, 10),
    "white": (250, 250, 250),
    "cyan": (20, 220, 230),
    "pink": (250, 120, 190),
}
SHAPES = ("circle", "square", "triangle", "star", "diamond", "cross", "hexagon")
BARCODE_BITS = 16
BARCODE_BAND = 1 / 8  # top fraction of the frame height holding the barcode


@dataclass
class SyntheticEvent:
    """A shape visible during [start_s, end_s); `label` reads like "red circle"."""

    label: str
    shape: str
    color: str
    start_s: float
    end_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SyntheticEvent:
        return cls(**d)


def make_event(shape: str, color: str, start_s: float, end_s: float) -> SyntheticEvent:
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; known: {SHAPES}")
    if color not in COLORS:
        raise ValueError(f"unknown colour {color!r}; known: {sorted(COLORS)}")
    return SyntheticEvent(f"{color} {shape}", shape, color, float(start_s), float(end_s))


@dataclass
class SyntheticTruth:
    """What was written: the events, the distractors and the video's facts."""

    path: str
    events: list[SyntheticEvent]
    distractors: list[SyntheticEvent]
    duration_s: float
    fps: float
    width: int  # as displayed (after rotation)
    height: int
    n_frames: int
    frame_times_s: list[float]  # presentation time of every frame, seconds from the first
    scene_cuts_s: list[float]
    rotation: int
    gop: int
    bframes: int
    barcode: bool
    codec: str = "libx264"
    extra: dict[str, Any] = field(default_factory=dict)

    def labels_at(self, t: float) -> list[str]:
        """Event labels visible at time t."""
        return [e.label for e in self.events if e.start_s <= t < e.end_s]

    def event(self, label: str) -> SyntheticEvent:
        for e in self.events:
            if e.label == label:
                return e
        raise KeyError(label)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SyntheticTruth:
        d = dict(d)
        d["events"] = [SyntheticEvent.from_dict(e) for e in d["events"]]
        d["distractors"] = [SyntheticEvent.from_dict(e) for e in d["distractors"]]
        return cls(**d)


def random_events(
    rng_or_seed: np.random.Generator | int,
    duration_s: float,
    *,
    n_events: int = 3,
    min_len_s: float = 1.0,
    max_len_s: float | None = None,
    shapes: Sequence[str] = SHAPES,
    colors: Sequence[str] = tuple(COLORS),
) -> list[SyntheticEvent]:
    """Events with distinct (colour, shape) pairs at random intervals inside [0, duration_s)."""
    rng = rng_or_seed if isinstance(rng_or_seed, np.random.Generator) else np.random.default_rng(rng_or_seed)
    pairs = [(c, s) for c in colors for s in shapes]
    if n_events > len(pairs):
        raise ValueError(f"only {len(pairs)} distinct colour/shape pairs for {n_events} events")
    max_len_s = max_len_s if max_len_s is not None else max(min_len_s, duration_s / 3)
    max_len_s = min(max_len_s, duration_s)
    min_len_s = min(min_len_s, max_len_s)
    chosen = rng.choice(len(pairs), size=n_events, replace=False)
    events = []
    for i in chosen:
        color, shape = pairs[int(i)]
        length = float(rng.uniform(min_len_s, max_len_s))
        start = float(rng.uniform(0.0, duration_s - length))
        events.append(make_event(shape, color, round(start, 2), round(start + length, 2)))
    return sorted(events, key=lambda e: e.start_s)


def _shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Polygon vertices of a shape of radius r centred at (cx, cy)."""

    def ring(n: int, radius: float, phase: float) -> list[tuple[float, float]]:
        return [
            (
                cx + radius * math.cos(phase + 2 * math.pi * k / n),
                cy + radius * math.sin(phase + 2 * math.pi * k / n),
            )
            for k in range(n)
        ]

    if shape == "triangle":
        return ring(3, r, -math.pi / 2)
    if shape == "diamond":
        return ring(4, r, -math.pi / 2)
    if shape == "hexagon":
        return ring(6, r, 0.0)
    if shape == "star":
        outer, inner = ring(5, r, -math.pi / 2), ring(5, r * 0.45, -math.pi / 2 + math.pi / 5)
        return [p for pair in zip(outer, inner, strict=True) for p in pair]
    if shape == "cross":
        a = r / 3
        return [(cx - a, cy - r), (cx + a, cy - r), (cx + a, cy - a), (cx + r, cy - a), (cx + r, cy + a), (cx + a, cy + a),
                (cx + a, cy + r), (cx - a, cy + r), (cx - a, cy + a), (cx - r, cy + a), (cx - r, cy - a), (cx - a, cy - a)]  # fmt: skip
    raise ValueError(shape)


def _draw_shape(
    draw: ImageDraw.ImageDraw, shape: str, color: tuple[int, int, int], cx: float, cy: float, r: float
) -> None:
    if shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=color)
    elif shape == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=color)
    else:
        draw.polygon(_shape_points(shape, cx, cy, r), fill=color)


@dataclass
class _Track:
    """Where a shape starts and ends its straight-line path (fractions of the frame)."""

    event: SyntheticEvent
    x0: float
    y0: float
    x1: float
    y1: float


def paint_barcode(rgb: np.ndarray, index: int) -> None:
    """Write `index` as 16 black/white columns across the top band of an [H, W, 3] frame (in place)."""
    h, w = rgb.shape[:2]
    band = max(2, int(round(h * BARCODE_BAND)))
    edges = np.linspace(0, w, BARCODE_BITS + 1).round().astype(int)
    for bit in range(BARCODE_BITS):
        value = 255 if (index >> (BARCODE_BITS - 1 - bit)) & 1 else 0
        rgb[:band, edges[bit] : edges[bit + 1]] = value


def read_barcode(rgb: np.ndarray) -> int:
    """The frame index painted by `paint_barcode`, read back from a (possibly resized, lossy) frame."""
    h, w = rgb.shape[:2]
    band = max(1, int(h * BARCODE_BAND))
    rows = rgb[max(0, band // 4) : max(1, band - band // 4)].astype(np.float32).mean(axis=(0, 2))  # [W]
    value = 0
    for bit in range(BARCODE_BITS):
        lo, hi = (bit + 0.25) * w / BARCODE_BITS, (bit + 0.75) * w / BARCODE_BITS
        column = rows[int(lo) : max(int(lo) + 1, int(hi))].mean()
        value = (value << 1) | int(column > 127)
    return value


def _background(rng: np.random.Generator, height: int, width: int, scene: int) -> np.ndarray:
    """A two-tone gradient with texture; scenes alternate dark and light so every cut is a clear cut."""
    low = 0 if scene % 2 == 0 else 120
    base = rng.integers(low, low + 80, size=3)
    tint = rng.integers(low, low + 80, size=3)
    ramp = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]  # [1, W, 1]
    img = base[None, None, :] * (1 - ramp) + tint[None, None, :] * ramp  # [1, W, 3]
    img = np.broadcast_to(img, (height, width, 3)).copy()
    img += rng.normal(0.0, 6.0, size=(height, width, 1))
    return np.clip(img, 0, 255).astype(np.uint8)


def _frame_times(n_frames: int, fps: float, vfr_jitter: float, rng: np.random.Generator) -> list[float]:
    if vfr_jitter <= 0:
        return [k / fps for k in range(n_frames)]
    gaps = rng.uniform(1.0 - vfr_jitter, 1.0 + vfr_jitter, size=n_frames) / fps
    times = np.concatenate([[0.0], np.cumsum(gaps[:-1])])
    return [round(float(t), 3) for t in times]  # millisecond pts


def make_synthetic_video(
    path: str | Path,
    *,
    duration_s: float,
    fps: float = 10.0,
    width: int = 160,
    height: int = 96,
    events: Sequence[SyntheticEvent] | None = None,
    seed: int = 0,
    n_distractors: int = 2,
    scene_cuts_s: Sequence[float] = (),
    gop: int = 30,
    bframes: int = 2,
    scenecut: bool = False,
    crf: int = 23,
    preset: str = "ultrafast",
    barcode: bool = True,
    rotation: int = 0,
    vfr_jitter: float = 0.0,
    noise: float = 0.0,
    audio: bool = False,
    threads: int = 1,
) -> SyntheticTruth:
    """Write an H.264 video with known events; returns the ground truth.

    `width`/`height` are the displayed size; with `rotation` (degrees counter-clockwise, a multiple of
    90) the pixels are stored turned the other way and tagged, so a player that honours the tag shows
    them upright. `vfr_jitter` > 0 draws each frame interval from (1 ± jitter)/fps. `noise` adds
    per-frame grain (standard deviation in grey levels) so the bitrate looks like camera footage.
    `events=None` draws three random ones from `seed`.
    """
    if duration_s <= 0 or fps <= 0 or width < 2 or height < 2:
        raise ValueError("duration, fps and size must be positive")
    if rotation % 90:
        raise ValueError("rotation must be a multiple of 90 degrees")
    rng = np.random.default_rng(seed)
    events = list(events) if events is not None else random_events(rng, duration_s)
    used = {(e.color, e.shape) for e in events}
    free = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in used]
    distractors = []
    for i in rng.choice(len(free), size=min(n_distractors, len(free)), replace=False):
        color, shape = free[int(i)]
        length = float(rng.uniform(min(1.0, duration_s), max(1.0, duration_s / 3)))
        length = min(length, duration_s)
        start = float(rng.uniform(0.0, duration_s - length))
        distractors.append(make_event(shape, color, round(start, 2), round(start + length, 2)))
    tracks = [_Track(e, *rng.uniform(0.2, 0.8, size=4)) for e in [*events, *distractors]]

    n_frames = max(1, math.floor(duration_s * fps + 1e-9))
    times = _frame_times(n_frames, fps, vfr_jitter, rng)
    cuts = sorted(float(c) for c in scene_cuts_s)
    backgrounds = [_background(rng, height, width, scene) for scene in range(len(cuts) + 1)]
    radius = max(3.0, min(width, height) * 0.12)
    quarter_turns = (rotation // 90) % 4
    coded_w, coded_h = (height, width) if quarter_turns % 2 else (width, height)
    pix_fmt = "yuv420p" if coded_w % 2 == 0 and coded_h % 2 == 0 else "yuv444p"

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w") as out:
        rate = Fraction(fps).limit_denominator(1001)
        stream = out.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = coded_w, coded_h, pix_fmt
        stream.time_base = Fraction(1, 1000) if vfr_jitter > 0 else Fraction(1, int(round(fps * 1000)))
        stream.codec_context.time_base = stream.time_base  # VFR pts must not be rounded to 1/fps
        stream.codec_context.options = {
            "preset": preset,
            "crf": str(crf),
            "g": str(gop),
            "keyint_min": str(max(1, gop // 10)),  # x264 default: scene cuts may start a GOP early
            "bf": str(bframes),
            # x264-params beats the preset (ultrafast turns scene-cut detection off on its own)
            "x264-params": f"scenecut={40 if scenecut else 0}",
        }
        stream.thread_count = threads
        if rotation:
            stream.set_display_rotation(rotation)
        audio_stream = None
        if audio:
            audio_stream = out.add_stream("aac", rate=16_000)
            audio_stream.layout = "mono"
        for k, t in enumerate(times):
            scene = sum(1 for c in cuts if c <= t)
            img = Image.fromarray(backgrounds[scene])
            draw = ImageDraw.Draw(img)
            for tr in tracks:
                ev = tr.event
                if ev.start_s <= t < ev.end_s:
                    u = (t - ev.start_s) / max(1e-6, ev.end_s - ev.start_s)
                    cx = (tr.x0 + (tr.x1 - tr.x0) * u) * width
                    cy = (BARCODE_BAND + (1 - BARCODE_BAND) * (tr.y0 + (tr.y1 - tr.y0) * u)) * height
                    _draw_shape(draw, ev.shape, COLORS[ev.color], cx, cy, radius)
            rgb = np.asarray(img).copy()
            if noise > 0:
                grain = rng.normal(0.0, noise, size=(height, width, 1)).astype(np.float32)
                rgb = np.clip(rgb + grain, 0, 255).astype(np.uint8)
            if barcode:
                paint_barcode(rgb, k)
            coded = np.ascontiguousarray(np.rot90(rgb, -quarter_turns)) if quarter_turns else rgb
            frame = av.VideoFrame.from_ndarray(coded, format="rgb24")
            frame.pict_type = av.video.frame.PictureType.NONE  # let x264 choose: real GOPs, not all-intra
            frame.pts = int(round(t / stream.time_base))
            frame.time_base = stream.time_base
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
        if audio_stream is not None:
            _write_tone(out, audio_stream, duration_s)

    return SyntheticTruth(
        path=str(path),
        events=events,
        distractors=distractors,
        duration_s=times[-1] + 1.0 / fps,
        fps=fps,
        width=width,
        height=height,
        n_frames=n_frames,
        frame_times_s=times,
        scene_cuts_s=cuts,
        rotation=rotation % 360,
        gop=gop,
        bframes=bframes,
        barcode=barcode,
    )


def _write_tone(
    out: av.container.OutputContainer, stream: av.audio.stream.AudioStream, duration_s: float
) -> None:
    """A quiet 440 Hz tone, so the file has a real audio track."""
    rate, samples_per_frame = 16_000, 1024
    total = int(duration_s * rate)
    for start in range(0, total, samples_per_frame):
        n = min(samples_per_frame, total - start)
        t = (np.arange(start, start + n) / rate).astype(np.float32)
        wave = (0.1 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)[None, :]  # [1, n]
        frame = av.AudioFrame.from_ndarray(wave, format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, start
        for packet in stream.encode(frame):
            out.mux(packet)
    for packet in stream.encode(None):
        out.mux(packet)
