"""Tests for catsdogs.training.hardware: what the chosen device and precision do, and the reason given."""

from __future__ import annotations

import pytest
import torch

import catsdogs.training.hardware as hardware
from catsdogs.errors import CatsdogsError
from catsdogs.training.hardware import FP32, select_device, select_precision

CPU = torch.device("cpu")
REQUESTS = ("auto", "fp32", "bf16", "fp16")
# Machines a choice is made for, faked where this one is not such a machine: the device, and the
# reduced-precision dtypes its hardware computes natively (the README's list: bf16 on CPUs with
# AVX512-BF16/AMX, on GPUs of compute capability 8 or later and on MPS from macOS 14; fp16 on
# every GPU and on MPS).
MACHINES = {
    "cpu-with-bf16": ("cpu", {"cpu_bf16": True}, {torch.bfloat16}),
    "cpu-without-bf16": ("cpu", {"cpu_bf16": False}, set()),
    "cuda-7.0-V100": ("cuda", {"capability": (7, 0)}, {torch.float16}),
    "cuda-7.5-T4": ("cuda", {"capability": (7, 5)}, {torch.float16}),
    "cuda-8.0-A100": ("cuda", {"capability": (8, 0)}, {torch.float16, torch.bfloat16}),
    "cuda-9.0-H100": ("cuda", {"capability": (9, 0)}, {torch.float16, torch.bfloat16}),
    "mps-macos-13": ("mps", {"macos14": False}, {torch.float16}),
    "mps-macos-14": ("mps", {"macos14": True}, {torch.float16, torch.bfloat16}),
}


@pytest.fixture(params=list(MACHINES))
def machine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> tuple[torch.device, set]:
    """(device, its native reduced-precision dtypes), with torch's answers faked to be that machine."""
    kind, fake, native = MACHINES[request.param]
    monkeypatch.setattr(hardware, "cpu_has_bf16", lambda: fake.get("cpu_bf16", False))
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *args, **kwargs: fake.get("capability", (0, 0)))
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: True)  # it says yes to emulation too
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: fake.get("macos14", False))
    return torch.device(kind), native


@pytest.mark.parametrize("request_name", REQUESTS)
def test_every_choice_computes_natively_and_scales_fp16_gradients(machine, request_name: str) -> None:
    device, native = machine
    chosen = select_precision(request_name, device)
    assert chosen.dtype is None or chosen.dtype in native, f"{chosen.name} is emulated on this machine"
    assert chosen.name == {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[chosen.dtype]
    assert chosen.scale_grads == (chosen.dtype == torch.float16)  # fp16 gradients underflow unscaled; bf16's do not
    assert chosen.note.startswith(chosen.name)


@pytest.mark.parametrize("request_name", ["bf16", "fp16"])
def test_an_explicit_request_is_granted_where_native_else_fp32_says_why(machine, request_name: str) -> None:
    device, native = machine
    wanted = {"bf16": torch.bfloat16, "fp16": torch.float16}[request_name]
    chosen = select_precision(request_name, device)
    if wanted in native:
        assert chosen.dtype == wanted
    else:
        assert chosen is not FP32 and chosen.dtype is None  # an fp32 of its own, with the reason
        assert chosen.note.startswith("fp32 (") and request_name in chosen.note


def test_fp32_is_fp32_on_every_machine(machine) -> None:
    device, _ = machine
    assert select_precision("fp32", device) is FP32


def test_auto_is_the_readmes_choice(machine) -> None:
    """bf16 where it is native (CPU or GPU), else fp16 on a GPU, else fp32; MPS stays at fp32 unless asked."""
    device, native = machine
    chosen = select_precision("auto", device).dtype
    if device.type == "mps":
        assert chosen is None
    elif torch.bfloat16 in native:
        assert chosen == torch.bfloat16
    else:
        assert chosen == (torch.float16 if device.type == "cuda" else None)


def compute_dtype(device: torch.device, request_name: str) -> tuple[torch.dtype, torch.dtype | None]:
    """The dtype a layer really computes in under the chosen precision's autocast, and the one it reports."""
    chosen = select_precision(request_name, device)
    layer = torch.nn.Linear(8, 8).to(device)
    with chosen.autocast(device):
        out = layer(torch.randn(4, 8, device=device))
    return out.dtype, chosen.dtype


@pytest.mark.parametrize("request_name", REQUESTS)
def test_on_this_cpu_autocast_computes_in_the_dtype_chosen(request_name: str) -> None:
    computed, reported = compute_dtype(CPU, request_name)
    assert computed == (reported or torch.float32)
    if request_name == "auto":
        assert computed == (torch.bfloat16 if hardware.cpu_has_bf16() else torch.float32)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")
@pytest.mark.parametrize("request_name", REQUESTS)
def test_on_this_gpu_autocast_computes_in_the_dtype_chosen(request_name: str) -> None:
    cuda = torch.device("cuda")
    computed, reported = compute_dtype(cuda, request_name)
    assert computed == (reported or torch.float32)
    if request_name == "auto":
        native_bf16 = torch.cuda.get_device_capability(cuda)[0] >= 8
        assert computed == (torch.bfloat16 if native_bf16 else torch.float16)


def test_the_device_auto_picks_holds_tensors() -> None:
    device = select_device("auto")
    assert torch.ones(2, device=device).sum().item() == 2.0
    assert device.type == ("cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available()
                           else "cpu")


def test_auto_device_prefers_cuda_then_mps_then_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    for cuda, mps, expected in [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda cuda=cuda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda mps=mps: mps)
        assert select_device("auto") == torch.device(expected)
        assert select_device("cpu") == CPU


@pytest.fixture
def no_accelerators(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


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
