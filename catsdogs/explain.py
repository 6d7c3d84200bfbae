"""Why the model said cat or dog: Grad-CAM heat maps over the photo, for any registered model."""

from __future__ import annotations

import copy
import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from catsdogs.checkpoint import atomic_write, write_text_atomic
from catsdogs.errors import CatsdogsError, UsageError
from catsdogs.predict import TrainedModel, decode_photos
from catsdogs.transforms import normalise

# The map is read at the deepest layer still this many cells across: deeper layers know more
# about the class, but a 1x1 or 3x3 map (cnn3's last pool at 128 px) cannot say where.
MIN_CELLS = 5


@dataclass(frozen=True)
class LayerChoice:
    name: str
    shape: tuple[int, ...]  # of its output for one image: (C, H, W)


def feature_layers(model: nn.Module, image_size: int) -> list[LayerChoice]:
    """Every module whose output is a C x H x W map, in the order their forward passes finish."""
    seen: list[LayerChoice] = []
    names = {module: name for name, module in model.named_modules() if name}
    hooks = []

    def record(module: nn.Module, _: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.dim() == 4:
            seen.append(LayerChoice(names[module], tuple(output.shape[1:])))

    for module in names:
        hooks.append(module.register_forward_hook(record))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=next(model.parameters()).device))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    return seen


def choose_layer(model: nn.Module, image_size: int, min_cells: int = MIN_CELLS) -> LayerChoice:
    """The last feature map at least `min_cells` wide and high (or the widest, at tiny sizes)."""
    layers = feature_layers(model, image_size)
    if not layers:
        raise CatsdogsError(f"{type(model).__name__} has no convolutional feature map to explain")
    wide = [layer for layer in layers if min(layer.shape[1:]) >= min_cells]
    return wide[-1] if wide else max(layers, key=lambda layer: min(layer.shape[1:]))


class GradCAM:
    """Grad-CAM (Selvaraju et al., 2017): the feature maps of one layer, weighted by the mean
    gradient of the class score over each map, summed, rectified and scaled to 0..1.

    Works on a private fp32 copy of the model with in-place activations turned off, so the
    layer's output is still intact when the gradient reaches it.
    """

    def __init__(self, model: nn.Module, image_size: int, layer: str | None = None) -> None:
        self.model = copy.deepcopy(model).float().eval()
        for module in self.model.modules():
            if getattr(module, "inplace", False):
                module.inplace = False
        self.layer = layer or choose_layer(self.model, image_size).name
        modules = dict(self.model.named_modules())
        if self.layer not in modules:
            raise UsageError(f"no layer {self.layer} in the model; choose one of {', '.join(n for n in modules if n)}")
        self.module = modules[self.layer]
        self.device = next(self.model.parameters()).device

    def __call__(self, images: torch.Tensor, target: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Heat maps (N x H x W, 0..1, the input's size) and probabilities for a normalised NCHW batch.

        `target` is the class to explain; None explains each image's predicted class.
        """
        captured: list[torch.Tensor] = []
        hook = self.module.register_forward_hook(lambda _m, _i, output: captured.append(output))
        try:
            with torch.enable_grad():
                logits = self.model(images.to(self.device, torch.float32))
                maps = captured[-1]  # a module called twice (a shared ReLU) ends with its last output
                classes = logits.argmax(1) if target is None else torch.full((len(images),), target)
                score = logits.gather(1, classes.to(logits.device).unsqueeze(1)).sum()
                (gradient,) = torch.autograd.grad(score, maps)
        finally:
            hook.remove()
        weights = gradient.mean(dim=(2, 3), keepdim=True)
        cam = torch.relu((weights * maps).sum(1, keepdim=True)).detach()
        cam = nn.functional.interpolate(cam, size=images.shape[2:], mode="bilinear", align_corners=False)[:, 0]
        peak = cam.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
        return (cam / peak).cpu(), torch.softmax(logits.detach().float(), 1).cpu()


@dataclass
class Explanation:
    photo: Path
    figure: Path
    predicted: str
    probability: float
    explained: str
    truth: str = ""


def explain_photos(trained: TrainedModel, photos: Sequence[Path], out_dir: str | Path, target: str | None = None,
                   layer: str | None = None, progress: bool = True, truths: Mapping[Path, str] | None = None) -> tuple[list[Explanation], list[tuple[Path, str]], str]:
    """Write one figure per photo (the photo, and the heat map over it) and explanations.csv into `out_dir`.

    `truths` gives known classes (of evaluated photos) to show beside the prediction. Returns the
    explanations, the photos that could not be read with the reason, and the layer used.
    """
    if target is not None and target not in trained.classes:
        raise UsageError(f"--target must be one of {', '.join(trained.classes)}, got {target!r}")
    size = trained.cfg.image_size
    cam = GradCAM(trained.model, size, layer)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    done: list[Explanation] = []
    unreadable: list[tuple[Path, str]] = []
    used_names: set[str] = set()
    decoded = decode_photos(photos, size)
    for photo, image in tqdm(decoded, total=len(photos), desc="explaining", unit="photo", disable=not progress,
                             leave=False):
        if isinstance(image, str):
            unreadable.append((photo, image))
            continue
        batch = normalise(torch.tensor(image)[None].permute(0, 3, 1, 2))  # a copy: a decoded array may be read-only
        target_index = None if target is None else trained.classes.index(target)
        heat, probs = cam(batch, target_index)
        best = int(probs[0].argmax())
        explained = trained.classes[best if target_index is None else target_index]
        truth = (truths or {}).get(photo, "")
        figure = out_dir / _figure_name(photo, used_names)
        title = f"{photo.name}: {trained.classes[best]} {float(probs[0, best]):.3f}"
        title += f" (true: {truth})" if truth else ""
        save_explanation_figure(image, heat[0].numpy(), figure, title, f"evidence for {explained} ({cam.layer})")
        done.append(Explanation(photo, figure, trained.classes[best], float(probs[0, best]), explained, truth))
    write_explanations_csv(out_dir / "explanations.csv", done, unreadable)
    return done, unreadable, cam.layer


def _figure_name(photo: Path, used: set[str]) -> str:
    """`<stem>_gradcam.png`, numbered when two photos from different folders share a name."""
    name, number = f"{photo.stem}_gradcam.png", 1
    while name in used:
        number += 1
        name = f"{photo.stem}-{number}_gradcam.png"
    used.add(name)
    return name


def write_explanations_csv(path: Path, done: list[Explanation], unreadable: list[tuple[Path, str]]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["photo", "predicted", "probability", "explained", "true", "figure", "error"])
    for item in done:
        writer.writerow([str(item.photo), item.predicted, f"{item.probability:.6f}", item.explained, item.truth,
                         item.figure.name, ""])
    for photo, reason in unreadable:
        writer.writerow([str(photo), "", "", "", "", "", reason])
    write_text_atomic(path, buffer.getvalue())


def save_explanation_figure(image: np.ndarray, heat: np.ndarray, path: Path, title: str, subtitle: str) -> None:
    """The photo as the model saw it, and the heat map blended over it, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(7, 3.8))
    left.imshow(image)
    left.set_title("input", fontsize=9)
    right.imshow(image)
    shown = right.imshow(heat, cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
    right.set_title(subtitle, fontsize=9)
    for ax in (left, right):
        ax.axis("off")
    fig.colorbar(shown, ax=right, fraction=0.046, pad=0.04)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    with atomic_write(path) as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)


def worst_mistakes(run_dir: str | Path, count: int, predictions: str = "predictions.csv") -> dict[Path, str]:
    """The `count` photos the run's last evaluation got wrong most confidently, with their true class."""
    path = Path(run_dir) / predictions
    if not path.is_file():
        raise CatsdogsError(f"{run_dir} has no {predictions}: run `catsdogs evaluate {run_dir}` first")
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if rows and not {"path", "label", "predicted"} <= set(rows[0]):
        raise CatsdogsError(f"{path} is not a predictions file written by `catsdogs evaluate`")
    wrong = [row for row in rows if row["label"] != row["predicted"]]
    if not wrong:
        raise CatsdogsError(f"the last evaluation of {run_dir} made no mistakes on its {len(rows)} photos")
    wrong.sort(key=lambda row: -float(row.get(f"p_{row['predicted']}") or 0.0))
    return {Path(row["path"]): row["label"] for row in wrong[:count]}
