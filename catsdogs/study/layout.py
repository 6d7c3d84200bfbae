"""The study folder: one home for its paths and file names, and the typed records of tuning.json and summary.json."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from catsdogs.atomic import write_text_atomic
from catsdogs.errors import CatsdogsError
from catsdogs.study.stats import PairedTest
from catsdogs.training.runs import DEFAULT_CHOSEN_BY

# The files of a study folder. These names are written out here and nowhere else in catsdogs (report.html
# and curves.png are also a run folder's, in catsdogs/training/runs.py).
RUNS_DIR, SWEEP_DIR = "runs", "sweep"  # the study's runs (run_name) and the learning-rate sweep's (sweep_name)
STUDY_FILE = "study.json"  # the arguments the study was made with (compare)
TUNING_FILE = "tuning.json"  # the sweep's record: TuningRecord (compare --tune-lr)
SUMMARY_FILE = "summary.json"  # everything the report says: Summary (report)
REPORT_FILE, REPORT_PAGE = "report.md", "report.html"  # the report, and the same as one page with its figures
CURVES_FIGURE, ACCURACY_FIGURE = "curves.png", "test_accuracy.png"
LR_SWEEP_FIGURE = "lr_sweep.png"  # only with a sweep


def run_name(optim: str, seed: int) -> str:
    """A study run's folder name under runs/."""
    return f"{optim}-seed{seed}"


def sweep_name(optim: str, lr: float, seed: int | None = None) -> str:
    """A sweep run's folder name under sweep/: a tuning seed after the first adds `-seedN` (so a one-seed
    sweep's folders keep their names)."""
    return f"{optim}-lr{lr:g}" + ("" if seed is None else f"-seed{seed}")


def run_entry(name: str) -> str:
    """A study run as summary.json and report.md name it: relative to the study folder."""
    return f"{RUNS_DIR}/{name}"


def figure_names(swept: bool) -> dict[str, str]:
    """The report's figures by what they show (summary.json's `figures`)."""
    return {"curves": CURVES_FIGURE, "test_accuracy": ACCURACY_FIGURE, **({"lr_sweep": LR_SWEEP_FIGURE} if swept else {})}


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CatsdogsError(f"cannot read {path}: {exc}") from None


def _write_json(path: Path, values: Any) -> None:
    write_text_atomic(path, json.dumps(values, indent=2) + "\n")


def _known(cls: type, values: Mapping[str, Any]) -> dict[str, Any]:
    """The keys `cls` declares: keys a file lacks (an older study) take the defaults, unknown ones are left out."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in values.items() if k in names}


# ---- summary.json's records --------------------------------------------------------------------

# The tutorial's claim, best first: summary.json's tutorial_claims test each neighbouring pair of it.
TUTORIAL_RANKING = ("adam", "minibatch-sgd", "momentum", "vanilla-sgd")


def score_name(column: str) -> str:
    """The history column a best epoch is chosen by (metrics.selected_by), in words."""
    return "balanced accuracy" if column == "val_balanced_acc" else "accuracy"


class _BestScore:
    """A record with a best epoch's accuracy and balanced accuracy (a run, a ranking row, a sweep run)."""

    best_val_acc: Any
    best_val_balanced_acc: Any

    def best_score(self, chosen_by: str) -> Any:
        """The best-epoch score the best epoch was chosen by; plain accuracy where balanced was not recorded."""
        balanced = chosen_by == "val_balanced_acc" and self.best_val_balanced_acc is not None
        return self.best_val_balanced_acc if balanced else self.best_val_acc


@dataclass
class Spread:
    """A value over the seeds: mean, standard deviation (None with one seed) and each seed's value."""

    mean: float
    sd: float | None
    values: list[float]


@dataclass
class ToTarget:
    """Epochs (or seconds) to the target accuracy per seed (None: not reached), over the seeds that reached it."""

    values: list[float | None]
    mean: float | None
    sd: float | None
    reached: int
    of: int


@dataclass(kw_only=True)
class RankingRow(_BestScore):
    """One optimizer's row of the ranking: its runs' scores, speeds and statuses over the seeds."""

    optim: str
    test_acc: Spread
    best_val_acc: Spread  # best.pt's epoch, chosen as train chose it: its accuracy, and its balanced accuracy
    best_val_balanced_acc: Spread | None
    final_train_loss: Spread
    epochs_done: list[int]
    epochs_to_target: ToTarget
    seconds_to_target: ToTarget | None = None  # None: a summary written before it was recorded
    wall_seconds: Spread
    epoch_seconds: Spread  # the median epoch of each run
    images_per_second: Spread
    statuses: list[str]
    rank: int = 0  # equal means share a rank (1, 1, 3)
    untrained_seeds: list[int] = field(default_factory=list)  # runs whose val accuracy never left chance (UNTRAINED)
    test_acc_trained: Spread | None = None  # over the other runs, when some never trained and some did

    def same_mean(self, other: RankingRow) -> bool:
        """Whether the two rows have the same mean test accuracy (up to float rounding)."""
        return math.isclose(self.test_acc.mean, other.test_acc.mean, rel_tol=0.0, abs_tol=1e-12)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> RankingRow:
        row = _known(cls, values)
        spreads = ("test_acc", "best_val_acc", "best_val_balanced_acc", "final_train_loss", "wall_seconds",
                   "epoch_seconds", "images_per_second", "test_acc_trained")
        targets = ("epochs_to_target", "seconds_to_target")
        return cls(**row | {k: Spread(**row[k]) for k in spreads if row.get(k) is not None}
                   | {k: ToTarget(**row[k]) for k in targets if row.get(k) is not None})


@dataclass(kw_only=True)
class Comparison:
    """A paired t-test of `better`'s test accuracy against `worse`'s, and its verdict after Holm's correction."""

    better: str
    worse: str
    test: PairedTest | None  # None with one seed
    distinguishable: bool | None
    p_holm: float | None = None
    holm_level: float | None = None  # the level Holm tests it at
    seeds_needed: int | None = None  # for a gap left undecided, the seeds that would tell it apart

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Comparison:
        item = _known(cls, values)
        test = item.get("test")
        return cls(**item | {"test": None if test is None else PairedTest(**test)})


@dataclass(kw_only=True)
class RunRow(_BestScore):
    """One run's line: where it is, how it ended, its best epoch and its test accuracy."""

    run: str  # relative to the study folder (run_entry)
    optim: str
    seed: int
    status: str | None
    epochs: int
    best_epoch: int
    best_val_acc: float
    best_val_balanced_acc: float | None
    test_acc: float
    init_hash: str | None
    seconds: float


@dataclass
class DataCounts:
    path: str
    train_images: int
    val_images: int
    test_images: int


@dataclass
class Hyperparameters:
    """An optimizer's settings in the study, and where its learning rate came from."""

    lr: float | None
    momentum: float | None
    batch_size: int | None
    weight_decay: float | None
    lr_from: str


@dataclass
class Pairing:
    """Whether every optimizer of a seed started from the same weights: each seed's init hash by optimizer."""

    paired: bool
    init_hash: dict[str, dict[str, str | None]]


# ---- tuning.json's records ---------------------------------------------------------------------

@dataclass(kw_only=True)
class SweepRow(_BestScore):
    """One learning rate of the sweep: its runs' best-epoch scores (the mean over the tuning seeds), and
    whether it was chosen."""

    optim: str
    lr: float
    factor: float  # the rate over the optimizer's default
    best_epoch: int
    best_val_acc: float
    best_val_balanced_acc: float | None
    best_val_loss: float
    final_train_loss: float
    epochs: int
    step: int = 0  # the factor in half-decade steps (catsdogs/study/tuning.py)
    chosen: bool = False
    at_edge: bool = False
    at_limit: bool = False  # chosen, and on the limit of the grid
    seed_scores: list[float] = field(default_factory=list)  # the score chosen by, per tuning seed (in seeds' order)
    best_mean: bool = False  # the best mean score of its optimizer (chosen, unless the rule is stable)
    stable: bool | None = None  # rule stable: every tuning seed trained here and one step up; else None


@dataclass
class TuningEffort:
    """What the sweep spent on one optimizer, and what it chose."""

    runs: int
    lr: float
    factor: float
    lowest_factor: float
    highest_factor: float
    extended: list[int]  # steps added beyond the initial grid
    at_edge: bool  # the best mean lies on an edge of the grid (so it grew, unless at the limit)
    at_limit: bool
    best_mean_lr: float | None = None  # the rate of the best mean (another than lr under the rule stable)


@dataclass
class SweepGrid:
    step: str
    initial_steps: list[int]
    limit_steps: int
    limit_factors: list[float]


@dataclass(kw_only=True)
class TuningRecord:
    """tuning.json: the sweep's runs, each optimizer's chosen learning rate, the grid and the effort."""

    factors: list[float]  # the initial grid, as multiples of the default
    seed: int  # the first tuning seed
    length: str  # of a tuning run: '2 epochs', '30 s'
    chosen: dict[str, float]  # the learning rate per optimizer
    rows: list[SweepRow]
    best_chosen_by: str = DEFAULT_CHOSEN_BY
    selected_by: str
    grid: SweepGrid | None = None  # these three once the sweep has ended
    rounds: int = 0
    optims: dict[str, TuningEffort] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)  # every tuning seed; a record older than --tune-seeds: [seed]
    rule: str = "best"  # how the rate was chosen (tuning.TUNE_RULES)
    chance: float | None = None  # rule stable: the validation score of guessing
    floors: dict[str, float] = field(default_factory=dict)  # rule stable: the score a run counts as trained from

    def __post_init__(self) -> None:
        self.seeds = self.seeds or [self.seed]
        if self.rule == "best" and not any(row.best_mean for row in self.rows):  # a record older than --tune-rule
            for row in self.rows:
                row.best_mean = row.chosen
            for effort in self.optims.values():
                effort.best_mean_lr = effort.lr

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> TuningRecord:
        record = _known(cls, values)
        return cls(**record | {"rows": [SweepRow(**_known(SweepRow, row)) for row in record["rows"]],
                               "grid": None if record.get("grid") is None else SweepGrid(**record["grid"]),
                               "optims": {o: TuningEffort(**e) for o, e in record.get("optims", {}).items()}})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(kw_only=True)
class Summary:
    """summary.json: everything the report says, read off the study folder's files."""

    study: str
    optims: list[str]
    seeds: list[int]
    budget: str  # epochs | seconds:S
    tune_lr: bool
    target_val_acc: float
    chance_acc: float  # always guessing the larger class
    val_chance_acc: float | None = None  # the same on validation (None: a summary written before it was recorded)
    best_chosen_by: str = DEFAULT_CHOSEN_BY  # the history column each run's best epoch was chosen by
    data: DataCounts
    shared_settings: dict[str, Any]
    devices: list[str]  # the device and precision each run recorded (e.g. 'cpu, bf16 autocast ...')
    ranking: list[RankingRow]  # best first
    hyperparameters: dict[str, Hyperparameters]
    adjacent: list[Comparison]  # each ranking row against the next
    tutorial_claims: list[Comparison]
    pairing: Pairing
    sweep: TuningRecord | None
    runs: list[RunRow]
    figures: dict[str, str]  # figure_names

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Summary:
        summary = _known(cls, values)
        sweep = summary.get("sweep")
        return cls(**summary | {
            "data": DataCounts(**summary["data"]),
            "ranking": [RankingRow.from_dict(row) for row in summary["ranking"]],
            "hyperparameters": {o: Hyperparameters(**h) for o, h in summary["hyperparameters"].items()},
            "adjacent": [Comparison.from_dict(c) for c in summary["adjacent"]],
            "tutorial_claims": [Comparison.from_dict(c) for c in summary["tutorial_claims"]],
            "pairing": Pairing(**summary["pairing"]),
            "sweep": None if sweep is None else TuningRecord.from_dict(sweep),
            "runs": [RunRow(**_known(RunRow, run)) for run in summary["runs"]]})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---- the folder --------------------------------------------------------------------------------

@dataclass(frozen=True)
class StudyFolder:
    """A typed view of one study folder: where each of its files lives, and how each is read and written."""

    path: Path

    def __init__(self, path: str | Path) -> None:
        object.__setattr__(self, "path", Path(path))

    @property
    def runs_dir(self) -> Path:
        return self.path / RUNS_DIR

    @property
    def sweep_dir(self) -> Path:
        return self.path / SWEEP_DIR

    @property
    def study_path(self) -> Path:
        return self.path / STUDY_FILE

    @property
    def tuning_path(self) -> Path:
        return self.path / TUNING_FILE

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY_FILE

    @property
    def report_path(self) -> Path:
        return self.path / REPORT_FILE

    @property
    def page_path(self) -> Path:
        return self.path / REPORT_PAGE

    @property
    def curves_path(self) -> Path:
        return self.path / CURVES_FIGURE

    @property
    def accuracy_path(self) -> Path:
        return self.path / ACCURACY_FIGURE

    @property
    def lr_sweep_path(self) -> Path:
        return self.path / LR_SWEEP_FIGURE

    def run_dir(self, optim: str, seed: int) -> Path:
        return self.runs_dir / run_name(optim, seed)

    def sweep_run_dir(self, optim: str, lr: float, seed: int | None = None) -> Path:
        return self.sweep_dir / sweep_name(optim, lr, seed)

    def entry_path(self, entry: str) -> Path:
        """A run named as summary.json names it (run_entry)."""
        return self.path / entry

    # ---- study.json ----------------------------------------------------------------------------
    def read_study(self) -> dict[str, Any]:
        return read_json(self.study_path)

    def write_study(self, values: Mapping[str, Any]) -> None:
        _write_json(self.study_path, dict(values))

    # ---- tuning.json ---------------------------------------------------------------------------
    def read_tuning(self) -> TuningRecord | None:
        """The sweep's record, or None for a study without one."""
        return TuningRecord.from_dict(read_json(self.tuning_path)) if self.tuning_path.is_file() else None

    def write_tuning(self, record: TuningRecord) -> None:
        _write_json(self.tuning_path, record.to_dict())

    # ---- summary.json and the report -----------------------------------------------------------
    def read_summary(self) -> Summary:
        return Summary.from_dict(read_json(self.summary_path))

    def write_summary(self, summary: Summary) -> None:
        _write_json(self.summary_path, summary.to_dict())

    def write_report(self, markdown: str, html: str) -> None:
        """report.md and its page, report.html."""
        write_text_atomic(self.report_path, markdown)
        write_text_atomic(self.page_path, html)
