"""Tests for catsdogs.training.hardware: device choice and precision fallbacks, with the reason given."""

from __future__ import annotations

import contextlib

import pytest
import torch

import catsdogs.training.hardware as hardware
from catsdogs.errors import CatsdogsError
from catsdogs.training.hardware import FP32, select_device, select_precision

CPU = torch.device("cpu")
CUDA = torch.device("cuda")


@pytest.fixture
def no_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.mark.parametrize("device", [CPU, CUDA, torch.device("mps")])
def test_fp32_stays_fp32_everywhere(device: torch.device) -> None:
    precision = select_precision("fp32", device)
    assert precision is FP32
    assert (precision.name, precision.dtype, precision.scale_grads) == ("fp32", None, False)


def test_bf16_on_a_cpu_without_bf16_falls_back_to_fp32_and_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)
    precision = select_precision("bf16", CPU)
    assert (precision.name, precision.dtype) == ("fp32", None)
    assert "bf16 requested" in precision.note and "no native bf16" in precision.note


def test_bf16_on_a_cpu_with_bf16_uses_bf16_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: True)
    for name in ("bf16", "auto"):
        precision = select_precision(name, CPU)
        assert (precision.name, precision.dtype, precision.scale_grads) == ("bf16", torch.bfloat16, False)


@pytest.mark.parametrize("has_bf16", [True, False])
def test_fp16_on_a_cpu_falls_back_to_fp32_with_a_note(monkeypatch: pytest.MonkeyPatch, has_bf16: bool) -> None:
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: has_bf16)
    precision = select_precision("fp16", CPU)
    assert (precision.name, precision.dtype) == ("fp32", None)
    assert "fp16 is for GPUs" in precision.note


def test_auto_on_a_cpu_without_bf16_is_plain_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: False)
    assert select_precision("auto", CPU) is FP32


@pytest.mark.parametrize(("name", "capability", "expected"), [
    ("auto", (9, 0), ("bf16", torch.bfloat16, False)),  # H100/H200
    ("auto", (8, 0), ("bf16", torch.bfloat16, False)),  # A100
    ("auto", (7, 5), ("fp16", torch.float16, True)),  # T4: bf16 only emulated, so fp16
    ("auto", (7, 0), ("fp16", torch.float16, True)),  # V100
    ("bf16", (8, 6), ("bf16", torch.bfloat16, False)),
    ("bf16", (7, 5), ("fp32", None, False)),
    ("fp16", (9, 0), ("fp16", torch.float16, True)),
])
def test_precision_on_cuda(monkeypatch: pytest.MonkeyPatch, name: str, capability: tuple, expected: tuple) -> None:
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args, **kwargs: capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)  # as with emulation
    precision = select_precision(name, CUDA)
    assert (precision.name, precision.dtype, precision.scale_grads) == expected
    if name == "bf16" and expected[0] == "fp32":
        assert "this GPU has no native bf16; try --precision fp16" in precision.note


@pytest.mark.parametrize(("name", "macos14", "expected"), [
    ("auto", True, ("fp32", None, False)),
    ("fp16", False, ("fp16", torch.float16, True)),  # fp16 gradients underflow without scaling
    ("bf16", True, ("bf16", torch.bfloat16, False)),
    ("bf16", False, ("fp32", None, False)),
])
def test_precision_on_mps(monkeypatch: pytest.MonkeyPatch, name: str, macos14: bool, expected: tuple) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: macos14)
    precision = select_precision(name, torch.device("mps"))
    assert (precision.name, precision.dtype, precision.scale_grads) == expected


def test_fp32_autocast_is_a_no_op() -> None:
    assert isinstance(FP32.autocast(CPU), contextlib.nullcontext)


def test_auto_device_falls_back_to_the_cpu(no_accelerators: None) -> None:
    assert select_device("auto") == CPU
    assert select_device("cpu") == CPU


def test_auto_device_prefers_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto") == CUDA


def test_cuda_on_a_machine_without_cuda_is_a_clear_error(no_accelerators: None) -> None:
    with pytest.raises(CatsdogsError, match="--device cuda: no CUDA GPU is visible to PyTorch; "
                                            "use --device cpu or auto"):
        select_device("cuda")


def test_mps_where_there_is_none_is_a_clear_error(no_accelerators: None) -> None:
    with pytest.raises(CatsdogsError, match="--device mps: Apple's MPS backend is not available"):
        select_device("mps")


def test_an_unknown_device_lists_the_choices() -> None:
    with pytest.raises(CatsdogsError, match="unknown device 'tpu'; choose auto, cpu, cuda or mps"):
        select_device("tpu")


def test_out_of_memory_is_one_line_with_advice_for_the_work_that_failed() -> None:
    gpu = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\nmore detail")
    assert hardware.out_of_memory_message(gpu, training=True) == (
        "out of memory (CUDA out of memory. Tried to allocate 2.00 GiB): train the same batches in passes with "
        "--micro-batch N, or use a smaller --batch-size or --image-size")
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried ...")
    assert hardware.out_of_memory_message(cpu, training=False).endswith(
        ": free the memory other programs hold, or use --device cpu")
    assert hardware.out_of_memory_message(RuntimeError("shape mismatch"), training=True) is None
