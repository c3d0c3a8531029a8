"""Compile every Triton kernel for sm_90 (H100/H200) without a GPU and check its shared memory.

`python -m kernels.compile_check` (run it before spending a device call; tests/kernels/test_hopper_compile.py
runs it in CI). The CPU interpreter runs kernels as Python, so it misses what only the GPU compiler
rejects: a global that is not a `tl.constexpr`, a default argument the code generator cannot type, a
tile that needs more shared memory than an SM has. Each of those once cost a device call. Here Triton's
own compiler builds each kernel for a Hopper target at its production tiles (the sample top-k and the sort
union at smaller sort sizes, which compile 4-6x faster), with the divisibility hints real launches give
pointers and integers that are multiples of 16 (they change layouts and shared memory). The Triton installed
here may be newer than the GPU machine's, and layouts differ between versions (the union kernel that
needed 256 KB under the H200's Triton 3.6 needs 16 KB under 3.9), so this catches front-end errors
for certain and shared-memory overflows only where this version has them too. Needs TRITON_INTERPRET
unset (interpreted kernels cannot be compiled).
"""

from __future__ import annotations

import sys
import time

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from kernels.fused_moe import kernel as moe
from kernels.fused_moe import slots as moe_slots
from kernels.indexer import decode as indexer_decode
from kernels.indexer import kernel as indexer
from kernels.indexer import quantize as indexer_quantize
from kernels.rms_norm import kernel as norm
from kernels.sparse_attention import kernel as attention
from kernels.sparse_attention import union
from kernels.sparse_decode import kernel as decode
from kernels.topk import bound, cooperative, minmax
from kernels.topk import kernel as topk

HOPPER_SMEM = 232448  # bytes of shared memory one H100/H200 program may use

BF16 = {name: "*bf16" for name in ("q_ptr", "k_ptr", "v_ptr", "o_ptr", "x_ptr", "w_ptr", "h_ptr", "y_ptr")}
FP32 = {
    name: "*fp32" for name in ("scores_ptr", "part_acc_ptr", "part_max_ptr", "part_sum_ptr", "weights_ptr")
}
MOE = {"ws_ptr": "*fp32"}
INDEXER_POINTERS = {"w_ptr": "*fp32", "out_ptr": "*fp32", "q_scale_ptr": "*fp32", "k_scale_ptr": "*fp32"}
INDEXER_SCORES = {  # the score kernel's bf16 launch at Keye's shapes, with the group extremes of "minmax"
    "H": 16,
    "HP": 16,
    "D": 64,
    "BLOCK_D": 64,
    "BLOCK_T": 8,
    "BLOCK_S": 64,
    "KEY_TILES": 32,
    "FILL_FUTURE": False,
    "PRECISION": "tf32",
    "FP8": False,
    "GROUP": minmax.GROUP,
    "OFFSETS_32": True,
    "HEAD_MMA": False,
    "INTERPRETED": False,
}
FLOATS = ("qk_scale", "eps")

# (kernel, constexprs, pointer dtypes beyond the defaults, num_warps, num_stages[, ptxas register cap])
CASES = [
    (topk._select_topk_kernel, {"K": 2048, "BLOCK": 2048}, {}, 8, 3),
    (topk._select_topk_compact_kernel, {"K": 2048, "BLOCK": 2048, "GROUP": 0}, {}, 8, 3),
    (topk._select_topk_sample_kernel, {"K": 64, "SAMPLE": 256, "CAP": 256, "BLOCK": 2048}, {}, 8, 3),
    (topk._split_hist_kernel, {"K": 2048, "SLICE": 2048}, {}, 8, 3),
    (topk._split_level_kernel, {"K": 2048, "LEVEL": 2, "PART_BLOCK": 8}, {}, 4, 3),
    (topk._split_refine_kernel, {"K": 2048, "SLICE": 2048}, {}, 8, 3),
    (topk._split_compact_kernel, {"K": 2048, "SLICE": 2048}, {}, 8, 3),
    (topk._split_finish_kernel, {"K": 2048, "BLOCK": 2048}, {}, 8, 3),
    (topk._select_topk_compact_kernel, {"K": 2048, "BLOCK": 2048, "GROUP": bound.GROUP}, {}, 8, 3),  # "bound"
    (
        minmax._minmax_stats_kernel,
        {"BLOCK": minmax.STATS_LANES, "GROUP": minmax.GROUP, "INTERPRETED": False},
        {},
        8,
        3,
    ),
    (  # as it launches: its lanes, warps and register cap
        minmax._select_topk_minmax_kernel,
        {
            "K": 2048,
            "BLOCK": minmax.LANES,
            "GROUP": minmax.GROUP,
            "BOUND_STEPS": minmax.BOUND_STEPS,
            "LAST_BITS": minmax.LAST_BITS,
            "TOP_FROM_BOUND": minmax.TOP_FROM_BOUND,
            "BUCKET_FINISH": minmax.BUCKET_FINISH,
            "ROW_TOP": minmax.ROW_TOP,
            "WHOLE_GROUPS": minmax.GROUP_LOADS,
        },
        {},
        minmax.WARPS,
        3,
        minmax.MAX_REGISTERS,
    ),
    (
        cooperative._cooperative_topk_kernel,
        {"K": 2048, "SLICE": 1024, "PART_BLOCK": 128, "BLOCK": 2048, "PHASE": 0},
        {},
        8,
        3,
    ),
    (union._set_bits_kernel, {"BLOCK_Q": 32, "BLOCK_K": 2048, "RUNS": True}, {}, 8, 3),
    (union._read_bits_kernel, {"WIDE": 1024, "WORDS": 64}, {}, 4, 3),
    (union._mark_owners_kernel, {"BLOCK_Q": 32, "BLOCK_K": 2048}, {}, 8, 3),
    (union._block_union_kernel, {"BLOCK_Q": 8, "BLOCK_QP": 8, "BLOCK_K": 256, "Q_BITS": 3}, {}, 8, 3),
    (
        attention._sparse_attention_kernel,
        {
            "G": 8,
            "D": 128,
            "BLOCK_D": 128,
            "BLOCK_Q": 8,
            "BLOCK_M": 64,
            "BLOCK_N": 32,
            "PRECISION": "tf32",
            "OFFSETS_32": True,
        },
        {},
        4,
        2,
    ),
    (
        decode._sparse_decode_split_kernel,
        {"PAGE": 64, "G": 8, "D": 128, "BLOCK_D": 128, "BLOCK_M": 16, "BLOCK_N": 64, "PRECISION": "tf32"},
        {},
        4,
        3,
    ),
    (decode._sparse_decode_merge_kernel, {"HQ": 32, "D": 128, "BLOCK_D": 128, "BLOCK_SPLIT": 4}, {}, 4, 3),
    (indexer._indexer_scores_kernel, INDEXER_SCORES, INDEXER_POINTERS, 4, 3),
    (indexer._indexer_scores_kernel, {**INDEXER_SCORES, "GROUP": 0}, INDEXER_POINTERS, 4, 3),  # scores alone
    (
        indexer._indexer_scores_kernel,
        {**INDEXER_SCORES, "FP8": True},  # the e4m3 path
        {**INDEXER_POINTERS, "q_ptr": "*fp8e4nv", "k_ptr": "*fp8e4nv"},
        4,
        3,
    ),
    (
        indexer._indexer_scores_kernel,
        {**INDEXER_SCORES, "FP8": True, "HEAD_MMA": True},  # the e4m3 path, heads summed by a product
        {**INDEXER_POINTERS, "q_ptr": "*fp8e4nv", "k_ptr": "*fp8e4nv"},
        4,
        3,
        indexer.E4M3_MMA_MAX_REGISTERS,  # its default launch: five programs per SM
    ),
    (
        indexer_quantize._quantize_kernel,
        {"D": 64, "BLOCK_R": 64, "NORM": 0.125, "INTERPRETED": False},
        {"h_ptr": "*bf16", "q_ptr": "*fp8e4nv", "scale_ptr": "*fp32"},
        4,
        3,
    ),
    (  # the widest rows it takes: bf16 at 256, fp32 at 128 (the [D, D] matrix must fit shared memory)
        indexer_quantize._quantize_kernel,
        {"D": 256, "BLOCK_R": 64, "NORM": 0.0625, "INTERPRETED": False},
        {"h_ptr": "*bf16", "q_ptr": "*fp8e4nv", "scale_ptr": "*fp32"},
        4,
        3,
    ),
    (
        indexer_quantize._quantize_kernel,
        {"D": 128, "BLOCK_R": 64, "NORM": 1.0, "INTERPRETED": False},
        {"x_ptr": "*fp32", "h_ptr": "*fp32", "q_ptr": "*fp8e4nv", "scale_ptr": "*fp32"},
        4,
        3,
    ),
    (
        indexer_decode._indexer_decode_kernel,
        {"H": 16, "D": 64, "BLOCK_H": 16, "BLOCK_D": 64, "BLOCK_S": 128, "PAGE": 64, "PRECISION": "tf32"},
        {"w_ptr": "*fp32", "out_ptr": "*fp32"},
        4,
        2,
    ),
    (
        moe._gate_up_kernel,
        {"TOPK": 8, "BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "PRECISION": "tf32", "FP8": False},
        MOE,
        8,
        3,
    ),
    (
        norm._rms_norm_kernel,
        {"HALF": 64, "BLOCK_R": 32, "BLOCK_H": 64, "ROTARY": True},
        {"cos_ptr": "*fp32", "sin_ptr": "*fp32", "out_ptr": "*bf16"},
        4,
        3,
    ),
    (moe_slots._chunk_counts_kernel, {"BINS": 256, "CHUNK": 1024}, {"ids_ptr": "*i64"}, 4, 3),
    (
        moe_slots._place_slots_kernel,
        {"E": 128, "BINS": 256, "BLOCK_M": 128, "CHUNK": 1024, "ROWS": 32},
        {"ids_ptr": "*i64"},
        8,
        3,
    ),
    (moe_slots._combine_slots_kernel, {"TOPK": 8, "BLOCK": 1024}, {"out_ptr": "*bf16"}, 4, 3),
    (
        moe._down_kernel,
        {"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "PRECISION": "tf32", "FP8": False},
        MOE,
        8,
        3,
    ),
]


def arg_type(name: str, constexprs: dict, pointers: dict) -> str:
    """Triton's signature string for one argument: typed pointers (int32 unless named), fp32 scale
    scalars, int32 for the other scalars."""
    if name in constexprs:
        return "constexpr"
    if name.endswith("_ptr"):
        return {**BF16, **FP32, **pointers}.get(name, "*i32")
    return "fp32" if name in FLOATS else "i32"


def signature(fn: triton.JITFunction, constexprs: dict, pointers: dict) -> dict[str, str]:
    return {name: arg_type(name, constexprs, pointers) for name in fn.arg_names}


def compile_for_hopper(
    fn: triton.JITFunction, constexprs: dict, pointers: dict, warps: int, stages: int, max_registers: int = 0
) -> int:
    """Shared memory in bytes of `fn` compiled for sm_90 (under ptxas' register cap when `max_registers`, as a
    launch passes `maxnreg`); raises what the compiler raises."""
    sig = signature(fn, constexprs, pointers)
    # Real launches mark every pointer and integer divisible by 16 as such; at production shapes that is
    # all of them (sizes, strides, offsets of 0), never the float scalars.
    divisible = {
        (i,): [["tt.divisibility", 16]]
        for i, name in enumerate(fn.arg_names)
        if sig[name] == "i32" or name.endswith("_ptr")
    }
    source = ASTSource(fn=fn, signature=sig, constexprs=constexprs, attrs=divisible)
    options = {
        "num_warps": warps,
        "num_stages": stages,
        **({"maxnreg": max_registers} if max_registers else {}),
    }
    return int(triton.compile(source, target=GPUTarget("cuda", 90, 32), options=options).metadata.shared)


def main() -> int:
    """Compile all CASES, one line per kernel; exit status 1 if any fails or overflows shared memory."""
    if not isinstance(topk._select_topk_kernel, triton.JITFunction):
        print("error: TRITON_INTERPRET is set; unset it to compile for the GPU", file=sys.stderr)
        return 2
    failed = 0
    for fn, constexprs, pointers, warps, stages, *cap in CASES:
        began = time.monotonic()
        try:
            smem = compile_for_hopper(fn, constexprs, pointers, warps, stages, *cap)
            verdict = "ok" if smem <= HOPPER_SMEM else f"OVER {HOPPER_SMEM} B of shared memory"
        except Exception as exc:  # report every kernel, not only the first failure
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            smem, verdict = -1, f"FAILED: {last[:200]}"
        failed += verdict != "ok"
        print(f"{fn.__name__:32s} smem {smem:7d} B  {time.monotonic() - began:5.1f}s  {verdict}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
