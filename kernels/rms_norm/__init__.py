"""RMSNorm, optionally followed by rotary, in one pass (Triton + the runtime's PyTorch oracle)."""

from kernels.rms_norm.kernel import rms_norm
from kernels.rms_norm.reference import rms_norm_ref

__all__ = ["rms_norm", "rms_norm_ref"]
