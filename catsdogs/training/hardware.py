"""Choosing the device and the numeric precision, and saying why."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from catsdogs.errors import CatsdogsError, first_line


def select_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple's MPS, then the CPU; an explicit choice must be available."""
    cuda, mps = torch.cuda.is_available(), torch.backends.mps.is_available()
    if name == "auto":
        return torch.device("cuda" if cuda else "mps" if mps else "cpu")
    if name == "cuda" and not cuda:
        raise CatsdogsError("--device cuda: no CUDA GPU is visible to PyTorch; use --device cpu or auto")
    if name == "mps" and not mps:
        raise CatsdogsError("--device mps: Apple's MPS backend is not available here; use --device cpu or auto")
    if name not in ("cpu", "cuda", "mps"):
        raise CatsdogsError(f"unknown device {name!r}; choose auto, cpu, cuda or mps")
    return torch.device(name)


def cpu_has_bf16() -> bool:
    """True when oneDNN has native bf16 kernels for this CPU (AVX512-BF16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


@dataclass(frozen=True)
class Precision:
    """The chosen numeric mode: autocast dtype (None for fp32), whether to scale gradients, why."""

    name: str
    dtype: torch.dtype | None
    scale_grads: bool
    note: str

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.dtype)


FP32 = Precision("fp32", None, False, "fp32")


def select_precision(name: str, device: torch.device) -> Precision:
    """Resolve auto|fp32|bf16|fp16 for `device`; unsupported requests fall back to fp32 and say so."""
    if name == "fp32":
        return FP32
    if device.type == "cuda":
        # Compute capability 8 (Ampere) and later compute in bf16; torch.cuda.is_bf16_supported()
        # also says yes to the slow emulation of older GPUs (T4, V100), where fp16 is the fast choice.
        bf16 = torch.cuda.get_device_capability(device)[0] >= 8
        if name == "bf16" or (name == "auto" and bf16):
            if not bf16:
                return Precision("fp32", None, False, "fp32 (this GPU has no native bf16; try --precision fp16)")
            return Precision("bf16", torch.bfloat16, False, "bf16 autocast")
        return Precision("fp16", torch.float16, True, "fp16 autocast with gradient scaling")
    if device.type == "cpu":
        if name == "fp16":
            return Precision("fp32", None, False, "fp32 (fp16 is for GPUs; on a CPU use bf16)")
        if cpu_has_bf16():
            return Precision("bf16", torch.bfloat16, False, "bf16 autocast (this CPU has native bf16)")
        if name == "bf16":
            return Precision("fp32", None, False, "fp32 (bf16 requested, but this CPU has no native bf16)")
        return FP32
    if device.type == "mps" and name == "fp16":
        return Precision("fp16", torch.float16, True, "fp16 autocast with gradient scaling")
    if device.type == "mps" and name == "bf16":  # MPS autocast computes bf16 from macOS 14
        if torch.backends.mps.is_macos_or_newer(14, 0):
            return Precision("bf16", torch.bfloat16, False, "bf16 autocast")
        return Precision("fp32", None, False, "fp32 (bf16 on MPS needs macOS 14; try --precision fp16)")
    return FP32


def is_out_of_memory(exc: BaseException) -> bool:
    """A GPU's (torch.OutOfMemoryError) or the CPU allocator's failure to allocate."""
    return type(exc).__name__ == "OutOfMemoryError" or "can't allocate memory" in str(exc)


def out_of_memory_message(exc: BaseException, training: bool) -> str | None:
    """One line for the user on running out of memory, with what to change; None for other errors.

    `training`: the work that failed trains models (train, compare), where smaller steps help.
    """
    if not is_out_of_memory(exc):
        return None
    advice = ("train the same batches in passes with --micro-batch N, or use a smaller --batch-size or "
              "--image-size" if training else "free the memory other programs hold, or use --device cpu")
    return f"out of memory ({first_line(exc)}): {advice}"
