"""Run folders: one home for their file names and formats, and for choosing, finding and resolving runs."""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Iterable, Mapping

import yaml

from catsdogs.atomic import write_text_atomic
from catsdogs.errors import CatsdogsError
from catsdogs.names import escape_names
from catsdogs.training.checkpoint import load_checkpoint, save_checkpoint

RUNS_ROOT = Path("runs")
# The files of a run folder. These names are written out here and nowhere else in catsdogs.
CONFIG_FILE = "config.yaml"  # the resolved settings (train)
HISTORY_FILE = "history.csv"  # one row per epoch (train)
STATUS_FILE = "status.json"  # how training ended (train)
LAST_FILE, BEST_FILE = "last.pt", "best.pt"  # checkpoints: to resume from, and the best epoch's weights
METRICS_FILE = "metrics.json"  # evaluate's results, with a suffix for other splits, checkpoints and TTA
CONFUSION_FILE = "confusion_matrix.png"
PREDICTIONS_FILE = "predictions.csv"
CURVES_FILE = "curves.png"  # plot-curves' figure
REPORT_FILE = "report.html"  # catsdogs report's page
EXPLAIN_DIR, EXPLANATIONS_FILE = "explain", "explanations.csv"  # explain's figures and their list
AUTO_FILE = "auto.json"  # what auto (frontier: true) measured and chose (train)
RUN_MARKER = CONFIG_FILE
CHECKPOINTS = {"last": LAST_FILE, "best": BEST_FILE}
HISTORY_COLUMNS = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_balanced_acc", "lr", "seconds")
HISTORY_REQUIRED = HISTORY_COLUMNS[:5]  # what plots need; older runs lack the rest
OPTIONAL_STATUS_KEYS = ("reason", "threads", "node", "device")  # left out of status.json when unknown
DEFAULT_CHOSEN_BY = "val_acc"  # what made an epoch the best, for runs that did not record it


def suffixed(name: str, suffix: str) -> str:
    """`name` with `suffix` before its extension: metrics.json, _tta -> metrics_tta.json."""
    path = PurePath(name)
    return f"{path.stem}{suffix}{path.suffix}"


@dataclass
class RunStatus:
    """status.json: how training ended and which epoch best.pt holds. Missing keys (older runs) take
    the defaults here."""

    status: str | None = None  # finished | early-stopped | time-budget | interrupted
    epochs_done: int | None = None
    epochs: int | None = None
    best_epoch: int | None = None  # best.pt's epoch, and its val accuracy and balanced accuracy
    best_val_acc: float | None = None
    best_val_balanced_acc: float | None = None
    best_chosen_by: str = DEFAULT_CHOSEN_BY
    init_hash: str | None = None
    hardware: str | None = None
    unreadable_images: list[str] = field(default_factory=list)
    reason: str | None = None  # why it stopped early
    threads: int | None = None  # where it ran (training/placement.py), for runs that recorded it
    node: str | None = None
    device: str | None = None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RunStatus:
        """Read what a status.json holds; keys it lacks take their defaults, unknown ones are left out."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known and v is not None})

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        return {k: v for k, v in values.items() if v is not None or k not in OPTIONAL_STATUS_KEYS}


def format_history(rows: Iterable[Mapping[str, Any]]) -> str:
    """history.csv's text: HISTORY_COLUMNS, one row per epoch."""
    lines = [",".join(HISTORY_COLUMNS)]
    for row in rows:
        # nan: a column that rows saved by an older catsdogs lack
        lines.append(",".join(_fmt(row.get(c, math.nan)) for c in HISTORY_COLUMNS))
    return "\n".join(lines) + "\n"


def _fmt(value: Any) -> str:
    return f"{value:.6f}" if isinstance(value, float) else str(value)


def read_history(run_dir: Path) -> dict[str, list[float]]:
    """Columns of `run_dir/history.csv` as lists of floats."""
    path = Path(run_dir) / HISTORY_FILE
    if not path.is_file():
        raise CatsdogsError(f"{run_dir} has no {HISTORY_FILE}: has its training finished an epoch?")
    with path.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        raise CatsdogsError(f"{path} holds no epochs yet")
    missing = [c for c in HISTORY_REQUIRED if c not in rows[0]]
    try:
        if missing:
            raise ValueError(missing)
        return {key: [float(row[key]) for row in rows] for key in rows[0]}
    except (TypeError, ValueError):
        raise CatsdogsError(f"{path} is not a catsdogs history file (it needs the columns "
                            f"{', '.join(HISTORY_REQUIRED)})") from None


@dataclass(frozen=True)
class RunFolder:
    """A typed view of one run folder: where each of its files lives, and how each is read and written."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def history_path(self) -> Path:
        return self.path / HISTORY_FILE

    @property
    def status_path(self) -> Path:
        return self.path / STATUS_FILE

    @property
    def last_path(self) -> Path:
        return self.path / LAST_FILE

    @property
    def best_path(self) -> Path:
        return self.path / BEST_FILE

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def predictions_path(self) -> Path:
        return self.path / PREDICTIONS_FILE

    @property
    def report_path(self) -> Path:
        return self.path / REPORT_FILE

    @property
    def auto_path(self) -> Path:
        return self.path / AUTO_FILE

    def write_auto(self, record: Mapping[str, Any]) -> None:
        write_text_atomic(self.auto_path, json.dumps(escape_names(dict(record)), indent=2) + "\n")

    @property
    def explain_dir(self) -> Path:
        return self.path / EXPLAIN_DIR

    def eval_dir(self, photos: str) -> Path:
        """Where evaluate puts its results on a photo folder named `photos` other than the run's split."""
        return self.path / f"eval-{photos}"

    def looks_like_run(self) -> bool:
        """Whether it holds a config or a checkpoint, as every folder `catsdogs train` made does."""
        return any(p.is_file() for p in (self.config_path, self.best_path, self.last_path))

    def has_checkpoint(self) -> bool:
        return self.last_path.is_file() or self.best_path.is_file()

    def result_files(self, suffix: str = "") -> tuple[Path, Path, Path]:
        """evaluate's metrics, confusion-matrix figure and predictions here, with `suffix` (_tta, _last, ...)."""
        metrics, figure, predictions = (self.path / suffixed(name, suffix)
                                        for name in (METRICS_FILE, CONFUSION_FILE, PREDICTIONS_FILE))
        return metrics, figure, predictions

    def all_metrics(self) -> list[Path]:
        """Every metrics file here, whatever its suffix."""
        return sorted(self.path.glob(suffixed(METRICS_FILE, "*")))

    # ---- config.yaml ---------------------------------------------------------------------------
    def read_config(self) -> dict[str, Any]:
        """config.yaml's values as written (unvalidated); an empty file gives {}."""
        return yaml.safe_load(self.config_path.read_text(encoding="utf-8")) or {}

    def write_config(self, text: str) -> None:
        write_text_atomic(self.config_path, text)

    # ---- history.csv ---------------------------------------------------------------------------
    def read_history(self) -> dict[str, list[float]]:
        return read_history(self.path)

    def write_history(self, rows: Iterable[Mapping[str, Any]]) -> None:
        write_text_atomic(self.history_path, format_history(rows))

    # ---- status.json ---------------------------------------------------------------------------
    def read_status(self) -> RunStatus | None:
        """status.json, or None when there is none; unreadable JSON raises CatsdogsError naming the file."""
        values = read_json(self.status_path)
        if values is not None and not isinstance(values, dict):
            raise CatsdogsError(f"{self.status_path} is not a catsdogs status file")
        return None if values is None else RunStatus.from_dict(values)

    def write_status(self, status: RunStatus) -> None:
        write_text_atomic(self.status_path, json.dumps(escape_names(status.to_dict()), indent=2) + "\n")

    # ---- metrics.json --------------------------------------------------------------------------
    def read_metrics(self) -> dict[str, Any] | None:
        """The run's own test metrics (metrics.json), or None before `catsdogs evaluate`."""
        return read_json(self.metrics_path)

    # ---- checkpoints ---------------------------------------------------------------------------
    def checkpoint_path(self, which: str) -> Path:
        """`last` or `best`: that checkpoint's path, whether it exists or not."""
        return self.path / CHECKPOINTS[which]

    def load(self, which: str) -> dict[str, Any]:
        return load_checkpoint(self.checkpoint_path(which))

    def save(self, which: str, state: dict[str, Any]) -> None:
        save_checkpoint(state, self.checkpoint_path(which))


def read_json(path: Path) -> dict[str, Any] | None:
    """A JSON file of a run (None when absent); unreadable JSON raises CatsdogsError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, ValueError):
        raise CatsdogsError(f"{path} is not readable JSON") from None


def new_run_dir(path: str | Path) -> Path:
    """Create `path`, or `path-2`, `path-3`, ... when it exists: a new run never reuses a folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate, number = path, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            number += 1
            candidate = path.with_name(f"{path.name}-{number}")


def _activity(run: Path) -> float:
    return max((run / name).stat().st_mtime for name in (CONFIG_FILE, HISTORY_FILE, LAST_FILE)
               if (run / name).exists())


def list_runs(root: str | Path = RUNS_ROOT) -> list[Path]:
    """Run folders (holding their config file) under `root`, at any depth, oldest activity first."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = [marker.parent for marker in root.rglob(RUN_MARKER)]
    return sorted(runs, key=lambda run: (_activity(run), str(run)))


def latest_run(root: str | Path = RUNS_ROOT) -> Path:
    """The run with the most recent activity among those with a checkpoint (any run when none has one):
    a run stopped before its first save has nothing to evaluate, plot or resume."""
    runs = list_runs(root)
    if not runs:
        raise CatsdogsError(f"no runs under {root}/: train one with `catsdogs train --optim adam`, "
                            "or name a run folder")
    saved = [run for run in runs if RunFolder(run).has_checkpoint()]
    return (saved or runs)[-1]


def resolve_checkpoint(run_dir: Path, which: str) -> Path:
    """`best`, `last` or a path to a .pt file; a run without it gives a clear error."""
    if which in CHECKPOINTS:
        folder = RunFolder(run_dir)
        path = folder.checkpoint_path(which)
        if which == "best" and not path.is_file() and folder.last_path.is_file():
            resume = f"catsdogs train --resume {shlex.quote(str(run_dir))}"
            raise CatsdogsError(f"{run_dir} has no {BEST_FILE} yet (it stopped before finishing an epoch): use "
                                f"--checkpoint last for its latest weights, or `{resume}`")
        if not path.is_file():
            raise CatsdogsError(f"{run_dir} has no {path.name}: has its training finished an epoch?")
        return path
    path = Path(which)
    if not path.is_file():
        raise CatsdogsError(f"checkpoint {path} does not exist (use best, last or a .pt file)")
    return path
