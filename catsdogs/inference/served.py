"""The model a server serves: which file classifies, what it says about itself, photos from bytes, heat maps."""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from catsdogs.data.images import MAX_IMAGE_PIXELS, load_rgb, resize_array
from catsdogs.data.transforms import normalise
from catsdogs.errors import CatsdogsError
from catsdogs.inference.exported import ExportedModel, load_exported
from catsdogs.inference.explain import GradCAM
from catsdogs.inference.export import default_export_path, file_sha256
from catsdogs.inference.predict import Classifier, TrainedModel, load_trained, unreadable_reason
from catsdogs.inference.verify import read_verifications
from catsdogs.training.runs import RunFolder

HEAT_ALPHA = 0.45  # the heat map's share of each pixel over the photo, as explain's figures draw it


class BadPhoto(ValueError):
    """Bytes that are no photo the model can take; the message says why, in a few words."""


class TooManyPixels(BadPhoto):
    """A photo whose header claims more pixels than the server decodes."""


@dataclass
class ServedModel:
    """What answers: `classifier` (an exported file or a run's checkpoint), and the checkpoint's model for
    heat maps when there is a run (None when serving an exported file alone)."""

    classifier: Classifier
    trained: TrainedModel | None
    info: dict[str, Any] = field(default_factory=dict)  # GET /model: what is served, and how well it did
    _cam: GradCAM | None = field(default=None, repr=False)

    @property
    def classes(self) -> list[str]:
        return list(self.classifier.classes)

    @property
    def image_size(self) -> int:
        return self.classifier.image_size

    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Class probabilities of uint8 [N, H, W, 3] photos, as `catsdogs predict` computes them."""
        return self.classifier.probabilities(torch.from_numpy(images)).numpy()

    def heat_map(self, image: np.ndarray) -> tuple[bytes, int, float]:
        """Grad-CAM over one decoded photo, blended over it, as PNG bytes; with the class it explains and the
        probability `predict` gives it. Not thread-safe: call it from one thread (the model's)."""
        if self.trained is None:
            raise CatsdogsError("heat maps need a run's checkpoint: serve a run, not an exported file alone")
        if self._cam is None:
            self._cam = GradCAM(self.trained.model, self.image_size)
        probs = self.trained.probabilities(torch.from_numpy(image[None]))[0]
        best = int(probs.argmax())
        heat, _ = self._cam(normalise(torch.tensor(image)[None].permute(0, 3, 1, 2)), best)
        return overlay_png(image, heat[0].numpy()), best, float(probs[best])


def overlay_png(image: np.ndarray, heat: np.ndarray) -> bytes:
    """`heat` (0..1, the photo's size) in matplotlib's jet colours over the photo, as a PNG."""
    from matplotlib import colormaps

    colours = colormaps["jet"](heat)[..., :3] * 255.0
    blended = (1 - HEAT_ALPHA) * image.astype(np.float32) + HEAT_ALPHA * colours
    buffer = io.BytesIO()
    Image.fromarray(blended.clip(0, 255).astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_photo(data: bytes, size: int, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Photo bytes decoded and resized as `catsdogs predict` reads a file; BadPhoto says why not.

    Pixels are counted from the header before anything is decoded (Image.open reads only the
    header), against `max_pixels` and whatever Pillow's process-wide limit is: a photo over the
    limit, a decompression bomb among them, raises TooManyPixels and costs nothing to refuse.
    """
    if not data:
        raise BadPhoto("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Pillow warns above its own limit; the check below decides
            with Image.open(io.BytesIO(data)) as header:
                width, height = header.size
        if width * height > max_pixels:
            raise TooManyPixels(f"too many pixels: {width}x{height} is {width * height:,}, over this server's "
                                f"limit of {max_pixels:,}")
        return resize_array(np.asarray(load_rgb(io.BytesIO(data), draft_size=size)), size)
    except BadPhoto:
        raise
    except Image.DecompressionBombError:  # Image.open's own check: over twice Pillow's process-wide limit
        raise TooManyPixels(f"too many pixels: over this server's limit of {max_pixels:,} (a decompression bomb?)"
                            ) from None
    except Exception as error:  # noqa: BLE001 - decoders raise many types on bad data
        raise BadPhoto(unreadable_reason(error)) from None


def load_served(run_dir: Path | None, model_file: Path | None = None, device: str = "auto") -> ServedModel:
    """The run's verified ONNX export through onnxruntime when there is one made from its best checkpoint,
    else the checkpoint itself; or `model_file` (an exported file) instead of the run's own."""
    if run_dir is None and model_file is None:
        raise ValueError("load_served needs a run folder or an exported model file")
    trained = load_trained(run_dir, "best", device) if run_dir is not None else None
    exported = load_exported(model_file) if model_file is not None else _verified_export(trained)
    classifier: Classifier = exported if exported is not None else trained
    info = {"classes": list(classifier.classes), "image_size": classifier.image_size,
            "model": trained.cfg.model if trained else exported.metadata.get("model"),
            "run": str(run_dir) if run_dir is not None else None,
            "served_from": str(exported.path if exported else trained.checkpoint),
            "engine": f"onnxruntime ({exported.format})" if exported and exported.format == "onnx"
            else (exported.format if exported else f"PyTorch on {trained.device.type}"),
            "test_accuracy": _test_accuracy(run_dir), "verification": _verification(exported),
            "heat_maps": trained is not None}
    return ServedModel(classifier, trained, info)


def _verified_export(trained: TrainedModel) -> ExportedModel | None:
    """The run's default ONNX export, if its verification passed and it was made from this checkpoint."""
    path = default_export_path(trained.checkpoint.parent, "onnx")
    if not path.is_file():
        return None
    try:
        passed = read_verifications(path.parent).get(path.name, {}).get("passed")
        exported = load_exported(path)
    except CatsdogsError:  # onnxruntime missing, or files catsdogs did not write: the checkpoint serves
        return None
    if not passed or exported.metadata.get("checkpoint_sha256") != file_sha256(trained.checkpoint):
        return None
    return exported


def _test_accuracy(run_dir: Path | None) -> float | None:
    metrics = RunFolder(run_dir).read_metrics() if run_dir is not None else None
    return float(metrics["accuracy"]) if metrics and "accuracy" in metrics else None


def _verification(exported: ExportedModel | None) -> dict[str, Any] | None:
    """The export's verification.json figures (None for a checkpoint, or a file without them)."""
    if exported is None:
        return None
    entry = read_verifications(exported.path.parent).get(exported.path.name)
    if not entry:
        return None
    keep = ("photos", "source", "max_prob_diff", "class_differs", "pytorch_accuracy", "export_accuracy", "criterion",
            "passed")
    return {key: entry.get(key) for key in keep}
