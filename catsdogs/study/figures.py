"""The optimizer study's figures: curves with a band across seeds, test accuracy with error bars, the LR sweep."""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

from catsdogs.figures import pyplot, save_figure
from catsdogs.inference.plots import read_history, set_epoch_ticks
from catsdogs.study.layout import StudyFolder, Summary
from catsdogs.study.stats import mean_sd, percent


def plot_study_curves(study_dir: Path, summary: Summary, out: Path) -> Path:
    """Loss and accuracy against epoch: mean across seeds with a min-max band, one colour per optimizer."""
    import numpy as np

    plt, folder = pyplot(), StudyFolder(study_dir)
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(12, 4.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, row in enumerate(summary.ranking):
        colour = colours[index % len(colours)]
        histories = [read_history(folder.entry_path(run.run)) for run in summary.runs if run.optim == row.optim]
        length = max(len(h["epoch"]) for h in histories)
        epochs = np.arange(1, length + 1)
        for ax, key in ((loss_ax, "loss"), (acc_ax, "acc")):
            for split, style in (("val", "-"), ("train", "--")):
                values = np.full((len(histories), length), np.nan)
                for i, history in enumerate(histories):
                    values[i, :len(history[f"{split}_{key}"])] = history[f"{split}_{key}"]
                mean = np.nanmean(values, axis=0)
                ax.plot(epochs, mean, style, color=colour, marker="o" if split == "val" else "x", markersize=4,
                        label=f"{row.optim} {split}")
                ax.fill_between(epochs, np.nanmin(values, axis=0), np.nanmax(values, axis=0), color=colour,
                                alpha=0.18 if split == "val" else 0.08, linewidth=0)
    acc_ax.axhline(summary.target_val_acc, color="grey", linestyle=":", linewidth=1,
                   label=f"target {percent(summary.target_val_acc, 0)}")
    n = len(summary.seeds)
    loss_ax.set(title=f"Loss (mean of {n} seeds, band: range)", xlabel="epoch", ylabel="cross-entropy loss")
    acc_ax.set(title=f"Accuracy (mean of {n} seeds, band: range)", xlabel="epoch", ylabel="accuracy")
    longest = max(max(row.epochs_done) for row in summary.ranking)
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        ax.set_xlim(0.5, longest + 0.5)
        set_epoch_ticks(ax)
    acc_ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    save_figure(fig, out, dpi=120)
    return out


def plot_test_accuracy(summary: Summary, out: Path) -> Path:
    """Mean test accuracy per optimizer, best first, with one-sd error bars and each seed as a dot."""
    plt = pyplot()
    rows = summary.ranking
    means = [r.test_acc.mean for r in rows]
    errors = [r.test_acc.sd or 0.0 for r in rows]
    lowest = min([summary.chance_acc, *(v for r in rows for v in r.test_acc.values)])
    floor = max(0.0, math.floor((lowest - 0.05) * 20) / 20)  # a 0.05 step below every value and chance
    fig, ax = plt.subplots(figsize=(max(4.5, 1.6 + 1.5 * len(rows)), 4.4))
    positions = list(range(len(rows)))
    ax.bar(positions, [m - floor for m in means], bottom=floor, yerr=errors, capsize=6, color="#8fb3d9",
           edgecolor="#2b5d8a", error_kw={"elinewidth": 1.2})
    for x, row in zip(positions, rows):
        values = row.test_acc.values
        ax.plot([x] * len(values), values, "o", color="black", markersize=4, zorder=3)
    chance = summary.chance_acc
    ax.axhline(chance, color="grey", linestyle=":", linewidth=1, label=f"chance {percent(chance)} (larger class)")
    ax.legend(fontsize=8, loc="upper right")
    top = max(max(v + e for v, e in zip(means, errors)), max(v for r in rows for v in r.test_acc.values))
    ax.set_ylim(floor, min(1.0, top + 0.03))
    ax.set_xticks(positions, [f"{r.optim}\n{mean_sd(r.test_acc)}" for r in rows], fontsize=9)
    ax.set_ylabel(f"test accuracy (axis starts at {floor:.2f})")
    ax.set_title(f"Test accuracy over {len(summary.seeds)} seeds\nbar: mean, error bar: 1 sd, dots: single seeds",
                 fontsize=10)
    ax.grid(axis="y", alpha=0.3)
    save_figure(fig, out, dpi=120)
    return out


class SweepPoint(NamedTuple):
    """One learning rate of the sweep as the figure draws it."""

    lr: float
    score: float  # the best-epoch score, mean over the tuning seeds
    chosen: bool
    seed_scores: list[float]
    passed_over: bool = False  # the best mean, not chosen (--tune-rule stable kept a step of margin below it)


def plot_lr_sweep(series: dict[str, list[SweepPoint]], ylabel: str, title: str, out: Path) -> Path:
    """Validation score against learning rate on a log axis, one line per optimizer through each rate's mean
    over the tuning seeds (each seed a small dot when there are several), its chosen rate ringed and a best
    mean passed over boxed."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (optim, points) in enumerate(series.items()):
        colour = colours[index % len(colours)]
        points = [SweepPoint(*point) for point in points]
        ax.plot([p.lr for p in points], [p.score for p in points], "-o", color=colour, markersize=4, label=optim)
        for point in points:
            if len(point.seed_scores) > 1:
                ax.plot([point.lr] * len(point.seed_scores), point.seed_scores, ".", color=colour, markersize=3,
                        alpha=0.6)
            if point.chosen or point.passed_over:
                ax.plot([point.lr], [point.score], "o" if point.chosen else "s", markersize=12 if point.chosen else 10,
                        markerfacecolor="none", markeredgecolor=colour, markeredgewidth=2)
    ax.set_xscale("log")
    ax.set(title=title, xlabel="learning rate (log scale)", ylabel=ylabel)
    ax.grid(alpha=0.3, which="both")
    boxed = any(SweepPoint(*point).passed_over for points in series.values() for point in points)
    key = "ringed: chosen" + ("\nboxed: best mean,\nno margin above" if boxed else "")
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), title=key, title_fontsize=8)
    save_figure(fig, out, dpi=120)
    return out
