"""The `sglang` engine without the Keye fork: a clear refusal, and the prompt it would send."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from model_runtime.engine import load_engine
from model_runtime.engine.base import GenerationRequest, VideoInput
from model_runtime.engine.sglang_engine import EngineUnavailableError, build_prompt, sampling_params

FORK_INSTALLED = importlib.util.find_spec("sglang") is not None


@pytest.mark.skipif(FORK_INSTALLED, reason="sglang is installed here; the refusal cannot be observed")
def test_without_the_fork_construction_says_what_to_install() -> None:
    with pytest.raises(EngineUnavailableError, match="Kwai-Keye SGLang fork") as info:
        load_engine("sglang", model_path="/nonexistent")
    assert "openai" in str(info.value)  # it names the alternative


def test_prompt_puts_the_video_placeholder_before_the_question() -> None:
    video = VideoInput(frames=np.zeros((2, 28, 28, 3), np.uint8), timestamps=[0.0, 0.5], source="/v.mp4")
    prompt = build_prompt(GenerationRequest(prompt="When?", video=video))
    assert prompt == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "<|im_start|>user\n<|vision_start|><|video_pad|><|vision_end|>When?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert "<|video_pad|>" not in build_prompt(GenerationRequest(prompt="hi", system="Be brief."))


def test_sampling_params_map_greedy_and_no_topk() -> None:
    params = sampling_params(GenerationRequest(prompt="x", max_new_tokens=7, stop=("\n",), seed=3))
    assert params == {
        "max_new_tokens": 7,
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": -1,
        "stop": ["\n"],
        "sampling_seed": 3,
    }


def test_unknown_engine_kind_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown engine kind 'vllm'"):
        load_engine("vllm")
