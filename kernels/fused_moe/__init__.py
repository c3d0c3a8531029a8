"""Fused mixture-of-experts FFN: expert sort + grouped GEMMs (Triton + PyTorch reference), bf16 or FP8 experts."""

from kernels.fused_moe.kernel import fused_moe, fused_moe_fp8
from kernels.fused_moe.reference import fused_moe_fp8_ref, fused_moe_ref
from kernels.fused_moe.slots import sort_slots_by_expert

__all__ = ["fused_moe", "fused_moe_fp8", "fused_moe_fp8_ref", "fused_moe_ref", "sort_slots_by_expert"]
