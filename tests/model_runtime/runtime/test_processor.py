"""Processor: prompt layout, mRoPE positions, pixel patches, tokenizer — on hand-built examples."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model_runtime.engine.base import VideoInput
from model_runtime.processor import KeyeProcessor, mrope_positions
from model_runtime.tokenizer import build_tiny_tokenizer


@pytest.fixture(scope="module")
def processor(tiny_ckpt) -> KeyeProcessor:
    return KeyeProcessor.from_pretrained(tiny_ckpt)


def test_mrope_positions_two_frames_by_hand() -> None:
    text, pad = 1, 9
    # a b [frame 1: 2×3 merged tokens] c [frame 2: 2×3] d e
    ids = torch.tensor([text, text] + [pad] * 6 + [text] + [pad] * 6 + [text, text])
    positions, delta = mrope_positions(ids, [(1, 4, 6), (1, 4, 6)], visual_ids=[pad], merge=2)
    expected = torch.tensor(
        [
            [0, 1, 2, 2, 2, 2, 2, 2, 5, 6, 6, 6, 6, 6, 6, 9, 10],  # t
            [0, 1, 2, 2, 2, 3, 3, 3, 5, 6, 6, 6, 7, 7, 7, 9, 10],  # h = start + row
            [0, 1, 2, 3, 4, 2, 3, 4, 5, 6, 7, 8, 6, 7, 8, 9, 10],  # w = start + col
        ]
    )
    assert torch.equal(positions, expected)
    assert delta == 11 - 17  # the next token (index 17) sits at position 11


def test_mrope_positions_of_frames_back_to_back_in_one_placeholder_run() -> None:
    text, pad = 1, 9
    # a [frame 1: 1×2] [frame 2: 1×2] b — images without timestamps between them
    ids = torch.tensor([text] + [pad] * 4 + [text])
    positions, delta = mrope_positions(ids, [(1, 2, 4), (1, 2, 4)], visual_ids=[pad], merge=2)
    expected = torch.tensor([[0, 1, 1, 3, 3, 5], [0, 1, 1, 3, 3, 5], [0, 1, 2, 3, 4, 5]])
    assert torch.equal(positions, expected)
    assert delta == 6 - 6
    empty, none = mrope_positions(torch.tensor([], dtype=torch.long), [], visual_ids=[pad])
    assert empty.shape == (3, 0) and none == 0


def test_mrope_positions_refuse_mismatched_grids() -> None:
    ids = torch.tensor([1] + [9] * 4 + [1])
    with pytest.raises(ValueError, match="grids"):
        mrope_positions(ids, [(1, 4, 4), (1, 4, 4)], visual_ids=[9])
    with pytest.raises(ValueError, match="consecutive placeholders"):
        mrope_positions(ids, [(1, 4, 6)], visual_ids=[9])


def test_prompt_layout_with_a_two_frame_video(processor: KeyeProcessor) -> None:
    frames = np.zeros((2, 28, 56, 3), dtype=np.uint8)  # 1×2 merged tokens per frame
    video = VideoInput(frames=frames, timestamps=[0.0, 1.5])
    inputs = processor.encode_request("Where?", video)
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|>"
        "<|frame|>0.0<|video_pad|><|video_pad|><|frame|>1.5<|video_pad|><|video_pad|>"
        "<|vision_end|>Where?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = inputs.input_ids.tolist()
    assert processor.decode(ids, skip_special_tokens=False) == expected
    assert ids == processor.tokenizer.encode(expected)
    tok = processor.tokenizer
    frame_at = [i for i, t in enumerate(ids) if t == tok.token_id("<|frame|>")]
    # Each timestamp is one token per character: digits are never merged.
    assert [tok.decode([t]) for t in ids[frame_at[1] + 1 : frame_at[1] + 4]] == ["1", ".", "5"]
    assert ids[inputs.prefix_len - 1] == tok.token_id("<|vision_end|>")
    assert inputs.grids == [(1, 2, 4), (1, 2, 4)]
    assert inputs.pixel_values.shape == (16, 3, 14, 14)
    assert inputs.positions.shape == (3, len(ids))
    assert inputs.rope_delta == int(inputs.positions.max()) + 1 - len(ids)


def test_custom_system_and_image_message(processor: KeyeProcessor) -> None:
    image = np.full((28, 28, 3), 255, dtype=np.uint8)
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What?"}]},
    ]
    inputs = processor.encode_messages(messages)
    text = processor.decode(inputs.input_ids.tolist(), skip_special_tokens=False)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>What?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert inputs.prefix_len == 0  # only a video opens a shareable prefix
    torch.testing.assert_close(inputs.pixel_values, torch.ones(4, 3, 14, 14))  # (1 − 0.5) / 0.5


def test_patches_are_normalised_raster_order(processor: KeyeProcessor) -> None:
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (2, 28, 42, 3), dtype=np.uint8)
    patches = processor.patchify(frames)  # [2·2·3, 3, 14, 14]
    assert patches.shape == (12, 3, 14, 14)
    # Frame 1, patch row 1, col 2 is the 5th patch (1·3 + 2) of frame 1.
    raw = torch.from_numpy(frames[1, 14:28, 28:42].astype(np.float32)).permute(2, 0, 1)
    torch.testing.assert_close(patches[6 + 5], (raw / 255 - 0.5) / 0.5)


def test_frames_must_be_multiples_of_28(processor: KeyeProcessor) -> None:
    video = VideoInput(frames=np.zeros((1, 30, 56, 3), dtype=np.uint8), timestamps=[0.0])
    with pytest.raises(ValueError, match="multiples of 28"):
        processor.encode_request("x", video)
    with pytest.raises(ValueError, match="unknown content part"):
        processor.encode_messages([{"role": "user", "content": [{"type": "audio"}]}])


def test_tiny_tokenizer_is_deterministic_and_has_keye_tokens() -> None:
    a, b = build_tiny_tokenizer(), build_tiny_tokenizer()
    assert a.to_str() == b.to_str()
    for token in (
        "<|frame|>",
        "<|video_pad|>",
        "<|vision_start|>",
        "<|im_end|>",
        "<think>",
        "<|fast_start|>",
    ):
        assert a.token_to_id(token) is not None
    assert a.decode(a.encode("12.5 - 30.0 seconds").ids) == "12.5 - 30.0 seconds"
