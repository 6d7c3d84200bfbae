"""Shared fixtures: a tiny, learnable split folder of generated photos."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Callable, Iterator

import pytest

from tests.helpers import write_tiny_split

TinySplit = Callable[..., Path]


def pytest_configure(config: pytest.Config) -> None:
    """Ctrl-C as a terminal gives it, whoever started the suite: a shell without job control that starts it in the
    background (`pytest &` in a script) ignores SIGINT in it, every process a test starts would inherit that, and
    the tests of Ctrl-C would fail."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def ctrl_c_left_as_found() -> Iterator[None]:
    """A test must leave this process's Ctrl-C and SIGTERM handling as it found them: an ignored SIGINT would be
    inherited by every process a later test starts, and their Ctrl-C tests would fail far from the cause."""
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    changed = [signal.Signals(sig).name for sig, handler in before.items() if signal.getsignal(sig) != handler]
    for sig, handler in before.items():
        signal.signal(sig, handler)
    assert not changed, f"the test left {', '.join(changed)} handled differently"


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
