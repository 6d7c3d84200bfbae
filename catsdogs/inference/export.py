"""Exporting a run's model to ONNX or TorchScript, then proving the file gives PyTorch's answers on photos."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from catsdogs import __version__
from catsdogs.atomic import current_umask
from catsdogs.data.transforms import normalise
from catsdogs.errors import CatsdogsError, UsageError
from catsdogs.inference.exported import EXTRA, METADATA_KEY, RESIZE_RULE, TORCHSCRIPT_EXTRA, load_exported
from catsdogs.inference.predict import TrainedModel, load_trained
from catsdogs.inference.verify import (INT8_MIN_PHOTOS, VERIFICATION_FILE, VERIFY_N, Verification, calibration_photos,
                                       read_verifications, record_verification, run_batches, verification_photos,
                                       verify)
from catsdogs.training.hardware import FP32

Log = Callable[[str], None]
FORMATS = {"onnx": "model.onnx", "torchscript": "model.torchscript"}
QUANTIZED_NAME = "model.int8.onnx"
EXPORT_DIR = "export"  # inside the run folder


def default_export_path(run_dir: str | Path, fmt: str = "onnx", quantize: str | None = None) -> Path:
    """Where `catsdogs export` writes a run's file without --out (and where `serve` looks for it)."""
    return Path(run_dir) / EXPORT_DIR / (QUANTIZED_NAME if quantize else FORMATS[fmt])


class ExportModule(nn.Module):
    """What an exported file holds: uint8 RGB photos [N, H, W, 3] in, (probabilities, logits) out.

    The conversion and ImageNet normalisation are inside (catsdogs.data.transforms.normalise, as
    training and predict use it), so an app only decodes and resizes.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(normalise(images.permute(0, 3, 1, 2)))
        return torch.softmax(logits, dim=1), logits


@dataclass(frozen=True)
class ExportResult:
    """The file kept and its figures."""

    path: Path
    verification: Verification
    fp32_verification: Verification | None = None  # with --quantize: the fp32 graph it was made from


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def export_metadata(trained: TrainedModel) -> dict[str, Any]:
    """What the file says about itself (stored as JSON under the key `catsdogs`)."""
    return {"classes": list(trained.classes), "image_size": trained.cfg.image_size, "resize": RESIZE_RULE,
            "input": "uint8 RGB photos [N, image_size, image_size, 3]; normalisation is inside",
            "outputs": ["probabilities", "logits"], "model": trained.cfg.model,
            "catsdogs_version": __version__, "checkpoint": trained.checkpoint.name,
            "checkpoint_sha256": file_sha256(trained.checkpoint)}


def export_run(run_dir: str | Path, fmt: str = "onnx", *, checkpoint: str = "best", out: str | Path | None = None,
               quantize: str | None = None, verify_on: str | Path | None = None, verify_n: int = VERIFY_N,
               force: bool = False, log: Log = print) -> ExportResult:
    """Export a run's checkpoint, verify the file against PyTorch and keep it only if it passes.

    The file is written under a temporary name beside `out` and renamed into place once verified,
    so a failed export never leaves a file (nor replaces an earlier good one). An existing `out` is
    refused unless `force`. The figures go to `verification.json` beside it, failed or not; a file
    of that name that catsdogs did not write is refused, `force` or not. int8 is verified on at
    least INT8_MIN_PHOTOS photos (or all there are), whatever `verify_n`.
    """
    if fmt not in FORMATS or quantize not in (None, "int8"):  # the command's choices; this is for library callers
        raise ValueError(f"export_run(fmt={fmt!r}, quantize={quantize!r}): fmt is one of {', '.join(FORMATS)}, "
                         "quantize None or 'int8'")
    if quantize and fmt != "onnx":
        raise UsageError("--quantize int8 works on ONNX files: use --format onnx")
    if fmt == "onnx":
        _require_onnx_export()
    run_dir = Path(run_dir)
    trained = load_trained(run_dir, checkpoint, device="cpu")
    trained = dataclasses.replace(trained, precision=FP32)  # the reference: PyTorch in fp32
    out = Path(out) if out is not None else default_export_path(run_dir, fmt, quantize)
    _check_destination(out, fmt=fmt, force=force)
    limit = max(verify_n, INT8_MIN_PHOTOS) if quantize else verify_n
    photos = verification_photos(trained, verify_on=verify_on, limit=limit)
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = export_metadata(trained)
    log(f"exporting {trained.cfg.model} ({trained.checkpoint}) to {fmt}"
        + (" and quantizing to int8" if quantize else "") + f" at {trained.cfg.image_size}px ...")
    reference = run_batches(lambda batch: trained.probabilities(torch.from_numpy(batch)).numpy(), photos.images)
    with _temporary(out) as fp32_file:
        writer = write_onnx if fmt == "onnx" else write_torchscript
        writer(trained.model, fp32_file, metadata)
        name = f"the fp32 graph of {out.name}" if quantize else out.name
        fp32_check = verify(load_exported(fp32_file), reference, photos, name=name)
        if not quantize:
            return _keep(fp32_file, out=out, check=fp32_check, log=log)
        _report(out, fp32_check, log)
        if not fp32_check.passed:
            raise CatsdogsError(f"the fp32 ONNX graph does not match PyTorch, so it was not quantized: "
                                f"{fp32_check.summary()}")
        with _temporary(out) as int8_file:
            calibration = calibration_photos(trained)
            log(f"quantizing with ranges calibrated on {len(calibration.images)} training photos ...")
            quantize_int8(fp32_file, int8_file, calibration=calibration.images, metadata=metadata)
            check = verify(load_exported(int8_file), reference, photos, name=out.name, int8=True)
            check = dataclasses.replace(check, size_ratio=int8_file.stat().st_size / fp32_file.stat().st_size)
            return _keep(int8_file, out=out, check=check, log=log, fp32_check=fp32_check)


def _require_onnx_export() -> None:
    for module in ("onnx", "onnxscript", "onnxruntime"):
        try:
            __import__(module)
        except ImportError:
            raise CatsdogsError(f"--format onnx needs {module}, which catsdogs installs as an extra: {EXTRA}") \
                from None


@contextlib.contextmanager
def _temporary(out: Path) -> Iterator[Path]:
    """A temporary file name beside `out` (same suffix, so loaders know the format); removed afterwards
    unless it was renamed into place."""
    fd, name = tempfile.mkstemp(prefix=f".{out.stem}.", suffix=out.suffix, dir=out.parent)
    os.close(fd)
    try:
        yield Path(name)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)


def _report(out: Path, check: Verification, log: Log) -> None:
    """Print a verification's figures and write them into verification.json beside `out`."""
    for line in check.lines():
        log(line)
    record_verification(out.parent, check)


def _keep(file: Path, *, out: Path, check: Verification, log: Log,
          fp32_check: Verification | None = None) -> ExportResult:
    """Rename a verified file into place and record its figures; a failed one is left to be removed."""
    _report(out, check, log)
    if not check.passed:
        raise CatsdogsError(f"the exported {check.format} model does not match PyTorch, so no file was written: "
                            f"{check.summary()} ({check.criterion}); figures in {out.parent / VERIFICATION_FILE}")
    os.chmod(file, 0o666 & ~current_umask())  # mkstemp makes it private; give it a plain file's mode
    os.replace(file, out)
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {out.parent / VERIFICATION_FILE}")
    return ExportResult(path=out, verification=check, fp32_verification=fp32_check)


def _check_destination(out: Path, *, fmt: str, force: bool) -> None:
    """Refuse, before any work, a file name of the other format, to replace a file without `force`, or to
    write into someone else's figures file."""
    if (out.suffix.lower() == ".onnx") != (fmt == "onnx"):  # loaders, predict --model included, go by the suffix
        raise UsageError(f"--out {out}: an ONNX file's name ends in .onnx, and only an ONNX file's does")
    if out.name == VERIFICATION_FILE:
        raise UsageError(f"--out cannot be named {VERIFICATION_FILE}: export records its figures there")
    if (out.exists() or out.is_symlink()) and not force:
        raise CatsdogsError(f"{out} already exists: pass --force to replace it, or choose another --out")
    read_verifications(out.parent)


def write_onnx(model: nn.Module, path: Path, metadata: dict[str, Any]) -> None:
    """torch.onnx.export with the dynamo exporter, the batch dimension dynamic, the metadata inside."""
    module = ExportModule(copy.deepcopy(model).to(memory_format=torch.contiguous_format)).eval()
    size = metadata["image_size"]
    example = torch.zeros(2, size, size, 3, dtype=torch.uint8)
    with warnings.catch_warnings(), contextlib.redirect_stdout(None):
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals are not the user's business
        torch.onnx.export(module, (example,), str(path), dynamo=True, input_names=["images"],
                          output_names=["probabilities", "logits"], external_data=False,
                          dynamic_shapes={"images": {0: torch.export.Dim("batch", min=1)}}, verbose=False)
    set_onnx_metadata(path, metadata)


def set_onnx_metadata(path: Path, metadata: dict[str, Any]) -> None:
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    proto.doc_string = f"catsdogs {metadata['model']}: {', '.join(metadata['classes'])}"
    onnx.save(proto, str(path))


def write_torchscript(model: nn.Module, path: Path, metadata: dict[str, Any]) -> None:
    """torch.jit.trace of the same module (TorchScript: loadable from C++ libtorch), metadata as an extra file."""
    module = ExportModule(copy.deepcopy(model).to(memory_format=torch.contiguous_format)).eval()
    size = metadata["image_size"]
    with warnings.catch_warnings(), torch.no_grad():
        # torch 2.14 marks torch.jit.trace deprecated; it is still the way to write TorchScript, which
        # libtorch loads. Verification below checks the traced file on other batch sizes.
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(module, torch.zeros(2, size, size, 3, dtype=torch.uint8), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_EXTRA: json.dumps(metadata)})


def quantize_int8(fp32_file: Path, int8_file: Path, *, calibration: np.ndarray,
                  metadata: dict[str, Any]) -> None:
    """onnxruntime static quantization (QDQ, int8 weights per channel, uint8 activations) with ranges from
    the calibration photos."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([{"images": calibration[i:i + 16]} for i in range(0, len(calibration), 16)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    with _temporary(int8_file) as prepared:
        quant_pre_process(str(fp32_file), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(int8_file), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    set_onnx_metadata(int8_file, {**metadata, "quantized": "int8 (onnxruntime static, QDQ)"})
