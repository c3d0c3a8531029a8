"""Fused mixture-of-experts FFN: expert sort + grouped GEMMs (Triton + PyTorch reference), bf16 or FP8 experts."""

from kernels.fused_moe.kernel import fused_moe, fused_moe_fp8, sort_slots_by_expert
from kernels.fused_moe.reference import fused_moe_fp8_ref, fused_moe_ref

__all__ = ["fused_moe", "fused_moe_fp8", "fused_moe_fp8_ref", "fused_moe_ref", "sort_slots_by_expert"]
