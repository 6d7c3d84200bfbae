"""The optimizer study's report: its Summary (ranking with spread, paired tests), read from files only."""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from catsdogs.data.cache import read_split
from catsdogs.errors import CatsdogsError
from catsdogs.study.figures import plot_lr_sweep, plot_study_curves, plot_test_accuracy
from catsdogs.study.layout import (TUTORIAL_RANKING, Comparison, DataCounts, Hyperparameters, Pairing, RankingRow,
                                   RunRow, Spread, StudyFolder, Summary, ToTarget, figure_names, run_entry, score_name)
from catsdogs.study.report_text import format_report, format_report_html, sweep_series
from catsdogs.study.stats import ALPHA, holm, holm_levels, paired_t_test, seeds_needed
from catsdogs.training.checkpoint import global_step
from catsdogs.training.config import settings_with
from catsdogs.training.runs import RunFolder, RunStatus
from catsdogs.training.selection import best_epoch, selected_by


UNTRAINED = 0.01  # a run whose best validation accuracy is within this of chance never trained


def _spread(values: Sequence[float]) -> Spread:
    values = [float(v) for v in values]
    return Spread(mean=statistics.fmean(values), sd=statistics.stdev(values) if len(values) > 1 else None,
                  values=values)


# ---- reading the study ------------------------------------------------------------------------

@dataclass
class RunRecord:
    """What one run folder holds: its resolved config, history, status and test metrics."""

    run_dir: Path
    config: dict[str, Any]
    history: dict[str, list[float]]
    status: RunStatus
    metrics: dict[str, Any] | None

    @property
    def best(self) -> dict[str, float]:
        """The row of history.csv that best.pt holds."""
        return best_row(self.history, self.config.get("class_weights"))


def best_row(history: dict[str, list[float]], class_weights: str | None) -> dict[str, float]:
    """The epoch a run kept as best.pt (train's own rule, metrics.best_epoch), from history.csv's columns."""
    rows = [dict(zip(history, values)) for values in zip(*history.values())]
    return dict(best_epoch(rows, selected_by(class_weights or "none")))


def read_run(run_dir: Path) -> RunRecord:
    folder = RunFolder(run_dir)
    return RunRecord(run_dir, folder.read_config(), folder.read_history(), folder.read_status() or RunStatus(),
                     folder.read_metrics())


def _images_seen(run: RunRecord, train_images: int) -> float:
    """Training images the run went through; a time-budget run's last epoch may be cut short."""
    epochs = len(run.history["epoch"])
    folder = RunFolder(run.run_dir)
    if run.status.status != "time-budget" or not folder.last_path.is_file():
        return float(epochs * train_images)
    steps = global_step(folder.load("last"))
    per_epoch = math.ceil(train_images / run.config["batch_size"])
    last = min((steps - (epochs - 1) * per_epoch) * run.config["batch_size"], train_images)
    return float((epochs - 1) * train_images + last)


# ---- the summary ------------------------------------------------------------------------------

def _finite(value: float | None) -> float | None:
    """None for a value history.csv lacks (nan: a column older catsdogs did not write)."""
    return None if value is None or math.isnan(value) else float(value)


def _balanced_spread(best_rows: list[dict[str, float]]) -> Spread | None:
    values = [_finite(row.get("val_balanced_acc")) for row in best_rows]
    return None if None in values else _spread(values)


def summarize(study_dir: Path, target_acc: float) -> Summary:
    """Everything the report says (summary.json holds exactly this)."""
    folder = StudyFolder(study_dir)
    study = folder.read_study()
    optims, seeds = study["optims"], study["seeds"]
    runs = _read_runs(folder, optims, seeds)
    shared, shared_keys = study["config"], settings_with("shared")
    train_split = read_split(shared["data"], "train")
    unreadable = {Path(p) for r in runs.values() for p in r.status.unreadable_images}
    train_images = len([p for p in train_split.paths if p not in unreadable])
    first = runs[(optims[0], seeds[0])].metrics
    chance = max(sum(row) for row in first["confusion_matrix"]) / first["images"]
    chosen_by = selected_by(shared.get("class_weights") or "none")
    val_chance = majority_share(read_split(shared["data"], "val", train_split.classes).labels)
    rows = _rank([_ranking_row(optim, {s: runs[(optim, s)] for s in seeds}, target_acc, train_images, val_chance)
                  for optim in optims], chosen_by)

    order = [row.optim for row in rows]
    hashes = {str(s): {o: runs[(o, s)].status.init_hash for o in optims} for s in seeds}
    tuning = folder.read_tuning()
    given = study.get("lrs") or {}
    rule = " with a step of margin, `--tune-rule stable`" if tuning and tuning.rule == "stable" else ""
    lr_from = {o: f"sweep (best validation {score_name(chosen_by)}{rule})" if tuning else
               "given (`--lrs`)" if o in given else "optimizer default" for o in optims}
    hyper = {o: Hyperparameters(**{k: runs[(o, seeds[0])].config.get(k)
                                   for k in ("lr", "momentum", "batch_size", "weight_decay")}, lr_from=lr_from[o])
             for o in optims}
    claims = _correct_for_several([_compare(runs, seeds, a, b) for a, b in
                                   zip(TUTORIAL_RANKING, TUTORIAL_RANKING[1:]) if {a, b} <= set(optims)])
    return Summary(
        study=str(study_dir), optims=optims, seeds=seeds, budget=study["budget"],
        tune_lr=study["tune_lr"], target_val_acc=target_acc, chance_acc=chance, val_chance_acc=val_chance,
        best_chosen_by=chosen_by,
        data=DataCounts(path=shared["data"], train_images=train_images,
                        val_images=len(read_split(shared["data"], "val")), test_images=first["images"]),
        shared_settings={k: v for k, v in shared.items() if k in shared_keys},
        devices=sorted({r.status.hardware for r in runs.values() if r.status.hardware}),
        ranking=rows, hyperparameters=hyper,
        adjacent=_correct_for_several([_compare(runs, seeds, a, b) for a, b in zip(order, order[1:])]),
        tutorial_claims=claims,
        pairing=Pairing(paired=all(len(set(h.values())) == 1 and None not in h.values() for h in hashes.values()),
                        init_hash=hashes),
        sweep=tuning,
        runs=[_run_row(o, s, r) for (o, s), r in runs.items()],
        figures=figure_names(swept=tuning is not None),
    )


def _read_runs(folder: StudyFolder, optims: list[str], seeds: list[int]) -> dict[tuple[str, int], RunRecord]:
    """The study's runs by (optimizer, seed); every one must have been tested."""
    runs = {(o, s): read_run(folder.run_dir(o, s)) for o in optims for s in seeds}
    missing = [r.run_dir.name for r in runs.values() if r.metrics is None]
    if missing:
        raise CatsdogsError(f"runs without test metrics: {', '.join(missing)}; run the study to finish them")
    return runs


def reach_target(history: dict[str, list[float]], target_acc: float) -> tuple[int, float] | None:
    """The first epoch whose validation accuracy reaches `target_acc`, and the seconds of training and
    validation up to its end (history.csv's `seconds`, summed); None when no epoch reached it."""
    elapsed = 0.0
    for epoch, acc, seconds in zip(history["epoch"], history["val_acc"], history["seconds"]):
        elapsed += seconds
        if acc >= target_acc:
            return int(epoch), elapsed
    return None


def _to_target(values: list[float | None]) -> ToTarget:
    """Epochs (or seconds) to the target over the seeds: mean and sd of the seeds that reached it."""
    got = [v for v in values if v is not None]
    return ToTarget(values=values, mean=statistics.fmean(got) if got else None,
                    sd=statistics.stdev(got) if len(got) > 1 else None, reached=len(got), of=len(values))


def _ranking_row(optim: str, by_seed: dict[int, RunRecord], target_acc: float, train_images: int,
                 val_chance: float) -> RankingRow:
    """One optimizer's row of the ranking: its runs' scores, speeds and statuses over the seeds, and the seeds
    whose runs never beat chance on validation (with the test accuracy of the others)."""
    mine = list(by_seed.values())
    reached = [reach_target(r.history, target_acc) for r in mine]
    seconds = [sum(r.history["seconds"]) for r in mine]
    untrained = [seed for seed, r in by_seed.items() if r.best["val_acc"] <= val_chance + UNTRAINED]
    trained = [r.metrics["accuracy"] for seed, r in by_seed.items() if seed not in untrained]
    return RankingRow(
        optim=optim,
        test_acc=_spread([r.metrics["accuracy"] for r in mine]),
        best_val_acc=_spread([r.best["val_acc"] for r in mine]),
        best_val_balanced_acc=_balanced_spread([r.best for r in mine]),
        final_train_loss=_spread([r.history["train_loss"][-1] for r in mine]),
        epochs_done=[len(r.history["epoch"]) for r in mine],
        epochs_to_target=_to_target([None if r is None else r[0] for r in reached]),
        seconds_to_target=_to_target([None if r is None else r[1] for r in reached]),
        wall_seconds=_spread(seconds),
        # The median epoch: one epoch slowed by a busy machine or a first-run warm-up does not move it.
        epoch_seconds=_spread([statistics.median(r.history["seconds"]) for r in mine]),
        images_per_second=_spread([_images_seen(r, train_images) / max(s, 1e-9) for r, s in zip(mine, seconds)]),
        statuses=[r.status.status or "unknown" for r in mine],
        untrained_seeds=untrained,
        test_acc_trained=_spread(trained) if untrained and trained else None,
    )


def majority_share(labels: Sequence[int]) -> float:
    """The accuracy of always guessing the larger class."""
    counts = Counter(int(label) for label in labels)
    return max(counts.values(), default=0) / max(1, len(labels))


def _rank(rows: list[RankingRow], chosen_by: str) -> list[RankingRow]:
    """Sort the rows by test accuracy, then the best-epoch score, and number them (equal means share a rank)."""
    rows.sort(key=lambda row: (-row.test_acc.mean, -row.best_score(chosen_by).mean))
    for place, (above, row) in enumerate(zip([None, *rows], rows), 1):
        # Equal means share a rank (1, 1, 3), as the report's text shows them with "=".
        row.rank = above.rank if above is not None and above.same_mean(row) else place
    return rows


def _compare(runs: dict[tuple[str, int], RunRecord], seeds: list[int], a: str, b: str) -> Comparison:
    """Whether optimizer `a`'s test accuracy is told apart from `b`'s by a paired t-test over the seeds."""
    test = paired_t_test([runs[(a, s)].metrics["accuracy"] for s in seeds],
                         [runs[(b, s)].metrics["accuracy"] for s in seeds])
    verdict = None if test is None else test.distinguishable(ALPHA)
    return Comparison(better=a, worse=b, test=test, distinguishable=verdict)


def _correct_for_several(comparisons: list[Comparison]) -> list[Comparison]:
    """Holm's correction over one family of comparisons (those with a p-value), the verdicts it gives,
    and for each gap left undecided the seeds that would tell it apart at the observed gap and spread."""
    tested = [c for c in comparisons if c.test and c.test.p is not None]
    p_values = [c.test.p for c in tested]
    for item, adjusted, level in zip(tested, holm(p_values), holm_levels(p_values, ALPHA)):
        item.p_holm, item.holm_level = adjusted, level
        item.distinguishable = item.test.cannot_tell is None and adjusted < ALPHA
    for item in comparisons:
        test = item.test
        if item.holm_level is None:
            item.holm_level = ALPHA / max(1, len(tested))
        undecided = test is not None and not item.distinguishable and test.sd_diff > 0
        item.seeds_needed = seeds_needed(test.mean_diff, test.sd_diff, item.holm_level) if undecided else None
    return comparisons


def _run_row(optim: str, seed: int, r: RunRecord) -> RunRow:
    """One run's line in summary.json."""
    return RunRow(run=run_entry(r.run_dir.name), optim=optim, seed=seed, status=r.status.status,
                  epochs=len(r.history["epoch"]), best_epoch=int(r.best["epoch"]), best_val_acc=r.best["val_acc"],
                  best_val_balanced_acc=_finite(r.best.get("val_balanced_acc")), test_acc=r.metrics["accuracy"],
                  init_hash=r.status.init_hash, seconds=sum(r.history["seconds"]))


def _seeds_title(seeds: list[int]) -> str:
    return f"seed {seeds[0]}" if len(seeds) == 1 else f"mean of seeds {', '.join(map(str, seeds))}"


def write_report(study_dir: str | Path, target_acc: float = 0.70) -> Summary:
    """Write report.md, report.html, summary.json and the two figures into `study_dir`; return the summary."""
    folder = StudyFolder(study_dir)
    summary = summarize(folder.path, target_acc)
    plot_study_curves(folder.path, summary, folder.curves_path)
    plot_test_accuracy(summary, folder.accuracy_path)
    if summary.sweep:
        sweep = summary.sweep
        plot_lr_sweep(sweep_series(sweep), f"best val {score_name(sweep.best_chosen_by)}",
                      f"Learning-rate sweep: {_seeds_title(sweep.seeds)}, {sweep.length} per run", folder.lr_sweep_path)
    folder.write_summary(summary)
    folder.write_report(format_report(summary), format_report_html(folder.path, summary))
    return summary
