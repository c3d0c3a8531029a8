"""Generation engines behind one interface (`base.Engine`), chosen by name.

`load_engine("native" | "openai" | "sglang", **options)` builds one. Each kind's module is imported
only when asked for, so choosing `openai` never imports torch and choosing `native` never needs
sglang.
"""

from __future__ import annotations

from typing import Any

from model_runtime.engine.base import Completion, Engine, GenerationRequest, VideoInput

ENGINE_KINDS = ("native", "openai", "sglang")

__all__ = ["ENGINE_KINDS", "Completion", "Engine", "GenerationRequest", "VideoInput", "load_engine"]


def load_engine(kind: str, **options: Any) -> Engine:
    """An engine of `kind`, built with the kind's own keyword arguments.

    - native: `checkpoint`, `device`, `dtype`, `attn_impl`, `moe_impl`, `quantize`, `index_fp8`, `max_batch`,
      `cuda_graphs` (NativeEngine),
      and `tp`: above 1, `model_runtime.parallel.TensorParallelEngine` over that many processes/GPUs
    - openai: `base_url`, `model`, `api_key`, `timeout_s`, `max_retries`, `max_concurrency` (OpenAIEngine)
    - sglang: `model_path` plus any `sglang.Engine` option (SGLangEngine; needs the Keye fork)
    """
    if kind == "native":
        tp = int(options.pop("tp", 1) or 1)
        if tp > 1:
            from model_runtime.parallel import TensorParallelEngine

            return TensorParallelEngine(**options, tp=tp)
        from model_runtime.engine.native import NativeEngine

        return NativeEngine(**options)
    if kind == "openai":
        from model_runtime.engine.openai_engine import OpenAIEngine

        return OpenAIEngine(**options)
    if kind == "sglang":
        from model_runtime.engine.sglang_engine import SGLangEngine

        return SGLangEngine(**options)
    raise ValueError(f"unknown engine kind {kind!r} (expected one of {', '.join(ENGINE_KINDS)})")
