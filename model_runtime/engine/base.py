"""The one interface every engine implements: requests in, completions with token log-probs out.

Grounding and the Celery workers only ever talk to an `Engine`; whether it is our native PyTorch
runtime, an OpenAI-compatible server or the Keye SGLang fork is a setting (DESIGN §5).

Prefix sharing: consecutive requests that carry the *same* `VideoInput` object (identity, not
equality) and the same `system` text are answered from one encoded video prefix. The worker builds one
`VideoInput` per chunk and one request per query, so the video is encoded once per chunk.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np


@dataclass(eq=False)
class VideoInput:
    """Frames the model sees, already sampled and resized to multiples of 28 (spec §4.1–§4.2).

    `frames` is [N, H, W, 3] uint8 RGB with one common H and W; `timestamps` are the seconds written
    before each frame in the prompt (spec §4.4). `source` and `preprocess_kwargs` say where the
    frames came from, for engines that decode the video themselves (the `openai` engine sends them as
    a `video_url` part with the Keye fork's `preprocess_kwargs`).
    """

    frames: np.ndarray
    timestamps: Sequence[float]
    source: str | None = None
    preprocess_kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.frames.ndim != 4 or self.frames.shape[-1] != 3 or self.frames.dtype != np.uint8:
            raise ValueError(
                f"frames must be [N, H, W, 3] uint8, got {self.frames.shape} {self.frames.dtype}"
            )
        if len(self.timestamps) != self.frames.shape[0]:
            raise ValueError(f"{len(self.timestamps)} timestamps for {self.frames.shape[0]} frames")


@dataclass
class GenerationRequest:
    """One user turn (optionally with a video placed before the text) to complete."""

    prompt: str
    video: VideoInput | None = None
    system: str | None = None
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 means no top-k filter
    seed: int | None = None
    stop: Sequence[str] = ()


@dataclass
class Completion:
    """What the model wrote, with the log-probability of each generated token.

    `token_logprobs[i]` is log p(token_ids[i]) under the model's unmodified distribution (before
    temperature / top-p), which is what grounding turns into a confidence.
    """

    text: str
    token_ids: list[int]
    token_logprobs: list[float]
    prompt_tokens: int
    finish_reason: Literal["stop", "length"]


@runtime_checkable
class Engine(Protocol):
    """Anything that turns requests into completions, in order."""

    name: str

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]: ...

    def close(self) -> None: ...
