"""Why the model said cat or dog: Grad-CAM heat maps over the photo, for any registered model."""

from __future__ import annotations

import copy
import csv
import io
import math
import os
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from catsdogs.atomic import atomic_write, write_text_atomic
from catsdogs.data.transforms import normalise
from catsdogs.errors import CatsdogsError, UsageError
from catsdogs.figures import pyplot, save_figure
from catsdogs.inference.predict import TrainedModel, decode_photos, predict_photos
from catsdogs.names import escape_name, unescape_name
from catsdogs.progress import progress_bar
from catsdogs.training.runs import EXPLANATIONS_FILE, PREDICTIONS_FILE

# The map is read at the deepest layer still this many cells across: deeper layers know more
# about the class, but a 1x1 or 3x3 map (cnn3's last pool at 128 px) cannot say where.
MIN_CELLS = 5
SHOWN_CHOICES = 8  # layers named when a --layer cannot be used
COLUMNS = ["photo", "predicted", "probability", "explained", "true", "figure", "error"]  # of explanations.csv


@dataclass(frozen=True)
class LayerChoice:
    name: str
    shape: tuple[int, ...]  # of its output for one image: (C, H, W)


def _maps(outputs: list[LayerChoice]) -> list[LayerChoice]:
    return [layer for layer in outputs if len(layer.shape) == 3]


def _trace_outputs(model: nn.Module, image_size: int) -> list[LayerChoice]:
    """Every module's tensor output shape for one image, in the order their forward passes finish."""
    seen: list[LayerChoice] = []
    names = {module: name for name, module in model.named_modules() if name}
    hooks = []

    def record(module: nn.Module, _: Any, output: Any) -> None:
        if isinstance(output, torch.Tensor) and output.dim() >= 1:
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


def _deepest_wide(layers: list[LayerChoice], model_name: str, min_cells: int) -> LayerChoice:
    """The last feature map at least `min_cells` wide and high (or the widest, at tiny sizes)."""
    if not layers:
        raise CatsdogsError(f"{model_name} has no convolutional feature map to explain")
    wide = [layer for layer in layers if min(layer.shape[1:]) >= min_cells]
    return wide[-1] if wide else max(layers, key=lambda layer: min(layer.shape[1:]))


def _spatial_layers(outputs: list[LayerChoice]) -> list[LayerChoice]:
    """The layers that can say where (a C x H x W map, H and W at least 2), deepest first.

    A module called more than once (a shared ReLU) counts with its last output, the one Grad-CAM reads.
    """
    last = {layer.name: layer for layer in outputs}
    order = dict.fromkeys(layer.name for layer in reversed(outputs))  # by last finish, deepest first
    return [last[name] for name in order if len(last[name].shape) == 3 and min(last[name].shape[1:]) >= 2]


def _check_layer(name: str, outputs: list[LayerChoice], module_names: set[str]) -> str:
    """`name` if its output is a spatial map; otherwise a UsageError listing the layers that are."""
    choices = _spatial_layers(outputs)
    if any(layer.name == name for layer in choices):
        return name
    shown = ", ".join(f"{layer.name} ({_size(layer.shape)})" for layer in choices[:SHOWN_CHOICES])
    more = len(choices) - SHOWN_CHOICES
    listing = f"choose one of {shown}" + (f" or {more} shallower" if more > 0 else "")
    if name not in module_names:
        raise UsageError(f"no layer {name} in the model; {listing}")
    shape = {layer.name: layer.shape for layer in outputs}.get(name)
    if shape is None:
        said = "it is not run when classifying"
    elif len(shape) == 3:
        said = f"it outputs a {_size(shape)} map"
    else:
        said = f"it outputs {math.prod(shape)} values per photo"
    raise UsageError(f"layer {name} has no spatial feature map ({said}): {listing}")


def _size(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


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
        modules = dict(self.model.named_modules())
        outputs = _trace_outputs(self.model, image_size)
        if layer is None:
            self.layer = _deepest_wide(_maps(outputs), type(model).__name__, MIN_CELLS).name
        else:
            self.layer = _check_layer(layer, outputs, set(modules) - {""})
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
                   layer: str | None = None, progress: bool = True, truths: Mapping[Path, str] | None = None
                   ) -> tuple[list[Explanation], list[tuple[Path, str]], str]:
    """Write one figure per photo (the photo, and the heat map over it) and explanations.csv into `out_dir`.

    The probability and the class in the title and the list are those `predict_photos` gives, at
    the run's precision; the heat map explains that class (or `target`). An explanations.csv
    already in `out_dir` is kept up to date, not replaced: a photo explained again gets its row
    and its figure name back, other photos keep theirs while their figure is there, and a new
    photo never takes the figure name of another. `truths` gives known classes (of evaluated
    photos) to show beside the prediction. Returns the explanations, the photos that could not
    be read with the reason, and the layer used.
    """
    if target is not None and target not in trained.classes:
        raise UsageError(f"--target must be one of {', '.join(trained.classes)}, got {target!r}")
    size = trained.cfg.image_size
    cam = GradCAM(trained.model, size, layer)
    out_dir = Path(out_dir)
    listing = out_dir / EXPLANATIONS_FILE
    # Absolute (links kept as named): the same photo named from another folder is the same row.
    photos = list(dict.fromkeys(Path(os.path.abspath(photo)) for photo in photos))
    truths = {Path(os.path.abspath(photo)): truth for photo, truth in (truths or {}).items()}
    rows = _rows_to_keep(listing, photos)
    used_names = {row["figure"] for row in rows.values() if row["figure"]}
    out_dir.mkdir(parents=True, exist_ok=True)
    predictions = predict_photos(trained, photos, progress=progress)
    done: list[Explanation] = []
    unreadable = list(predictions.unreadable)
    decoded = decode_photos(predictions.paths, size)
    for (photo, image), probs in progress_bar(zip(decoded, predictions.probs), total=len(predictions.paths),
                                              desc="explaining", unit="photo", show=progress, leave=False):
        if isinstance(image, str):  # changed since it was classified a moment ago
            unreadable.append((photo, image))
            continue
        best = int(probs.argmax())
        explained = best if target is None else trained.classes.index(target)
        batch = normalise(torch.tensor(image)[None].permute(0, 3, 1, 2))  # a copy: a decoded array may be read-only
        heat, _ = cam(batch, explained)
        truth = truths.get(photo, "")
        earlier = rows.get(str(photo), {}).get("figure")
        figure = out_dir / (earlier or _figure_name(photo, used_names))
        title = f"{escape_name(photo.name)}: {trained.classes[best]} {float(probs[best]):.3f}"
        title += f" (true: {truth})" if truth else ""
        subtitle = f"evidence for {trained.classes[explained]} ({cam.layer})"
        save_explanation_figure(image, heat[0].numpy(), figure, title, subtitle)
        done.append(Explanation(photo, figure, trained.classes[best], float(probs[best]), trained.classes[explained],
                                truth))
        rows[str(photo)] = _explanation_row(done[-1])
    for photo, reason in unreadable:
        rows[str(photo)] = dict.fromkeys(COLUMNS, "") | {"photo": str(photo), "error": reason}
    write_explanations_csv(listing, rows.values())
    return done, unreadable, cam.layer


def _rows_to_keep(listing: Path, photos: Sequence[Path]) -> dict[str, dict[str, str]]:
    """The rows of an earlier explanations.csv, by photo, that stay listed: those of `photos` (to be
    replaced in place, their figure names kept) and those of other photos whose figure is still there."""
    if not listing.is_file():
        return {}
    with open(listing, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle, restval="")
        rows = list(reader)
    if reader.fieldnames is None:
        return {}
    if reader.fieldnames != COLUMNS:
        raise CatsdogsError(f"{listing} is not a list written by `catsdogs explain`: move it, or explain into "
                            f"another folder")
    given = {str(photo) for photo in photos}
    kept = {}
    for row in rows:
        figure = row["figure"]
        if not (figure.endswith(".png") and Path(figure).name == figure):
            figure = ""  # only a plain file name in this folder: a hand-edited list must not aim writes elsewhere
        if row["photo"] in given or (figure and (listing.parent / figure).is_file()):
            kept[row["photo"]] = {**row, "figure": figure}
    return kept


def _figure_name(photo: Path, used: set[str]) -> str:
    """`<stem>_gradcam.png`, numbered when two photos from different folders share a name."""
    name, number = f"{photo.stem}_gradcam.png", 1
    while name in used:
        number += 1
        name = f"{photo.stem}-{number}_gradcam.png"
    used.add(name)
    return name


def _explanation_row(item: Explanation) -> dict[str, str]:
    return {"photo": str(item.photo), "predicted": item.predicted, "probability": f"{item.probability:.6f}",
            "explained": item.explained, "true": item.truth, "figure": item.figure.name, "error": ""}


def write_explanations_csv(path: Path, rows: Iterable[Mapping[str, str]]) -> None:
    """One row per photo, in the columns of COLUMNS; an unreadable photo has only its path and the error."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    write_text_atomic(path, buffer.getvalue())


def save_explanation_figure(image: np.ndarray, heat: np.ndarray, path: Path, title: str, subtitle: str) -> None:
    """The photo as the model saw it, and the heat map blended over it, side by side."""
    plt = pyplot()
    # The colour bar gets its own narrow column, so both panels are drawn at the same size.
    fig, (left, right, bar) = plt.subplots(1, 3, figsize=(7.4, 3.8), width_ratios=(1, 1, 0.05))
    left.imshow(image)
    left.set_title("input", fontsize=9)
    right.imshow(image)
    shown = right.imshow(heat, cmap="jet", alpha=0.45, vmin=0.0, vmax=1.0)
    right.set_title(subtitle, fontsize=9)
    for ax in (left, right):
        ax.axis("off")
    fig.colorbar(shown, cax=bar).set_label("relative evidence (1 = strongest in this photo)", fontsize=8)
    fig.suptitle(title, fontsize=10)
    with atomic_write(path) as handle:
        save_figure(fig, handle, format="png", dpi=110)


def worst_mistakes(run_dir: str | Path, count: int, predictions: str = PREDICTIONS_FILE) -> dict[Path, str]:
    """The `count` photos the run's last evaluation got wrong most confidently, with their true class."""
    path = Path(run_dir) / predictions
    if not path.is_file():
        raise CatsdogsError(f"{run_dir} has no {predictions}: run `catsdogs evaluate {shlex.quote(str(run_dir))}` "
                            "first")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if rows and not {"path", "label", "predicted"} <= set(rows[0]):
        raise CatsdogsError(f"{path} is not a predictions file written by `catsdogs evaluate`")
    wrong = [row for row in rows if row["label"] != row["predicted"]]
    if not wrong:
        raise CatsdogsError(f"the last evaluation of {run_dir} made no mistakes on its {len(rows)} photos")
    wrong.sort(key=lambda row: -float(row.get(f"p_{row['predicted']}") or 0.0))
    return {Path(unescape_name(row["path"])): row["label"] for row in wrong[:count]}  # the file's own name
