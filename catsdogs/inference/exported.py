"""Running an exported model file (ONNX through onnxruntime, or TorchScript) the way `predict` runs a run's."""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from catsdogs.errors import CatsdogsError
from catsdogs.training.scoring import mean_over_views

EXTRA = 'pip install "catsdogs[export]"'
METADATA_KEY = "catsdogs"  # ONNX metadata_props key, and the TorchScript extra file's name, holding the JSON
TORCHSCRIPT_EXTRA = f"{METADATA_KEY}.json"
# How predict resizes, in words for the file's metadata; docs/export.md shows it in numpy.
RESIZE_RULE = ("decode with Pillow (a JPEG drafted to at least size x size), apply the EXIF orientation, convert to "
               "RGB, then resize to size x size as OpenCV's cv2.resize does: INTER_AREA (box averaging) when both "
               "sides are at least size, INTER_LINEAR (half-pixel centres) otherwise; unchanged when already "
               "size x size")
ONNX_SUFFIXES = (".onnx",)


def import_onnxruntime() -> Any:
    """onnxruntime, or one line naming the extra that installs it."""
    try:
        import onnxruntime
    except ImportError:
        raise CatsdogsError(f"ONNX files need onnxruntime, which catsdogs installs as an extra: {EXTRA}") from None
    return onnxruntime


@dataclass
class ExportedModel:
    """An exported file's model with what `predict` needs: classes, image size, probabilities of a batch."""

    path: Path
    format: str  # onnx | torchscript
    metadata: dict[str, Any]
    run: Callable[[np.ndarray], np.ndarray] = field(repr=False)  # uint8 NHWC batch -> probabilities

    @property
    def classes(self) -> list[str]:
        return list(self.metadata["classes"])

    @property
    def image_size(self) -> int:
        return int(self.metadata["image_size"])

    def probabilities(self, batch: torch.Tensor, tta: bool = False) -> torch.Tensor:
        """Softmax probabilities of a uint8 NHWC batch (the mean with the mirror image under `tta`)."""

        def probabilities(images: torch.Tensor) -> torch.Tensor:  # an NCHW view of NHWC photos, as the file takes
            photos = np.ascontiguousarray(images.permute(0, 2, 3, 1).numpy())
            return torch.from_numpy(np.asarray(self.run(photos), dtype=np.float32))

        return mean_over_views(probabilities, batch.permute(0, 3, 1, 2), "flip" if tta else None)


def _metadata(path: Path, text: str | None) -> dict[str, Any]:
    try:
        metadata = json.loads(text) if text else None
    except json.JSONDecodeError:
        metadata = None
    if not isinstance(metadata, dict) or not {"classes", "image_size"} <= metadata.keys():
        raise CatsdogsError(f"{path} was not exported by `catsdogs export` (it carries no catsdogs metadata: classes, "
                            "image size); export the run with `catsdogs export RUN_DIR`")
    return metadata


def load_exported(path: str | Path, threads: int | None = None) -> ExportedModel:
    """Open an exported .onnx (onnxruntime, CPU) or TorchScript file; `threads` caps onnxruntime's intra-op
    threads (None: its default, all cores)."""
    path = Path(path)
    if not path.is_file():
        raise CatsdogsError(f"exported model {path} does not exist (make one with `catsdogs export RUN_DIR`)")
    if path.suffix.lower() in ONNX_SUFFIXES:
        return _load_onnx(path, threads)
    return _load_torchscript(path)


def _load_onnx(path: Path, threads: int | None) -> ExportedModel:
    ort = import_onnxruntime()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.log_severity_level = 4  # fatal only: its warnings are not the user's, and its errors come back raised
    try:
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as error:  # noqa: BLE001 - onnxruntime raises its own types for bad files
        raise CatsdogsError(f"{path} is not a readable ONNX model ({str(error).strip().splitlines()[0][:160]})") \
            from None
    metadata = _metadata(path, session.get_modelmeta().custom_metadata_map.get(METADATA_KEY))
    name = session.get_inputs()[0].name

    def run(images: np.ndarray) -> np.ndarray:
        return session.run(["probabilities"], {name: images})[0]

    return ExportedModel(path, "onnx", metadata, run)


def _load_torchscript(path: Path) -> ExportedModel:
    extra = {TORCHSCRIPT_EXTRA: ""}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 marks TorchScript deprecated; it still loads
            module = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
    except Exception:  # noqa: BLE001 - torch.jit raises RuntimeError and others on foreign bytes
        raise CatsdogsError(f"{path} is neither an ONNX model (.onnx) nor a TorchScript file (for a run's "
                            "checkpoint use --run RUN_DIR --checkpoint FILE)") from None
    metadata = _metadata(path, extra[TORCHSCRIPT_EXTRA])
    module.eval()

    @torch.no_grad()
    def run(images: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(images))[0].numpy()

    return ExportedModel(path, "torchscript", metadata, run)
