"""The `sglang` engine: the Kwai-Keye SGLang fork's `sglang.Engine`, in-process, on Hopper GPUs.

The fork (branch `keye-vl-v2-30b-release` of Kwai-Keye/sglang) is the official server of
Keye-VL-2.0 with the DeepGEMM/EffectiveKernels sparse-attention path. This wrapper is exercised only
where that fork is installed: it is NOT installed in this project's environments or CI, so only its
refusal without the fork and its prompt building are tested here. Without the fork it raises
`EngineUnavailableError` at construction.

The fork decodes videos itself from `VideoInput.source`; the frames in the `VideoInput` are not sent.
The prompt is the Keye ChatML with one `<|vision_start|><|video_pad|><|vision_end|>` placeholder
that the fork's processor expands per frame (spec §4.4, §6).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from model_runtime.engine.base import Completion, GenerationRequest

VIDEO_PLACEHOLDER = "<|vision_start|><|video_pad|><|vision_end|>"
DEFAULT_SYSTEM = "You are a helpful assistant."


class EngineUnavailableError(RuntimeError):
    """The engine's backing library is not installed here."""


def _import_sglang() -> Any:
    try:
        import sglang
    except ImportError as err:
        raise EngineUnavailableError(
            "the 'sglang' engine needs the Kwai-Keye SGLang fork (github.com/Kwai-Keye/sglang, branch "
            "keye-vl-v2-30b-release) installed on a Hopper GPU host; it is not installed here. "
            "Use engine 'native' or point engine 'openai' at the fork's launch_server instead."
        ) from err
    if not hasattr(sglang, "Engine"):
        raise EngineUnavailableError(f"the installed sglang ({sglang.__file__}) has no Engine class")
    return sglang


def build_prompt(request: GenerationRequest) -> str:
    """Keye ChatML for one user turn, the video placeholder before the text (spec §6)."""
    system = request.system if request.system is not None else DEFAULT_SYSTEM
    video = VIDEO_PLACEHOLDER if request.video is not None else ""
    return (
        f"<|im_start|>system\n{system}<|im_end|>\n"
        f"<|im_start|>user\n{video}{request.prompt}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def sampling_params(request: GenerationRequest) -> dict[str, Any]:
    """SGLang's sampling parameters for one request."""
    params: dict[str, Any] = {
        "max_new_tokens": request.max_new_tokens,
        "temperature": request.temperature,
        "top_p": request.top_p,
        "top_k": request.top_k if request.top_k > 0 else -1,
    }
    if request.stop:
        params["stop"] = list(request.stop)
    if request.seed is not None:
        params["sampling_seed"] = request.seed
    return params


class SGLangEngine:
    """`Engine` over the fork's in-process `sglang.Engine(model_path=..., **engine_options)`."""

    name = "sglang"

    def __init__(self, model_path: str, **engine_options: Any) -> None:
        sglang = _import_sglang()
        self._engine = sglang.Engine(model_path=model_path, **engine_options)

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        for request in requests:
            if request.video is not None and not request.video.source:
                raise ValueError("the sglang engine decodes videos itself: the VideoInput needs a source")
        outputs = self._engine.generate(
            prompt=[build_prompt(r) for r in requests],
            sampling_params=[sampling_params(r) for r in requests],
            video_data=[[r.video.source] if r.video is not None else None for r in requests],
            return_logprob=True,
        )
        return [_completion(output) for output in outputs]

    def close(self) -> None:
        self._engine.shutdown()


def _completion(output: dict[str, Any]) -> Completion:
    meta = output["meta_info"]
    # output_token_logprobs: (logprob, token_id, token_text or None) per generated token
    triples = meta.get("output_token_logprobs") or []
    finish = (meta.get("finish_reason") or {}).get("type", "stop")
    return Completion(
        text=output["text"],
        token_ids=[int(t[1]) for t in triples],
        token_logprobs=[float(t[0]) for t in triples],
        prompt_tokens=int(meta.get("prompt_tokens", 0)),
        finish_reason="length" if finish == "length" else "stop",
    )
