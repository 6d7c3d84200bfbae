"""Exporting a run's model to ONNX or TorchScript, then proving the file gives PyTorch's answers on photos."""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from catsdogs import __version__
from catsdogs.atomic import current_umask, write_text_atomic
from catsdogs.data.cache import class_folders, read_class_folder, read_split
from catsdogs.data.transforms import normalise
from catsdogs.errors import CatsdogsError, UsageError
from catsdogs.inference.exported import (EXTRA, METADATA_KEY, RESIZE_RULE, TORCHSCRIPT_EXTRA, ExportedModel,
                                         load_exported)
from catsdogs.inference.predict import TrainedModel, collect_photos, decode_photos, load_trained
from catsdogs.training.hardware import FP32

Log = Callable[[str], None]
FORMATS = {"onnx": "model.onnx", "torchscript": "model.torchscript"}
QUANTIZED_NAME = "model.int8.onnx"
VERIFY_N = 256
CALIBRATION_N = 256  # training photos that set the int8 ranges
PROB_TOLERANCE = 1e-4  # fp32: the largest probability difference allowed from PyTorch fp32
INT8_MIN_AGREEMENT = 0.99  # int8: the share of photos that must keep PyTorch's class
INT8_MIN_PHOTOS = 1000  # int8: photos to measure on at least (or all there are), so the change means something
BATCH = 64
VERIFICATION_FILE = "verification.json"
WRITTEN_BY = "catsdogs export"  # verification.json's mark: a file without it is someone else's, never written into


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


@dataclass
class Verification:
    """The exported file against PyTorch (fp32) on the same photos."""

    file: str
    format: str
    photos: int
    source: str
    max_prob_diff: float
    class_differs: int
    pytorch_accuracy: float | None
    export_accuracy: float | None
    criterion: str
    passed: bool
    unreadable: int = 0
    size_ratio: float | None = None  # int8: its size over the fp32 file's
    int8: bool = False
    agreement: float = 1.0  # the share of photos given PyTorch's class
    accuracy_change: float | None = None  # the file's accuracy minus PyTorch's, on the same labelled photos
    accuracy_change_se: float | None = None  # its paired standard error
    available: int = 0  # photos the source held, of which `photos` were compared

    def lines(self) -> list[str]:
        accuracy = "no labels (photos not in class folders)"
        if self.pytorch_accuracy is not None and self.export_accuracy is not None:
            accuracy = f"PyTorch {self.pytorch_accuracy:.4f}, {self.format} {self.export_accuracy:.4f}"
            if self.int8:
                used = (f"all {self.available}" if self.photos + self.unreadable >= self.available
                        else f"{self.photos} of the {self.available}")
                accuracy += f": {self._change()} on {used} labelled photos"
            else:
                accuracy += f" ({100 * (self.export_accuracy - self.pytorch_accuracy):+.2f} points)"
        agreement = f" (agreement {100 * self.agreement:.2f}%)" if self.int8 else ""
        lines = [f"verified {self.file} against PyTorch fp32 on {self.photos} photos of {self.source}"
                 + (f" ({self.unreadable} unreadable left out)" if self.unreadable else ""),
                 f"  largest probability difference: {self.max_prob_diff:.2e}",
                 f"  photos whose class differs: {self.class_differs}{agreement}",
                 f"  accuracy: {accuracy}"]
        if self.size_ratio is not None:
            lines.append(f"  size: {self.size_ratio:.2f}x the fp32 file's")
        lines.append(f"  {'passed' if self.passed else 'FAILED'}: {self.criterion}")
        return lines

    def _change(self) -> str:
        if self.accuracy_change is None:
            return "no change measured"
        if self.accuracy_change_se is None:
            return f"change {100 * self.accuracy_change:+.2f} points (one photo: no standard error)"
        return (f"change {100 * self.accuracy_change:+.2f} ± {100 * self.accuracy_change_se:.2f} points "
                "(paired standard error)")

    def summary(self) -> str:
        """The figures in one line, for a failure message."""
        if not self.int8:
            return (f"{self.photos} photos compared, largest probability difference {self.max_prob_diff:.2e}, "
                    f"{self.class_differs} with another class, accuracy PyTorch {_fmt(self.pytorch_accuracy)} "
                    f"vs {self.format} {_fmt(self.export_accuracy)}")
        accuracy = ""
        if self.pytorch_accuracy is not None and self.export_accuracy is not None:
            accuracy = (f", accuracy PyTorch {self.pytorch_accuracy:.4f} vs {self.format} "
                        f"{self.export_accuracy:.4f}, {self._change().removesuffix(' (paired standard error)')}")
        return (f"{self.photos} photos compared, largest probability difference {self.max_prob_diff:.2e}, "
                f"{self.class_differs} with another class (agreement {100 * self.agreement:.2f}%){accuracy}")


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


@dataclass
class ExportResult:
    path: Path
    verification: Verification
    fp32_verification: Verification | None = None  # with --quantize: the fp32 graph it was made from


@dataclass
class Photos:
    """Decoded photos for verification or calibration, with labels when they sit in class folders."""

    images: np.ndarray  # uint8 [N, size, size, 3]
    labels: np.ndarray | None
    source: str
    unreadable: int
    available: int  # photos the source held, of which these were taken


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


def export_run(run_dir: str | Path, fmt: str = "onnx", checkpoint: str = "best", out: str | Path | None = None,
               quantize: str | None = None, verify_on: str | Path | None = None, verify_n: int = VERIFY_N,
               force: bool = False, log: Log = print) -> ExportResult:
    """Export a run's checkpoint, verify the file against PyTorch and keep it only if it passes.

    The file is written under a temporary name beside `out` and renamed into place once verified,
    so a failed export never leaves a file (nor replaces an earlier good one). An existing `out` is
    refused unless `force`. The figures go to `verification.json` beside it, failed or not; a file
    of that name that catsdogs did not write is refused, `force` or not. int8 is verified on at
    least INT8_MIN_PHOTOS photos (or all there are), whatever `verify_n`.
    """
    if fmt not in FORMATS:
        raise UsageError(f"unknown export format {fmt!r}; choose one of: {', '.join(FORMATS)}")
    if quantize not in (None, "int8"):
        raise UsageError(f"--quantize {quantize}: the only quantization is int8")
    if quantize and fmt != "onnx":
        raise UsageError("--quantize int8 works on ONNX files: use --format onnx")
    if fmt == "onnx":
        _require_onnx_export()
    run_dir = Path(run_dir)
    trained = load_trained(run_dir, checkpoint, device="cpu")
    trained = dataclasses.replace(trained, precision=FP32)  # the reference: PyTorch in fp32
    out = Path(out) if out is not None else run_dir / "export" / (QUANTIZED_NAME if quantize else FORMATS[fmt])
    if out.is_dir():
        raise UsageError(f"--out {out} is a folder: give a file name, e.g. {out / FORMATS[fmt]}")
    if (out.suffix.lower() == ".onnx") != (fmt == "onnx"):  # loaders, predict --model included, go by the suffix
        raise UsageError(f"--out {out}: an ONNX file's name ends in .onnx, and only an ONNX file's does")
    _check_destination(out, force)
    photos = verification_photos(trained, verify_on, max(verify_n, INT8_MIN_PHOTOS) if quantize else verify_n)
    out.parent.mkdir(parents=True, exist_ok=True)
    metadata = export_metadata(trained)
    log(f"exporting {trained.cfg.model} ({trained.checkpoint}) to {fmt}"
        + (" and quantizing to int8" if quantize else "") + f" at {trained.cfg.image_size}px ...")
    reference = run_batches(lambda batch: trained.probabilities(torch.from_numpy(batch)).numpy(), photos.images)
    with _temporary(out) as fp32_file:
        writer = write_onnx if fmt == "onnx" else write_torchscript
        writer(trained.model, fp32_file, metadata)
        name = f"the fp32 graph of {out.name}" if quantize else out.name
        fp32_check = verify(load_exported(fp32_file), reference, photos, name)
        if not quantize:
            return _keep(fp32_file, out, fp32_check, log)
        _report(out, fp32_check, log)
        if not fp32_check.passed:
            raise CatsdogsError(f"the fp32 ONNX graph does not match PyTorch, so it was not quantized: "
                                f"{fp32_check.summary()}")
        with _temporary(out) as int8_file:
            calibration = calibration_photos(trained)
            log(f"quantizing with ranges calibrated on {len(calibration.images)} training photos ...")
            quantize_int8(fp32_file, int8_file, calibration.images, metadata)
            check = verify(load_exported(int8_file), reference, photos, out.name, int8=True)
            check.size_ratio = int8_file.stat().st_size / fp32_file.stat().st_size
            result = _keep(int8_file, out, check, log)
            result.fp32_verification = fp32_check
            return result


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
    _record(out, check)


def _keep(file: Path, out: Path, check: Verification, log: Log) -> ExportResult:
    """Rename a verified file into place and record its figures; a failed one is left to be removed."""
    _report(out, check, log)
    if not check.passed:
        raise CatsdogsError(f"the exported {check.format} model does not match PyTorch, so no file was written: "
                            f"{check.summary()} ({check.criterion}); figures in {out.parent / VERIFICATION_FILE}")
    os.chmod(file, 0o666 & ~current_umask())  # mkstemp makes it private; give it a plain file's mode
    os.replace(file, out)
    log(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {out.parent / VERIFICATION_FILE}")
    return ExportResult(out, check)


def _check_destination(out: Path, force: bool) -> None:
    """Refuse, before any work, to replace a file without `force` or to write into someone else's figures file."""
    if out.name == VERIFICATION_FILE:
        raise UsageError(f"--out cannot be named {VERIFICATION_FILE}: export records its figures there")
    if (out.exists() or out.is_symlink()) and not force:
        raise CatsdogsError(f"{out} already exists: pass --force to replace it, or choose another --out")
    read_verifications(out.parent)


def read_verifications(folder: Path) -> dict[str, Any]:
    """The figures that earlier exports recorded in `folder`'s verification.json, by file name ({} without one).

    Ours carries `written_by`; a file of older catsdogs (the figures by file name, nothing else) is
    ours too. Anything else there (another program's JSON, not JSON, not an object) is refused.
    """
    path = folder / VERIFICATION_FILE
    if not (path.exists() or path.is_symlink()):
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        record = None
    if isinstance(record, dict) and record.get("written_by") == WRITTEN_BY and isinstance(record.get("files"), dict):
        return record["files"]
    if isinstance(record, dict) and record and all(  # as catsdogs wrote it before the mark
            isinstance(entry, dict) and entry.get("file") == name and {"format", "criterion", "passed"} <= set(entry)
            for name, entry in record.items()):
        return record
    raise CatsdogsError(f"{path} was not written by catsdogs export, which records its figures there: move it "
                        "away, or export into another folder")


def _record(out: Path, check: Verification) -> None:
    """verification.json beside the file: one entry per exported file name, the latest figures of each."""
    files = read_verifications(out.parent)
    files[check.file] = dataclasses.asdict(check)
    record = {"written_by": WRITTEN_BY, "catsdogs_version": __version__, "files": files}
    write_text_atomic(out.parent / VERIFICATION_FILE, json.dumps(record, indent=2) + "\n")


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


def quantize_int8(fp32_file: Path, int8_file: Path, calibration: np.ndarray, metadata: dict[str, Any]) -> None:
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


def run_batches(run: Callable[[np.ndarray], np.ndarray], images: np.ndarray, batch: int = BATCH) -> np.ndarray:
    return np.concatenate([run(images[i:i + batch]) for i in range(0, len(images), batch)])


def verify(exported: ExportedModel, reference: np.ndarray, photos: Photos, name: str,
           int8: bool = False) -> Verification:
    """Compare the exported file's probabilities with PyTorch's on the same decoded photos.

    fp32 must match exactly (every class, probabilities within PROB_TOLERANCE). int8 must give
    PyTorch's class on INT8_MIN_AGREEMENT of the photos, which also bounds its accuracy change.
    """
    probs = run_batches(lambda batch: exported.probabilities(torch.from_numpy(batch)).numpy(), photos.images)
    gap = float(np.abs(probs - reference).max())
    same = probs.argmax(1) == reference.argmax(1)
    differs, agreement = int((~same).sum()), float(same.mean())
    accuracies: list[float | None] = [None, None]
    change: tuple[float | None, float | None] = (None, None)
    if photos.labels is not None:
        right = [p.argmax(1) == photos.labels for p in (reference, probs)]
        accuracies = [float(r.mean()) for r in right]
        change = paired_accuracy_change(*right)
    if int8:
        passed = agreement >= INT8_MIN_AGREEMENT - 1e-12
        criterion = f"PyTorch's class on at least {100 * INT8_MIN_AGREEMENT:g}% of the photos"
    else:
        passed = differs == 0 and gap <= PROB_TOLERANCE
        criterion = f"every class equal and probabilities within {PROB_TOLERANCE:g}"
    fmt = "ONNX int8" if int8 else {"onnx": "ONNX", "torchscript": "TorchScript"}[exported.format]
    return Verification(name, fmt, len(probs), photos.source, gap, differs, accuracies[0], accuracies[1], criterion,
                        passed, photos.unreadable, int8=int8, agreement=agreement, accuracy_change=change[0],
                        accuracy_change_se=change[1], available=photos.available)


def paired_accuracy_change(before: np.ndarray, after: np.ndarray) -> tuple[float, float | None]:
    """The accuracy change from `before` to `after` (per-photo correctness on the same photos) and its paired
    standard error: the sample standard deviation of the per-photo differences over sqrt(photos); None for
    one photo."""
    differences = np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64)
    if len(differences) < 2:
        return float(differences.mean()), None
    return float(differences.mean()), float(differences.std(ddof=1) / math.sqrt(len(differences)))


def spread(items: Sequence[Any], n: int) -> list[Any]:
    """At most `n` items taken evenly across `items` (every class of a sorted folder, not just the first)."""
    if len(items) <= n:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, n).round()]


def verification_photos(trained: TrainedModel, verify_on: str | Path | None, limit: int) -> Photos:
    """The run's test photos, or those of `verify_on` (a folder of class folders gives labels too)."""
    if verify_on is None:
        try:
            split = read_split(trained.cfg.data, "test", trained.classes)
        except CatsdogsError as error:
            raise CatsdogsError(f"the run's test photos cannot be read ({error}); verify on other photos with "
                                "--verify-on FOLDER") from None
        return _decode(split.paths, split.labels, trained.cfg.image_size, limit, str(split.root))
    folder = Path(verify_on)
    if not folder.is_dir():
        raise UsageError(f"--verify-on {folder} is not a folder of photos")
    if set(class_folders(folder)) & set(trained.classes):
        split = read_class_folder(folder, trained.classes, some_classes=True)
        return _decode(split.paths, split.labels, trained.cfg.image_size, limit, str(folder))
    return _decode(collect_photos([folder]), None, trained.cfg.image_size, limit, str(folder))


def calibration_photos(trained: TrainedModel) -> Photos:
    try:
        split = read_split(trained.cfg.data, "train", trained.classes)
    except CatsdogsError as error:
        raise CatsdogsError(f"int8 calibration needs the run's training photos: {error}") from None
    return _decode(split.paths, None, trained.cfg.image_size, CALIBRATION_N, str(split.root))


def _decode(paths: Sequence[Path], labels: np.ndarray | None, size: int, limit: int, source: str) -> Photos:
    chosen = spread(range(len(paths)), limit)
    images, kept, unreadable = [], [], 0
    for index, (_, image) in zip(chosen, decode_photos([paths[i] for i in chosen], size)):
        if isinstance(image, str):
            unreadable += 1
            continue
        images.append(image)
        kept.append(index)
    if not images:
        raise CatsdogsError(f"none of the {len(chosen)} photos of {source} could be read")
    return Photos(np.stack(images), None if labels is None else np.asarray(labels)[kept], source, unreadable,
                  len(paths))
