"""A grid of a split's photos, as they are or as training feeds them to the model.

The tutorial's visualize_batch, done with training's own batch code.
"""

from __future__ import annotations

import dataclasses
import io
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catsdogs.atomic import atomic_write
from catsdogs.data.cache import SPLITS, BatchSource, ImageSplit, read_class_folder
from catsdogs.data.images import load_rgb
from catsdogs.data.transforms import denormalise
from catsdogs.errors import CatsdogsError, UsageError
from catsdogs.figures import pyplot, save_figure
from catsdogs.training.config import TrainConfig, config_from_dict
from catsdogs.training.loop import alternating_flip_coins, step_flips, step_size
from catsdogs.training.runs import RunFolder
from catsdogs.training.run_setup import training_generators, training_preset

FORMATS = (".png", ".svg", ".pdf")
SIGNATURE = "catsdogs show"  # in each figure's metadata, so a later `show` may replace it
THUMBNAIL = 320  # longest side of a photo drawn as it is: sharp in a cell, small in memory
COLUMNS = 8  # the tutorial's grid is 8 wide


@dataclass
class PhotoGrid:
    """What a grid draws: one uint8 H x W x 3 picture per cell, titled with its class."""

    pixels: list[np.ndarray]
    titles: list[str]
    paths: list[Path]
    caption: str
    batch: torch.Tensor | None = None  # with --augment: the model's input itself (normalised NCHW)
    unreadable: list[Path] = field(default_factory=list)


def read_photos(data: str | Path, split: str) -> ImageSplit:
    """The photos of `data/split` (a folder from `catsdogs split`), or of `data` itself when it is a
    plain folder of class folders (PetImages/Cat, PetImages/Dog)."""
    data = Path(data)
    if not data.exists():
        raise CatsdogsError(f"{data} does not exist: pass a split folder from `catsdogs split`, or a folder with "
                            "one subfolder of photos per class")
    if not data.is_dir():
        raise CatsdogsError(f"{data} is a file: pass a split folder, or a folder with one subfolder of photos per "
                            "class")
    if (data / split).is_dir():
        return read_class_folder(data / split)
    present = [name for name in SPLITS if (data / name).is_dir()]
    if present:
        raise CatsdogsError(f"{data} has no {split}/ folder (it has {', '.join(f'{p}/' for p in present)})")
    return read_class_folder(data)


def check_count(n: int) -> None:
    if n < 1:
        raise UsageError(f"--n must be at least 1, got {n}")


def draw_photos(data: str | Path, split: str = "train", n: int = 32, seed: int = 42) -> PhotoGrid:
    """`n` random photos of the split as they are (upright, RGB), balanced across the classes as far
    as each class has photos; the same seed draws the same photos. Unreadable ones are passed over."""
    check_count(n)
    photos = read_photos(data, split)
    rng = np.random.default_rng(seed)
    queues = [rng.permutation(np.flatnonzero(photos.labels == label)).tolist()
              for label in range(len(photos.classes))]
    # Round robin over the classes (in a random order): every prefix is as balanced as it can be,
    # and when a class runs out (or its photos do not decode) the others fill its places.
    turn = rng.permutation(len(queues)).tolist()
    candidates = [queues[c][i] for i in range(max(map(len, queues))) for c in turn if i < len(queues[c])]
    chosen: list[tuple[int, np.ndarray]] = []
    unreadable: list[Path] = []
    for index in candidates:
        if len(chosen) == n:
            break
        try:
            image = load_rgb(photos.paths[index], draft_size=THUMBNAIL)
        except Exception:  # noqa: BLE001 - decoders raise many types on bad data: draw another photo
            unreadable.append(photos.paths[index])
            continue
        image.thumbnail((THUMBNAIL, THUMBNAIL))
        chosen.append((index, np.asarray(image)))
    if not chosen:
        raise CatsdogsError(f"none of the {len(unreadable)} photos in {photos.root} could be read")
    chosen = [chosen[i] for i in rng.permutation(len(chosen))]  # classes mixed, not alternating
    caption = (f"{photos.root}: {_count(len(chosen), 'random photo')} (seed {seed})"
               + (f"; only {len(chosen)} of the {n} asked for" if len(chosen) < n else ""))
    return PhotoGrid([pixels for _, pixels in chosen], [photos.classes[photos.labels[i]] for i, _ in chosen],
                     [photos.paths[i] for i, _ in chosen], caption, unreadable=unreadable)


def run_config(run_dir: str | Path) -> TrainConfig:
    """The resolved config a run folder holds (config.yaml), validated."""
    import yaml

    path = RunFolder(run_dir).config_path
    if not Path(run_dir).is_dir():
        raise CatsdogsError(f"run folder {run_dir} does not exist")
    if not path.is_file():
        raise CatsdogsError(f"{run_dir} has no {path.name}: is it a run folder from `catsdogs train`?")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        raise CatsdogsError(f"{path}: not valid YAML") from None
    if not isinstance(values, dict):
        raise CatsdogsError(f"{path}: expected a mapping of settings")
    return config_from_dict(values, str(path))


def draw_training_batch(cfg: TrainConfig, n: int = 32, data: str | Path | None = None,
                        label: str = "defaults") -> PhotoGrid:
    """The first `n` training images of the run `cfg` describes, as its first steps feed them to the
    model: the same batches (order generator, batch size), the same resize, augmentation and flips
    (the run's preset, augmentation generator), through the same BatchSource. Only the device may
    differ: this draws on the CPU. Without a batch size (the defaults) one batch of `n` is drawn.
    """
    check_count(n)
    photos = read_photos(data if data is not None else cfg.data, "train")
    preset = training_preset(cfg)
    source = BatchSource(photos, preset, None, workers=0)
    order_gen, aug_gen = training_generators(cfg.seed)
    order = source.order(cfg.batch_size or n, order_gen)
    # The first steps of a run plan all its epochs (a time budget re-plans only after five steps).
    planned, coins = len(order) * cfg.epochs, alternating_flip_coins(cfg, len(source))
    inputs, labels, sizes = [], [], set()
    seen = 0
    with warnings.catch_warnings():  # a photo already at the image size decodes to a read-only array; read only
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for step, (indices, (images, batch_labels)) in enumerate(zip(order, source.batches(order))):
            size = step_size(cfg, step, planned)
            sizes.add(size or cfg.image_size)
            # What EpochLoop._step hands the model.
            inputs.append(preset(images, aug_gen, size, step_flips(coins, indices, 0, len(batch_labels))))
            labels.append(batch_labels)
            seen += len(batch_labels)
            if seen >= n or len(sizes) > 1:
                break
    if not inputs:
        raise CatsdogsError(f"none of the photos in {photos.root} could be read")
    if len(sizes) > 1:  # progressive resizing ends within the drawn steps: one grid holds one size
        inputs, labels = inputs[:-1], labels[:-1]
    batch, label_list = torch.cat(inputs)[:n], torch.cat(labels)[:n].tolist()
    pixels = [image.numpy() for image in denormalise(batch)]
    flips = "alternating flips" if coins is not None else f"hflip {cfg.hflip:g}"
    extras = [f"augment {cfg.augment}", flips] + ([f"vflip {cfg.vflip:g}"] if cfg.vflip else [])
    side = batch.shape[-1]
    scaled = f" of {cfg.image_size}, progressive resizing" if side != cfg.image_size else ""
    caption = (f"{label}: the first {_count(len(pixels), 'training image')} of epoch 1 as the model gets them "
               f"({side} px{scaled}, {', '.join(extras)}, seed {cfg.seed})")
    failed = set(source.failed)
    paths = [photos.paths[i] for indices in order for i in indices if photos.paths[i] not in failed][:len(pixels)]
    return PhotoGrid(pixels, [photos.classes[i] for i in label_list], paths, caption, batch=batch,
                     unreadable=list(source.failed))


def save_grid(grid: PhotoGrid, out: str | Path) -> Path:
    """Draw the grid into `out`; the format follows its suffix. A file there is replaced only when
    an earlier `catsdogs show` drew it."""
    out = Path(out)
    if out.suffix.lower() not in FORMATS:
        raise UsageError(f"--out {out}: use a .png, .svg or .pdf file name")
    if out.exists() and not _drawn_by_show(out):
        raise CatsdogsError(f"{out} exists and is not a grid drawn by `catsdogs show`: choose another --out, or "
                            "move it")
    if not out.parent.is_dir():
        raise CatsdogsError(f"--out {out}: folder {out.parent} does not exist")
    figure = grid_figure(grid)
    kind = out.suffix.lower().lstrip(".")
    with atomic_write(out) as handle:
        save_figure(figure, handle, format=kind, dpi=100,
                    metadata={("Software" if kind == "png" else "Creator"): SIGNATURE})
    return out


def grid_figure(grid: PhotoGrid, columns: int = COLUMNS) -> Any:  # a matplotlib Figure
    """The photos in rows of `columns`, each titled with its class, the caption above."""
    plt = pyplot()
    columns = min(columns, len(grid.pixels))
    rows = math.ceil(len(grid.pixels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.75 * columns, 1.9 * rows + 0.45), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, pixels, title in zip(axes.flat, grid.pixels, grid.titles):
        ax.imshow(pixels)
        ax.set_title(title, fontsize=9)
    fig.suptitle(grid.caption, fontsize=9, wrap=True)
    return fig


def png_bytes(grid: PhotoGrid, columns: int = COLUMNS) -> bytes:
    """The grid as PNG bytes, for a page that embeds it."""
    buffer = io.BytesIO()
    save_figure(grid_figure(grid, columns), buffer, format="png", dpi=80)
    return buffer.getvalue()


def _drawn_by_show(path: Path) -> bool:
    try:
        return SIGNATURE.encode() in path.read_bytes()
    except OSError:
        return False


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


def show(data: str | Path | None = None, split: str = "train", n: int = 32, augment: str | None = None,
         seed: int | None = None, out: str | Path | None = None) -> tuple[PhotoGrid, Path]:
    """The `catsdogs show` command: draw the grid and save it.

    `augment` None draws photos as they are; "" draws training images under the default settings;
    a run folder draws them under that run's settings (and from its data, unless `data` is given).
    `seed` None is 42, or the run's own seed with `augment`.
    """
    if augment is None:
        if data is None:
            data = "data"
        grid = draw_photos(data, split, n, 42 if seed is None else seed)
        name = f"show-{split}.png"
    else:
        if split != "train":
            raise UsageError(f"--augment shows training images as the model gets them; --split {split} is never "
                             "augmented (leave --split out, or drop --augment)")
        cfg = run_config(augment) if augment else TrainConfig()
        if seed is not None:
            cfg = dataclasses.replace(cfg, seed=seed)
        label = str(augment) if augment else "default settings"
        grid = draw_training_batch(cfg, n, data, label)
        name = "show-train-augmented.png"
    return grid, save_grid(grid, out if out is not None else name)
