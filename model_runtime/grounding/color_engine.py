"""A model-free baseline `Engine` for the synthetic videos: it finds the queried colour in the frames.

Synthetic events are coloured shapes on a dim background (model_runtime.video.synthetic), so "when
does the red circle appear" can be answered by counting red pixels per frame. This engine does that
with the frames and chunk-local timestamps it is given and writes `[[start, end], ...]` in those
seconds, as a VLM would. It checks the whole grounding path (planning, decoding, chunk-local times,
parsing, merging, scoring) end to end with known answers and no model cost, and gives `timemark eval
--engine color` a sanity baseline on `timemark synth` sets. It tells events apart by colour only: two
events of one colour in a video are indistinguishable to it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

from model_runtime.engine.base import Completion, GenerationRequest
from model_runtime.video import COLORS
from model_runtime.video.synthetic import BARCODE_BAND

_DURATION = re.compile(r"([\d.]+) seconds long")
_COLOR_WORDS = re.compile(r"\b(" + "|".join(COLORS) + r")\b", re.IGNORECASE)
ANSWER_LOGPROB = -0.05  # a fixed, confident log-prob per answer token


class ColorBaselineEngine:
    """Answers grounding prompts about synthetic videos by colour detection (see module docstring)."""

    name = "color"

    def __init__(self, *, max_distance: int = 120, min_pixels: int = 3) -> None:
        self.max_distance = max_distance  # L1 distance in RGB from the event colour
        self.min_pixels = min_pixels  # pixels of that colour for a frame to count as showing it
        self.calls = 0

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        self.calls += 1
        return [self._answer(r) for r in requests]

    def close(self) -> None:
        pass

    def _answer(self, request: GenerationRequest) -> Completion:
        color = _COLOR_WORDS.search(request.prompt)
        video = request.video
        if color is None or video is None or video.frames.shape[0] == 0:
            return _completion("none", 0)
        times = [float(t) for t in video.timestamps]
        duration_match = _DURATION.search(request.prompt)
        step = times[1] - times[0] if len(times) > 1 else 1.0
        duration = float(duration_match.group(1)) if duration_match else times[-1] + step
        target = np.array(COLORS[color.group(1).lower()], dtype=np.int32)
        # The top band may hold the frame-index barcode (black and white columns): not part of the scene.
        band = int(np.ceil(video.frames.shape[1] * BARCODE_BAND)) + 1
        distance = np.abs(video.frames[:, band:].astype(np.int32) - target).sum(-1)  # [N, H - band, W]
        shown = (distance < self.max_distance).sum(axis=(1, 2)) >= self.min_pixels  # [N]
        spans, first = [], None
        for i, is_shown in enumerate([*shown.tolist(), False]):
            if is_shown and first is None:
                first = i
            elif not is_shown and first is not None:
                # A frame is an instant: the span runs until the next frame that no longer shows it.
                spans.append(f"[{times[first]:.1f}, {min(times[i - 1] + step, duration):.1f}]")
                first = None
        text = f"[{', '.join(spans)}]" if spans else "none"
        return _completion(text, len(times))


def _completion(text: str, n_frames: int) -> Completion:
    pieces = re.findall(r"\d+|\D", text)  # digits as one token each run, like a BPE would
    return Completion(text, list(range(len(pieces))), [ANSWER_LOGPROB] * len(pieces), 8 * n_frames, "stop")
