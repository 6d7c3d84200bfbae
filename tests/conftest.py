"""Shared fixtures: a tiny, learnable split folder of generated photos."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from tests.helpers import write_tiny_split

TinySplit = Callable[..., Path]


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
