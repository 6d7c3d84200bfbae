"""Plain functions that several test modules share (fixtures live in conftest.py), and `split_fixture`,
which makes the `data` fixture that many modules use."""

from __future__ import annotations

import ast
import csv
import hashlib
import json
import math
import os
import re
import signal
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import pytest
import yaml
from click.testing import CliRunner, Result
from PIL import Image

from catsdogs.cli import main
from catsdogs.data import transforms
from catsdogs.study.layout import run_name
from catsdogs.training.config import TrainConfig

SPLIT_NAMES = ("train", "val", "test")
# Mean colour of each class: cats reddish, dogs bluish, so even a few steps can learn them.
CLASS_COLOURS = {"Cat": (190, 70, 60), "Dog": (60, 70, 190)}


def quiet(_: str) -> None:
    """A `log` that drops every line."""


def invoke(*args: str | Path) -> Result:
    """Run `catsdogs ARGS...` in-process (paths given as they are) and return click's result."""
    return CliRunner().invoke(main, [str(a) for a in args], prog_name="catsdogs")


def history_without_time(run: Path) -> list[list[str]]:
    """A run's history.csv, header included, without the `seconds` column (the one that varies run to run)."""
    with (run / "history.csv").open(encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    seconds = rows[0].index("seconds")
    return [row[:seconds] + row[seconds + 1:] for row in rows]


# ---- photos and split folders ----------------------------------------------------------------------------

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


def split_fixture(per_class: tuple[int, int, int], size: int, scope: str = "function") -> Callable[..., Path]:
    """A `data` fixture: a tiny split folder (see `write_tiny_split`) in a fresh temporary folder of its own.

    A module declares its split in one line, `data = split_fixture((20, 6, 6), size=64)`; `scope="module"`
    writes it once for the module's tests (which then must not write into it). Tests that run in the split's
    parent folder find it as `data.parent`, which holds nothing else.
    """
    @pytest.fixture(scope=scope, name="data")
    def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
        return write_tiny_split(tmp_path_factory.mktemp("split"), per_class=per_class, size=size)

    return data


def write_photo(path: Path, seed: int, mode: str = "RGB", fmt: str = "JPEG", size: int = 32) -> Path:
    """Save a small noise image (distinct per seed, so no accidental duplicates)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if mode == "P":
        image = image.quantize(16)
    elif mode != "RGB":
        image = image.convert(mode)
    image.save(path, fmt)
    return path


def write_blank_png(path: Path, width: int, height: int, header_only: bool = False) -> None:
    """A 1-bit PNG of any size in a few KB: the classic decompression bomb (or a genuine huge photo).

    `header_only` writes no pixel rows: only a decoder that trusts the header size is fooled.
    """
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    packer = zlib.compressobj(9)
    row = b"\0" * (1 + (width + 7) // 8)
    body = b"".join(packer.compress(row) for _ in range(0 if header_only else height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def make_classes(root: Path, sizes: dict[str, int], seed: int = 0) -> Path:
    for offset, (name, count) in enumerate(sizes.items()):
        for i in range(count):
            write_photo(root / name / f"{name.lower()}.{i}.jpg", seed=seed + 1000 * offset + i)
    return root


def read_rows(path: Path) -> list[dict]:
    with open(path, encoding="utf-8", newline="") as file:  # strict: every CSV split writes is valid UTF-8
        return list(csv.DictReader(file))


# ---- training hooks ------------------------------------------------------------------------------------

def on_training_batch(monkeypatch, act) -> list[tuple[list[str], str]]:
    """Record each training step's batch as the model gets it, calling `act(number)` (1-based) first.

    Per step: the photos (hashes of their decoded pixels) and a hash of the augmented batch. The hook is
    the training preset (catsdogs.data.transforms.Preset), which every training step calls once.
    """
    steps: list[tuple[list[str], str]] = []
    original = transforms.Preset.__call__

    def call(self, batch, *args, **kwargs):
        if self.train:
            act(len(steps) + 1)
        out = original(self, batch, *args, **kwargs)
        if self.train:
            steps.append(([hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in batch],
                          hashlib.sha1(out.numpy().tobytes()).hexdigest()))
        return out

    monkeypatch.setattr(transforms.Preset, "__call__", call)
    return steps


def interrupt_after(monkeypatch, steps: int) -> list[tuple[list[str], str]]:
    """Deliver a real SIGINT to this process during training step `steps`: as a Ctrl-C, it stops the run
    once that step is done. Returns the record of the steps (see on_training_batch)."""
    def ctrl_c(number: int) -> None:
        if number == steps:
            os.kill(os.getpid(), signal.SIGINT)

    return on_training_batch(monkeypatch, ctrl_c)


# ---- a small recipe run ----------------------------------------------------------------------------------

RECIPE_SIZE = 64
STEPS_PER_EPOCH = 5  # 40 training photos, batch 8: split_fixture((20, 6, 6), size=RECIPE_SIZE)


def spy_on_study_training(monkeypatch) -> list[tuple[str | None, object]]:
    """Each call a study makes to `train`, as (the new run's folder or None, the folder it resumes or None);
    the runs still train for real."""
    from catsdogs.study import study_run

    calls: list[tuple[str | None, object]] = []
    real_train = study_run.train

    def spy(cfg, resume=None, **kwargs):
        calls.append((cfg.out if cfg else None, resume))
        return real_train(cfg, resume=resume, **kwargs)

    monkeypatch.setattr(study_run, "train", spy)
    return calls


def recipe_config(data: Path, out: Path, **overrides) -> TrainConfig:
    """Four epochs of bncnn-s with SGD-Nesterov, one-cycle and crops at RECIPE_SIZE px on the CPU; `overrides` win."""
    values = dict(data=str(data), out=str(out), optim="sgd-nesterov", model="bncnn-s", image_size=RECIPE_SIZE,
                  epochs=4, batch_size=8, device="cpu", precision="fp32", scheduler="onecycle", augment="crop")
    values.update(overrides)
    return TrainConfig(**values)


# ---- processes: torchrun and its workers -----------------------------------------------------------------

TRAIN = ["--optim", "adam", "--image-size", "96", "--batch-size", "16", "--device", "cpu", "--precision", "fp32"]


def torchrun(args: list[str], cwd: Path, program: tuple[str, ...] = ("-m", "catsdogs"), env: dict[str, str] | None = None,
             **kwargs) -> subprocess.Popen:
    env = {**(os.environ if env is None else env), "OMP_NUM_THREADS": "1"}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(name, None)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               *program, "train", *args]
    return subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)


def assert_finished(process: subprocess.Popen, run: Path | None = None) -> str:
    """Wait for the run while reading its output (a full pipe would stall it), and check it succeeded.
    With `run`, a failure that is only the abort at exit, after `run` was saved, is an AbortedAfterSaving."""
    out = finish(process)
    if process.returncode != 0 and run is not None and aborted_after_saving(out, run):
        raise AbortedAfterSaving(out)
    assert process.returncode == 0, out
    return out


ABORT_AT_EXIT = "terminate called without an active exception"


class AbortedAfterSaving(AssertionError):
    """A two-process run saved all its files, then one of its processes aborted as it exited."""


def aborted_after_saving(out: str, run: Path) -> bool:
    """The one known flake, exactly: `run` finished (status.json says so, last.pt is there), torchrun reports
    every failed process as ended by SIGABRT, and the output holds ABORT_AT_EXIT.

    It is gloo's teardown at interpreter exit (torch 2.14): the process group DistributedDataParallel used
    outlives destroy_process_group, and finalizing the interpreter under its threads calls std::terminate.
    The train command skips that teardown with os._exit under torchrun (catsdogs.cli.train_commands.end_torchrun_process).
    """
    status = run / "status.json"
    codes = re.findall(r"^\s*exitcode\s*:\s*(-?\d+)", out, flags=re.MULTILINE)
    return (ABORT_AT_EXIT in out and bool(codes) and set(codes) == {"-6"} and (run / "last.pt").is_file()
            and status.is_file() and json.loads(status.read_text()).get("status") == "finished")


def finish(process: subprocess.Popen, timeout: float = 300) -> str:
    out, _ = process.communicate(timeout=timeout)
    return out


PAUSING = Path(__file__).resolve().parent / "pausing"


def paused_at_epoch_2(folder: Path) -> dict[str, str]:
    """The environment for a process (and its children) whose training runs, once their first epoch is saved,
    wait until they are asked to stop, each leaving a file `waiting-PID` in `folder` as it starts to wait: a Ctrl-C
    then finds every run at the start of its second epoch (tests/pausing/sitecustomize.py)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = os.pathsep.join(filter(None, [str(PAUSING), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "CATSDOGS_TEST_PAUSE": str(folder)}


def waiting(folder: Path) -> int:
    """How many processes wait at the start of epoch 2 (see paused_at_epoch_2)."""
    return len(list(folder.glob("waiting-*")))


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


# ---- studies ---------------------------------------------------------------------------------------------

STUDY_SIZE = 96  # cnn3's minimum
STUDY_OPTIMS = ("minibatch-sgd", "adam")
TEST_IMAGES = 20  # hand-made study accuracies are multiples of 1/20
HISTORY_HEADER = "epoch,train_loss,train_acc,val_loss,val_acc,lr,seconds\n"
HISTORY = HISTORY_HEADER + "1,0.69,0.5,0.69,0.5,0.01,2.0\n"


def tiny_spec(data: Path, out: Path, **how):
    """A two-optimizer, one-seed, two-epoch study of `data` at cnn3's smallest size."""
    from catsdogs.study.compare import StudySpec

    base = TrainConfig(data=str(data), image_size=STUDY_SIZE, epochs=2, device="cpu", precision="fp32")
    return StudySpec(base, STUDY_OPTIMS, seeds=1, out=out, **how)


def run_results(out: Path) -> dict[str, tuple]:
    """Each run's history (times aside), test predictions and test accuracy."""
    results = {}
    for run in sorted((out / "runs").iterdir()):
        metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
        results[run.name] = (history_without_time(run), (run / "predictions.csv").read_text(encoding="utf-8"),
                             metrics["accuracy"])
    return results


def summary_without_time(out: Path) -> dict:
    """summary.json less what depends on the clock."""
    def drop(value):
        if isinstance(value, dict):
            return {k: drop(v) for k, v in value.items() if "second" not in k and "time" not in k and k != "study"}
        if isinstance(value, list):
            return [drop(v) for v in value]
        return value
    return drop(json.loads((out / "summary.json").read_text(encoding="utf-8")))


def write_study(root: Path, accuracies: dict[str, list[float]], tune_lr: bool = False, history: str = HISTORY,
                **settings) -> Path:
    """A finished study folder with the given test accuracy per optimizer and seed (seeds 42, 43, ...), each
    run with `history` as its history.csv and `settings` added to its config."""
    data = write_tiny_split(root, per_class=(2, 1, 1), size=8)
    study = root / "study"
    seeds = [42 + k for k in range(len(next(iter(accuracies.values()))))]
    config = {"data": str(data), "epochs": 1, "patience": None, "image_size": 96, **settings}
    study.mkdir()
    (study / "study.json").write_text(json.dumps({"optims": list(accuracies), "seeds": seeds, "budget": "epochs",
                                                  "tune_lr": tune_lr, "config": config}))
    for optim, values in accuracies.items():
        for seed, accuracy in zip(seeds, values):
            run = study / "runs" / run_name(optim, seed)
            run.mkdir(parents=True)
            (run / "config.yaml").write_text(yaml.safe_dump({**config, "optim": optim, "seed": seed, "lr": 0.01,
                                                             "batch_size": 8}))
            (run / "history.csv").write_text(history)
            (run / "status.json").write_text(json.dumps({"status": "finished", "init_hash": f"h{seed}"}))
            (run / "metrics.json").write_text(json.dumps({"accuracy": accuracy, "images": TEST_IMAGES,
                                                          "confusion_matrix": [[10, 0], [10, 0]]}))
    return study


def visible_ticks(ax) -> list[float]:
    """The x tick locations inside the axes' view (a locator may also place some just outside it)."""
    low, high = ax.get_xlim()
    return [float(t) for t in ax.get_xticks() if low <= t <= high]


def literals_outside(home: str, names: set[str], allowed: set[tuple[str, str]] = frozenset()) -> list[str]:
    """Where catsdogs/ or benchmarks/ spell one of `names` (or a path ending in one) as a string literal outside
    the module `home` (e.g. "catsdogs/training/runs.py"), as "file:line: 'literal'"; (file, name) pairs in
    `allowed` do not count."""
    root = Path(__file__).resolve().parents[1]
    found = []
    for path in sorted([*(root / "catsdogs").rglob("*.py"), *(root / "benchmarks").rglob("*.py")]):
        where = path.relative_to(root).as_posix()
        if where == home:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                found += [f"{where}:{node.lineno}: {node.value!r}" for name in names
                          if (node.value == name or node.value.endswith("/" + name)) and (where, name) not in allowed]
    return found


def small_study(data: Path, out: Path, size: int, **overrides: Any) -> Any:
    """A study of one-epoch runs at `size` px on the CPU in fp32: adam alone, one seed, unless `overrides` say."""
    from catsdogs.study.compare import StudySpec

    base = TrainConfig(data=str(data), image_size=size, epochs=1, device="cpu", precision="fp32")
    return StudySpec(base, **{"optims": ("adam",), "seeds": 1, "out": out, **overrides})


def stand_in_sweep_training(accuracy: Callable[[str, float, int], float], trained: list[str],
                            interrupt: set[str] = frozenset()) -> Callable[..., Any]:
    """`train` for a study whose sweep runs are stand-ins: each writes the files a finished run leaves, with the
    validation accuracy `accuracy(optim, step, seed)` (step: half-decades from the optimizer's default; once, a
    run named in `interrupt` stops as if by Ctrl-C); study runs train for real. Each sweep run's folder name is
    appended to `trained`."""
    from catsdogs.study import study_run as study_run_module
    from catsdogs.training import train as train_module
    from catsdogs.training.optim import get_optimizer_spec

    real_train, interrupt = study_run_module.train, set(interrupt)

    def train(cfg, resume=None, **kwargs):
        if cfg is None or "/sweep/" not in cfg.out:
            return real_train(cfg, resume=resume, **kwargs)
        run = Path(cfg.out)
        trained.append(run.name)
        if run.name in interrupt:
            interrupt.discard(run.name)
            return SimpleNamespace(status="interrupted")
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(yaml.safe_dump(train_module.resolve_config(cfg).to_dict()))
        acc = accuracy(cfg.optim, 2 * math.log10(cfg.lr / get_optimizer_spec(cfg.optim).defaults["lr"]), cfg.seed)
        (run / "history.csv").write_text(HISTORY_HEADER + f"1,0.6,0.7,{1 - acc:.4f},{acc:.4f},{cfg.lr},1.5\n")
        (run / "status.json").write_text(json.dumps({"status": "finished"}))
        (run / "best.pt").write_bytes(b"")
        return SimpleNamespace(status="finished")

    return train
