"""Shared fixtures: a tiny, learnable split folder of generated photos."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

SPLIT_NAMES = ("train", "val", "test")
# Mean colour of each class: cats reddish, dogs bluish, so even a few steps can learn them.
CLASS_COLOURS = {"Cat": (190, 70, 60), "Dog": (60, 70, 190)}

TinySplit = Callable[..., Path]


def write_tiny_split(root: Path, per_class: tuple[int, int, int] = (12, 4, 4), size: int = 48,
                     seed: int = 0) -> Path:
    """Write `root/data/{train,val,test}/{Cat,Dog}/N.jpg` and return `root/data`.

    `per_class` gives the number of images of each class in train, val and test. Every image
    is `size` x `size` RGB: its class colour plus Gaussian noise (sd 25), drawn from a generator
    seeded by `seed`, so the same arguments always write the same files and no two images are
    byte-identical.
    """
    data = Path(root) / "data"
    rng = np.random.default_rng(seed)
    for split, count in zip(SPLIT_NAMES, per_class):
        for name, colour in CLASS_COLOURS.items():
            folder = data / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(count):
                noise = rng.normal(0.0, 25.0, (size, size, 3))
                pixels = np.clip(np.asarray(colour, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{index}.jpg", quality=95)
    return data


@pytest.fixture
def tiny_split() -> TinySplit:
    """A factory: `tiny_split(root, per_class=(12, 4, 4), size=48) -> root/"data"`.

    Writes a split folder as `catsdogs split` would leave it, with two classes (Cat reddish,
    Dog bluish) of small generated JPEGs; see `write_tiny_split` for the details. Call it with
    a folder under `tmp_path`.
    """
    return write_tiny_split


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A finished two-epoch cnn3 run (96 px, fp32, CPU) on a tiny split: `(run_dir, data_dir)`.

    Shared by the whole session, so tests must not write into it: copy it first
    (`shutil.copytree`) when the code under test writes into the run folder.
    """
    from catsdogs.training.config import TrainConfig
    from catsdogs.training.train import train

    root = tmp_path_factory.mktemp("tiny_run")
    data = write_tiny_split(root, per_class=(16, 4, 6), size=96)
    cfg = TrainConfig(data=str(data), out=str(root / "run"), optim="adam", image_size=96, epochs=2, batch_size=8,
                      device="cpu", precision="fp32")
    result = train(cfg, progress=False, log=lambda _: None)
    return result.run_dir, data


def children(pid: int) -> list[int]:
    """The processes whose parent is `pid` (a process pool's or torchrun's workers), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found
