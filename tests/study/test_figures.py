"""Tests for catsdogs.study.figures: the study's curves figure, read off hand-made run histories."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from catsdogs.study.figures import SweepPoint, plot_lr_sweep, plot_study_curves  # noqa: E402
from catsdogs.study.layout import RUNS_DIR, run_name  # noqa: E402
from tests.helpers import HISTORY_HEADER as HEADER, visible_ticks  # noqa: E402

SEEDS = [42, 43]


def write_histories(study: Path, optims: tuple[str, ...], epochs: int) -> SimpleNamespace:
    """One history.csv per (optimizer, seed) run; return the part of the summary the figure reads."""
    for optim in optims:
        for seed in SEEDS:
            run = study / RUNS_DIR / run_name(optim, seed)
            run.mkdir(parents=True)
            rows = [f"{e},{0.7 - 0.01 * e:.4f},{0.5 + 0.01 * e:.4f},{0.7 - 0.005 * e:.4f},{0.5 + 0.005 * e:.4f},"
                    "0.001,1.0\n" for e in range(1, epochs + 1)]
            (run / "history.csv").write_text(HEADER + "".join(rows))
    return SimpleNamespace(
        ranking=[SimpleNamespace(optim=o, epochs_done=[epochs] * len(SEEDS)) for o in optims], seeds=SEEDS,
        target_val_acc=0.7,
        runs=[SimpleNamespace(run=f"{RUNS_DIR}/{run_name(o, s)}", optim=o, seed=s) for o in optims for s in SEEDS])


@pytest.mark.parametrize("epochs", [1, 2, 3, 25])
def test_the_curves_have_whole_epoch_ticks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, epochs: int) -> None:
    summary = write_histories(tmp_path, ("adam", "momentum"), epochs)
    seen: list[list[list[float]]] = []
    close = plt.close

    def record(fig=None) -> None:
        seen.append([visible_ticks(ax) for ax in fig.axes])
        close(fig)

    monkeypatch.setattr(plt, "close", record)
    out = plot_study_curves(tmp_path, summary, tmp_path / "curves.png")
    assert out.read_bytes().startswith(b"\x89PNG")
    (figure,) = seen
    loss_ticks, acc_ticks = figure
    assert loss_ticks == acc_ticks
    if epochs <= 3:
        assert loss_ticks == [float(e) for e in range(1, epochs + 1)]
    else:  # the locator picks a readable step, but still whole epochs within the run
        assert len(loss_ticks) >= 3 and all(t.is_integer() and 1 <= t <= epochs for t in loss_ticks)


def test_the_lr_sweep_figure_is_written_whole_on_a_log_axis(tmp_path: Path, monkeypatch) -> None:
    series = {"adam": [(1e-5, 0.55, False, [0.55]), (1e-4, 0.7, True, [0.7]), (1e-3, 0.6, False, [0.6])],
              "momentum": [(1e-3, 0.5, False, [0.5]), (1e-2, 0.52, False, [0.52]), (1e-1, 0.58, True, [0.58])]}
    axes = []
    monkeypatch.setattr(plt, "close", lambda fig: axes.extend(fig.axes))  # look at the figure before it goes
    out = plot_lr_sweep(series, "best val accuracy", "sweep", tmp_path / "lr_sweep.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and [p.name for p in tmp_path.iterdir()] == ["lr_sweep.png"]
    (ax,) = axes
    assert ax.get_xscale() == "log" and [t.get_text() for t in ax.get_legend().get_texts()] == ["adam", "momentum"]
    ringed = [line for line in ax.lines if line.get_markersize() == 12]
    assert [(list(line.get_xdata()), list(line.get_ydata())) for line in ringed] == [([1e-4], [0.7]), ([1e-1], [0.58])]


def test_the_lr_sweep_figure_shows_each_tuning_seed_beside_the_mean(tmp_path: Path, monkeypatch) -> None:
    series = {"adam": [(1e-4, 0.65, False, [0.6, 0.7]), (1e-3, 0.625, True, [0.75, 0.5])]}
    axes = []
    monkeypatch.setattr(plt, "close", lambda fig: axes.extend(fig.axes))
    plot_lr_sweep(series, "best val accuracy", "sweep", tmp_path / "lr_sweep.png")
    (ax,) = axes
    means = [line for line in ax.lines if line.get_markersize() == 4]
    dots = [line for line in ax.lines if line.get_markersize() == 3]
    ringed = [line for line in ax.lines if line.get_markersize() == 12]
    assert [list(line.get_ydata()) for line in means] == [[0.65, 0.625]]
    assert [(list(line.get_xdata()), list(line.get_ydata())) for line in dots] == [([1e-4, 1e-4], [0.6, 0.7]),
                                                                                 ([1e-3, 1e-3], [0.75, 0.5])]
    assert [list(line.get_ydata()) for line in ringed] == [[0.625]]


def test_the_lr_sweep_figure_boxes_a_best_mean_passed_over_for_a_margin(tmp_path: Path, monkeypatch) -> None:
    series = {"adam": [SweepPoint(1e-4, 0.7, True, [0.7]), SweepPoint(1e-3, 0.75, False, [0.75], passed_over=True),
                       SweepPoint(1e-2, 0.5, False, [0.5])]}
    axes = []
    monkeypatch.setattr(plt, "close", lambda fig: axes.extend(fig.axes))
    plot_lr_sweep(series, "best val accuracy", "sweep", tmp_path / "lr_sweep.png")
    (ax,) = axes
    boxed = [line for line in ax.lines if line.get_marker() == "s"]
    ringed = [line for line in ax.lines if line.get_markersize() == 12]
    assert [(list(line.get_xdata()), list(line.get_ydata())) for line in boxed] == [([1e-3], [0.75])]
    assert [list(line.get_xdata()) for line in ringed] == [[1e-4]]
    assert "boxed: best mean" in ax.get_legend().get_title().get_text()
