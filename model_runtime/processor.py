"""Turns chat messages with images and videos into the model's inputs (spec §3.1, §4.4, §4.6, §6).

The prompt is ChatML with a default system turn. Each video becomes `<|vision_start|>`, then per frame
`<|frame|>` + its seconds (one decimal) + one `<|video_pad|>` per 28×28 block, then `<|vision_end|>`;
an image becomes `<|vision_start|>` + N `<|image_pad|>` + `<|vision_end|>`. Pixels are normalised with
the checkpoint's preprocessor config and cut into 14×14 patches with one (1, h, w) grid per frame.
mRoPE positions are sequential over text and 2-D (row, col) inside each frame. Thinking switches such
as `/no_think` are plain prompt text and left to callers.

Legend: N = tokens, P = patches, F = frames, H/W = pixels, h/w = patch grid.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from model_runtime.config import KeyeConfig
from model_runtime.engine.base import VideoInput
from model_runtime.tokenizer import DEFAULT_SYSTEM, KeyeTokenizer

# The 8B-Preview preprocessor (spec §3.1); a checkpoint's own preprocessor_config.json wins.
DEFAULT_PREPROCESSOR_CONFIG: dict[str, Any] = {
    "image_processor_type": "SiglipImageProcessor",
    "do_rescale": True,
    "rescale_factor": 1 / 255,
    "do_normalize": True,
    "image_mean": [0.5, 0.5, 0.5],
    "image_std": [0.5, 0.5, 0.5],
    "patch_size": 14,
    "merge_size": 2,
    "temporal_patch_size": 1,
    "min_pixels": 3136,
    "max_pixels": 16_056_320,
}


@dataclass
class ModelInputs:
    """Everything one prompt feeds the model."""

    input_ids: Tensor  # [N] int64
    positions: Tensor  # [3, N] int64 mRoPE t/h/w channels
    pixel_values: Tensor | None  # [P, 3, 14, 14] float32, normalised
    grids: list[tuple[int, int, int]]  # (1, h, w) per image/frame, in prompt order
    rope_delta: int  # a generated token at index n has position n + rope_delta on all channels
    prefix_len: int  # leading tokens that depend only on the system text and the first video (0: none)


class KeyeProcessor:
    def __init__(self, tokenizer: KeyeTokenizer, config: KeyeConfig, preprocessor: dict[str, Any]):
        self.tokenizer = tokenizer
        self.config = config
        self.pre = {**DEFAULT_PREPROCESSOR_CONFIG, **preprocessor}
        self.patch = int(self.pre["patch_size"])
        self.merge = int(self.pre.get("merge_size", config.vision.spatial_merge_size))
        self.factor = self.patch * self.merge
        self.image_token_id = config.image_token_id
        self.video_token_id = config.video_token_id
        self.vision_start_id = config.vision_start_token_id
        self.vision_end_id = config.vision_end_token_id
        self.frame_token_id = tokenizer.token_id("<|frame|>")
        self._on_device: dict[torch.device, tuple[Tensor, Tensor]] = {}
        self._times: dict[str, list[int]] = {}
        self.stop_token_ids = sorted({*config.eos_token_ids, tokenizer.token_id(tokenizer.eos_token)})

    @classmethod
    def from_pretrained(cls, checkpoint_dir: str | Path) -> KeyeProcessor:
        folder = Path(checkpoint_dir)
        pre_path = folder / "preprocessor_config.json"
        pre = json.loads(pre_path.read_text()) if pre_path.is_file() else {}
        return cls(KeyeTokenizer.from_pretrained(folder), KeyeConfig.from_pretrained(folder), pre)

    # ---- prompts --------------------------------------------------------------------------------------

    def encode_request(
        self, prompt: str, video: VideoInput | None = None, system: str | None = None
    ) -> ModelInputs:
        """One user turn (video first, then the text) plus the assistant generation prompt."""
        content: list[dict[str, Any]] = [{"type": "video", "video": video}] if video is not None else []
        content.append({"type": "text", "text": prompt})
        messages: list[dict[str, Any]] = [{"role": "system", "content": system}] if system is not None else []
        messages.append({"role": "user", "content": content})
        return self.encode_messages(messages)

    def encode_messages(
        self,
        messages: Sequence[dict[str, Any]],
        *,
        add_generation_prompt: bool = True,
        with_pixels: bool = True,
    ) -> ModelInputs:
        """Chat messages → model inputs. Content is a string or a list of parts:
        {"type": "text", "text": str}, {"type": "image", "image": uint8 [H, W, 3]},
        {"type": "video", "video": VideoInput}. Images/frames must be multiples of 28 pixels per side.
        `with_pixels=False` leaves `pixel_values` None (training patchifies its frames on the GPU)."""
        ids: list[int] = []
        pixels: list[np.ndarray] = []
        grids: list[tuple[int, int, int]] = []
        prefix_len = 0
        if not messages or messages[0]["role"] != "system":
            ids += self.tokenizer.encode(f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n")
        for message in messages:
            ids += self.tokenizer.encode(f"<|im_start|>{message['role']}\n")
            content = message["content"]
            parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
            for part in parts:
                kind = part.get("type")
                if kind == "text":
                    ids += self.tokenizer.encode(part["text"])
                elif kind == "image":
                    frame = np.asarray(part["image"])
                    ids += self._visual_block(frame[None], None, self.image_token_id, grids)
                    pixels.append(frame[None])
                elif kind == "video":
                    video: VideoInput = part["video"]
                    ids += self._visual_block(video.frames, video.timestamps, self.video_token_id, grids)
                    pixels.append(video.frames)
                    prefix_len = prefix_len or len(ids)
                else:
                    raise ValueError(f"unknown content part type {kind!r}")
            ids += self.tokenizer.encode("<|im_end|>\n")
        if add_generation_prompt:
            ids += self.tokenizer.encode("<|im_start|>assistant\n")
        input_ids = torch.tensor(ids, dtype=torch.long)
        positions, delta = mrope_positions(
            input_ids, grids, (self.image_token_id, self.video_token_id), self.merge
        )
        pixel_values = torch.cat([self.patchify(p) for p in pixels]) if pixels and with_pixels else None
        return ModelInputs(input_ids, positions, pixel_values, grids, delta, prefix_len)

    def _visual_block(
        self, frames: np.ndarray, timestamps: Sequence[float] | None, pad_id: int, grids: list
    ) -> list[int]:
        """`<|vision_start|>` [`<|frame|>` secs] N×pad … `<|vision_end|>`; appends one grid per frame."""
        n_frames, height, width = frames.shape[:3]
        if height % self.factor or width % self.factor:
            raise ValueError(f"frames are {height}x{width}; both sides must be multiples of {self.factor}")
        h, w = height // self.patch, width // self.patch
        per_frame = (h // self.merge) * (w // self.merge)
        ids = [self.vision_start_id]
        for i in range(n_frames):
            if timestamps is not None:
                ids += [self.frame_token_id, *self._time_ids(float(timestamps[i]))]
            ids += [pad_id] * per_frame
            grids.append((1, h, w))
        return ids + [self.vision_end_id]

    def _time_ids(self, seconds: float) -> list[int]:
        """A frame's `secs` tokens, remembered: the same few hundred times recur in every prompt, and
        encoding them was half of what drawing a training example cost."""
        text = f"{seconds:.1f}"
        if text not in self._times:
            self._times[text] = self.tokenizer.encode(text)
        return self._times[text]

    # ---- pixels ---------------------------------------------------------------------------------------

    def patchify(self, frames: np.ndarray | Tensor) -> Tensor:
        """uint8 [F, H, W, 3] → normalised patches [F·h·w, 3, p, p] in per-frame raster order, on the
        frames' device (a tensor already on the GPU stays there)."""
        if frames.ndim != 4 or frames.shape[-1] != 3:
            raise ValueError(f"frames must be [F, H, W, 3], got {tuple(frames.shape)}")
        if isinstance(frames, np.ndarray):
            frames = torch.from_numpy(np.ascontiguousarray(frames))
        x = frames.float()  # [F, H, W, 3]
        if self.pre.get("do_rescale", True):
            x = x * float(self.pre["rescale_factor"])
        if self.pre.get("do_normalize", True):
            mean, std = self._normalisers(x.device)
            x = (x - mean) / std
        n, height, width, c = x.shape
        p = self.patch
        x = x.view(n, height // p, p, width // p, p, c).permute(0, 1, 3, 5, 2, 4)  # [F, h, w, 3, p, p]
        return x.reshape(-1, c, p, p)

    def _normalisers(self, device: torch.device) -> tuple[Tensor, Tensor]:
        """The mean and std per channel on `device`, made once: a small tensor made on a GPU from a list
        is a blocking copy, which made every training step wait for the previous one to finish."""
        if device not in self._on_device:
            values = torch.tensor([self.pre["image_mean"], self.pre["image_std"]], dtype=torch.float32)
            mean, std = values.to(device)
            self._on_device[device] = (mean, std)
        return self._on_device[device]

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)


def mrope_positions(
    input_ids: Tensor, grids: Sequence[tuple[int, int, int]], visual_ids: Sequence[int], merge: int = 2
) -> tuple[Tensor, int]:
    """Spec §4.6: text advances all three channels by one; a frame with merged grid gh × gw starting at
    s gets t = s, h = s + row, w = s + col; what follows starts at (max so far) + 1.

    Returns positions [3, N] and rope_delta = max position + 1 − N.
    """
    ids = input_ids.cpu().numpy()
    is_visual = np.isin(ids, list(visual_ids))
    out = np.empty((3, len(ids)), dtype=np.int64)
    # Runs of text and of placeholders, each filled with array slices: a per-token loop cost ~1.5 ms a
    # training prompt (most of drawing an example) and scales with an hour-long prompt's length.
    cuts = np.flatnonzero(np.diff(is_visual.astype(np.int8))) + 1
    next_pos, frame = 0, 0
    for a, b in zip([0, *cuts.tolist()], [*cuts.tolist(), len(ids)], strict=True):
        if a == b:  # an empty prompt
            continue
        if not is_visual[a]:
            out[:, a:b] = next_pos + np.arange(b - a)
            next_pos += b - a
            continue
        i = a
        while i < b:  # a run of placeholders holds one or more frames back to back
            if frame >= len(grids):
                raise ValueError("more visual placeholder runs than grids")
            _, h, w = grids[frame]
            gh, gw = h // merge, w // merge
            n = gh * gw
            if i + n > b:
                raise ValueError(f"frame {frame} needs {n} consecutive placeholders at token {i}")
            out[0, i : i + n] = next_pos
            out[1, i : i + n] = next_pos + np.repeat(np.arange(gh), gw)
            out[2, i : i + n] = next_pos + np.tile(np.arange(gw), gh)
            next_pos += max(gh, gw)
            i, frame = i + n, frame + 1
    if frame != len(grids):
        raise ValueError(f"{len(grids)} grids but {frame} visual runs in the prompt")
    return torch.from_numpy(out), next_pos - len(ids)
