"""One self-contained HTML page per run, read from the files the other commands wrote.

Its config, data, curves, test metrics, calibration, worst mistakes and what training fed the model.
"""

from __future__ import annotations

import csv
import io
import math
import shlex
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from catsdogs import __version__
from catsdogs.atomic import write_text_atomic
from catsdogs.data.cache import SPLITS, read_split
from catsdogs.data.staging import MANIFEST, RECORD, REJECTED_CSV
from catsdogs.errors import CatsdogsError
from catsdogs.figures import pyplot, save_figure
from catsdogs.inference.calibration import BINS, Reliability, reliability
from catsdogs.inference.explain import COLUMNS as EXPLAIN_COLUMNS
from catsdogs.inference.plots import plot_curves
from catsdogs.inference.show import draw_training_batch, png_bytes, run_config
from catsdogs.inference.webpage import Raw, esc, image, missing, page, table
from catsdogs.training.runs import (BEST_FILE, CURVES_FILE, EXPLANATIONS_FILE, REPORT_FILE, RunFolder, RunStatus,
                                    read_json)
from catsdogs.training.selection import best_epoch, selected_by

REPORT = REPORT_FILE
MISTAKES = 8  # heat maps shown, as `catsdogs explain --mistakes 8` makes them
BATCH_SHOWN = 16  # training images in the grid


@dataclass
class RunReport:
    path: Path
    missing: list[tuple[str, str]] = field(default_factory=list)  # (part, the command that makes its input)
    stale: str | None = None  # why the test metrics no longer measure best.pt, and the command that refreshes them


class _Parts:
    """The page's sections, and a note of each part whose input is not there yet."""

    def __init__(self, run_dir: Path) -> None:
        self.run_dir, self.quoted = run_dir, shlex.quote(str(run_dir))
        self.body: list[str] = []
        self.missing: list[tuple[str, str]] = []

    def section(self, anchor: str, title: str) -> None:
        self.body.append(f'<h2 id="{anchor}">{esc(title)}</h2>')

    def absent(self, part: str, what: str, command: str = "") -> None:
        self.body.append(missing(what, command))
        self.missing.append((part, command))


def write_run_report(run_dir: str | Path) -> RunReport:
    """Write `run_dir/report.html` and say which parts could not be filled yet."""
    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    if not run_dir.is_dir():
        raise CatsdogsError(f"run folder {run_dir} does not exist")
    if not folder.config_path.is_file():
        raise CatsdogsError(f"{run_dir} has no {folder.config_path.name}: name a run folder that `catsdogs train` "
                            "made")
    parts = _Parts(run_dir)
    config = folder.read_config()
    status = folder.read_status() or RunStatus()
    metrics = folder.read_metrics()
    history = folder.read_history() if folder.history_path.is_file() else None
    column = selected_by(str(config.get("class_weights") or "none"))
    best = _best_row(history, column) if history else None
    stale = _stale_note(parts, metrics, best) if metrics is not None and metrics_out_of_date(run_dir) else None
    best_words = _best_words(best, column, len(history["epoch"])) if history and best else None
    parts.body += _header(run_dir, config, status, metrics, best_words, stale)
    _config_section(parts, config, status)
    _data_section(parts, config)
    _history_section(parts, history)
    _metrics_section(parts, metrics, stale)
    _calibration_section(parts, metrics)
    _mistakes_section(parts)
    _batch_section(parts)
    parts.body.append(f'<p class="muted">Made by catsdogs {esc(__version__)} with <code>catsdogs report '
                      f'{esc(parts.quoted)}</code> from the files in the run folder; run it again after '
                      "new evaluations to bring the page up to date.</p>")
    path = folder.report_path
    write_text_atomic(path, page(f"catsdogs run {run_dir.name}", parts.body))
    return RunReport(path, parts.missing, stale)


def metrics_out_of_date(run_dir: Path) -> bool:
    """Whether run_dir/metrics.json was written before best.pt: training went on (`train --resume RUN
    --epochs N`) and saved a newer best checkpoint after `catsdogs evaluate` measured the old one."""
    metrics, best = RunFolder(run_dir).metrics_path, RunFolder(run_dir).best_path
    return metrics.is_file() and best.is_file() and metrics.stat().st_mtime_ns < best.stat().st_mtime_ns


def _best_row(history: dict[str, list[float]], column: str) -> dict[str, float]:
    """The epoch train kept as best.pt, by its own rule (training.selection)."""
    rows = [dict(zip(history, values)) for values in zip(*history.values())]
    return dict(best_epoch(rows, column))


def _best_words(best: dict[str, float], column: str, epochs: int) -> str:
    """The headline's words for the best epoch: its score by `column` (and its accuracy), and its number."""
    balanced = best.get("val_balanced_acc", math.nan)
    if column == "val_balanced_acc" and not math.isnan(balanced):
        score = f"best val balanced accuracy {_pct(balanced)} (accuracy {_pct(best['val_acc'])}, "
    else:
        score = f"best val accuracy {_pct(best['val_acc'])} ("
    return f"{epochs} epochs, {score}epoch {int(best['epoch'])})"


def _stale_note(parts: _Parts, metrics: dict[str, Any], best: dict[str, float] | None) -> str:
    measured = Path(str(metrics.get("checkpoint") or BEST_FILE)).name
    measured += f" at epoch {metrics['epoch']}" if metrics.get("epoch") is not None else ""
    now = f" (epoch {int(best['epoch'])})" if best else ""
    return (f"the test metrics, calibration and mistakes are stale: they measure {measured}, and training has saved "
            f"a newer best.pt since{now}; run `catsdogs evaluate {parts.quoted}` to refresh them")


def _pct(value: float | None) -> str:
    return "—" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def _header(run_dir: Path, config: dict[str, Any], status: RunStatus, metrics: dict[str, Any] | None,
            best_words: str | None, stale: str | None) -> list[str]:
    facts = [f"model {config.get('model')}", f"optimizer {config.get('optim')}",
             f"{config.get('image_size')} px", f"status {status.status or 'unknown'}"]
    if best_words:
        facts.insert(0, best_words)
    if metrics:
        score = (f"test accuracy <b>{metrics['accuracy']:.4f}</b> on {metrics['images']} photos, balanced accuracy "
                 f"{_pct(metrics.get('balanced_accuracy'))}")
    else:
        score = "not evaluated yet"
    nav = " ".join(f'<a href="#{a}">{t}</a>' for a, t in (
        ("config", "config"), ("data", "data"), ("history", "history"), ("metrics", "test metrics"),
        ("calibration", "calibration"), ("mistakes", "mistakes"), ("inputs", "training images")))
    warning = [_stale_warning(stale)] if stale else []
    return [f"<h1>Run {esc(run_dir.name)}</h1>", f'<p class="headline">{score}</p>', *warning,
            f'<p class="muted">{esc(" · ".join(facts))}</p>', f"<nav>{nav}</nav>"]


def _stale_warning(stale: str) -> str:
    return f'<p class="missing">{esc(f"Warning: {stale}.")}</p>'


def _config_section(parts: _Parts, config: dict[str, Any], status: RunStatus) -> None:
    parts.section("config", "Config")
    parts.body.append("<p>The resolved settings the run trained with (its <code>config.yaml</code>).</p>")
    rows = [(key, "—" if value is None else value) for key, value in config.items()]
    if status.hardware:
        rows.append(("hardware (as the run logged it)", status.hardware))
    parts.body.append(table(["setting", "value"], rows))


def _data_section(parts: _Parts, config: dict[str, Any]) -> None:
    parts.section("data", "Data")
    data = Path(str(config.get("data", "data")))
    counts: dict[str, Counter] = {}
    classes: list[str] = []
    for split in SPLITS:
        try:
            photos = read_split(data, split)
        except CatsdogsError as exc:
            parts.absent(f"{split} photo counts", f"The {split} photos cannot be counted: {exc}")
            continue
        classes = classes or photos.classes
        counts[split] = Counter(photos.classes[label] for label in photos.labels)
    if counts:
        rows = [[name, *(counts[s][name] if s in counts else "—" for s in SPLITS),
                 sum(counts[s][name] for s in counts)] for name in classes]
        rows.append(["total", *(sum(counts[s].values()) if s in counts else "—" for s in SPLITS),
                     sum(sum(c.values()) for c in counts.values())])
        parts.body.append(f"<p>Photos per class and split in <code>{esc(data)}</code>.</p>")
        parts.body.append(table(["class", *SPLITS, "total"], rows, numeric=range(1, len(SPLITS) + 2)))
    if not (data / MANIFEST).is_file():
        parts.body.append('<p class="muted">No manifest.csv in the data folder (not made by `catsdogs split`): '
                          "no record of the files left out.</p>")
        return
    record = read_json(data / RECORD) or {}
    left = Counter()
    if (data / REJECTED_CSV).is_file():
        with open(data / REJECTED_CSV, newline="", encoding="utf-8", errors="replace") as handle:
            left = Counter(f"{row.get('status', '')}: {row.get('reason', '')}" for row in csv.DictReader(handle))
    summary = record.get("summary", {})
    source = record.get("source") or "the source"
    found = summary.get("found")
    line = f"Split from <code>{esc(source)}</code>" + (f": {found} files found, " if found else ": ")
    line += f"{sum(left.values())} left out (listed in {REJECTED_CSV})." if left else "no file left out."
    parts.body.append(f"<p>{line}</p>")
    if left:
        parts.body.append(table(["left out", "files"], sorted(left.items()), numeric=[1]))
    if summary.get("duplicates_removed"):
        parts.body.append(f"<p>Duplicates removed (same bytes, one copy kept): {summary['duplicates_removed']}.</p>")


def _history_section(parts: _Parts, history: dict[str, list[float]] | None) -> None:
    parts.section("history", "History")
    if history is None:
        parts.absent("history", "No epoch has finished yet, so there is no history.csv.",
                     f"catsdogs train --resume {parts.quoted}")
        return
    with tempfile.TemporaryDirectory() as folder:
        figure = plot_curves([parts.run_dir], Path(folder) / CURVES_FILE)
        parts.body.append(image(figure.read_bytes(), "loss and accuracy per epoch",
                                "Loss and accuracy per epoch: dashed training, solid validation."))
    columns = [c for c in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_balanced_acc", "lr",
                           "seconds") if c in history]
    rows = [[_cell(column, history[column][i]) for column in columns] for i in range(len(history["epoch"]))]
    parts.body.append(table([c.replace("_", " ") for c in columns], rows, numeric=range(len(columns))))


def _cell(column: str, value: float) -> str:
    if math.isnan(value):
        return "—"
    if column == "epoch":
        return str(int(value))
    if column == "lr":
        return f"{value:.3g}"
    return f"{value:.1f}" if column == "seconds" else f"{value:.4f}"


def _metrics_section(parts: _Parts, metrics: dict[str, Any] | None, stale: str | None) -> None:
    parts.section("metrics", "Test metrics")
    if metrics is None:
        parts.absent("test metrics", "The run has not been measured on its test photos yet.",
                     f"catsdogs evaluate {parts.quoted}")
        return
    auc = metrics.get("roc_auc")
    facts = [("accuracy", _pct(metrics["accuracy"])), ("balanced accuracy", _pct(metrics.get("balanced_accuracy"))),
             ("ROC AUC", _pct(auc)), ("loss", _pct(metrics.get("loss"))), ("photos", metrics["images"])]
    baseline = metrics.get("majority_baseline")
    if baseline:
        facts.append((f"always answering {baseline['class']}", _pct(baseline["accuracy"])))
    facts.append(("checkpoint", f"{Path(str(metrics.get('checkpoint', BEST_FILE))).name}, epoch "
                                f"{metrics.get('epoch', '—')}" + (", with TTA" if metrics.get("tta") else "")))
    parts.body.append(f"<p>On the {esc(metrics.get('split', 'test'))} split of <code>{esc(metrics.get('data', ''))}"
                      "</code>.</p>")
    if metrics.get("warning"):
        parts.body.append(f'<p class="missing">Warning: {esc(metrics["warning"])}</p>')
    if stale:
        parts.body.append(_stale_warning(stale))
    parts.body.append(table(["measure", "value"], facts, numeric=[1]))
    rows = [[name, _pct(m["precision"]), _pct(m["recall"]), _pct(m["f1"]), m["support"]]
            for name, m in metrics["per_class"].items()]
    macro = metrics["macro"]
    rows.append(["macro", _pct(macro["precision"]), _pct(macro["recall"]), _pct(macro["f1"]), metrics["images"]])
    parts.body.append(table(["class", "precision", "recall", "F1", "photos"], rows, numeric=range(1, 5)))
    classes = metrics["classes"]
    matrix = metrics["confusion_matrix"]
    parts.body.append("<h3>Confusion matrix</h3><p>Rows are the true classes, columns the predicted ones.</p>")
    parts.body.append(table(["true \\ predicted", *classes], [[name, *row] for name, row in zip(classes, matrix)],
                            numeric=range(1, len(classes) + 1)))


def _predictions(run_dir: Path) -> tuple[list[dict[str, str]], list[str]] | None:
    path = RunFolder(run_dir).predictions_path
    if not path.is_file():
        return None
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    classes = [name[2:] for name in (reader.fieldnames or []) if name.startswith("p_")]
    return rows, classes


def _calibration_section(parts: _Parts, metrics: dict[str, Any] | None) -> None:
    parts.section("calibration", "Calibration")
    found = _predictions(parts.run_dir)
    if found is None or not found[0]:
        parts.absent("calibration", "Calibration needs the test predictions (predictions.csv).",
                     f"catsdogs evaluate {parts.quoted}")
        return
    rows, classes = found
    probs = np.array([[float(row[f"p_{c}"]) for c in classes] for row in rows])
    labels = np.array([classes.index(row["label"]) for row in rows])
    bins = reliability(probs, labels)
    ece = metrics.get("ece") if metrics and metrics.get("ece") is not None else bins.ece
    parts.body.append(f"<p>Expected calibration error (ECE): <b>{ece:.4f}</b>. Each prediction is put in one of "
                      f"{BINS} bins by its confidence (the probability of the class it names); ECE is the "
                      "photo-weighted mean gap between a bin's confidence and how often its predictions were "
                      "right. 0 means the confidence can be taken at its word.</p>")
    parts.body.append(image(_reliability_png(bins, ece), "reliability diagram",
                            "Reliability diagram: bars are the accuracy in each confidence bin; on the diagonal "
                            "confidence equals accuracy. Numbers are photos per bin."))


def _reliability_png(bins: Reliability, ece: float) -> bytes:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    width = bins.edges[1] - bins.edges[0]
    filled = bins.counts > 0
    left = bins.edges[:-1][filled]
    ax.bar(left, bins.accuracy[filled], width=width, align="edge", color="#8fb3d9", edgecolor="#2b5d8a",
           label="accuracy")
    ax.bar(left, bins.confidence[filled] - bins.accuracy[filled], bottom=bins.accuracy[filled], width=width,
           align="edge", color="none", edgecolor="#c0392b", hatch="//", linewidth=0.8, label="gap to confidence")
    ax.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    for x, count in zip(left, bins.counts[filled]):  # inside the bar's foot, where no gap is drawn
        ax.text(x + width / 2, 0.02, str(count), ha="center", fontsize=7)
    lowest = max(0.0, math.floor((left.min() if len(left) else 0.0) * 10) / 10)
    ax.set(xlim=(lowest, 1.0), ylim=(0.0, 1.02), xlabel="confidence", ylabel="accuracy",
           title=f"Reliability (ECE {ece:.4f})")
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    save_figure(fig, buffer, format="png", dpi=100)
    return buffer.getvalue()


def _mistakes_section(parts: _Parts) -> None:
    parts.section("mistakes", "Most confident mistakes")
    found = _predictions(parts.run_dir)
    if found is None:
        parts.absent("mistakes", "The mistakes come from the test predictions (predictions.csv).",
                     f"catsdogs evaluate {parts.quoted}")
        return
    rows, _ = found
    wrong = [row for row in rows if row["label"] != row["predicted"]]
    if not wrong:
        parts.body.append(f"<p>No mistakes on the {len(rows)} test photos.</p>")
        return
    wrong.sort(key=lambda row: -float(row.get(f"p_{row['predicted']}") or 0.0))
    parts.body.append(f"<p>{len(wrong)} of the {len(rows)} test photos were classified wrongly; the "
                      f"{min(MISTAKES, len(wrong))} the model was surest of:</p>")
    parts.body.append(table(["photo", "true", "predicted", "probability"],
                            [[row["path"], row["label"], row["predicted"], f"{float(row['p_' + row['predicted']]):.3f}"]
                             for row in wrong[:MISTAKES]], numeric=[3]))
    explained = _explained_mistakes(RunFolder(parts.run_dir).explain_dir)
    if not explained:
        parts.absent("heat maps of the mistakes",
                     "Their Grad-CAM heat maps (what in each photo misled the model) are not made yet.",
                     f"catsdogs explain --mistakes {MISTAKES} --run {parts.quoted}")
        return
    figures = [image(figure.read_bytes(), f"Grad-CAM of {photo}") for photo, figure in explained[:MISTAKES]]
    parts.body.append('<p>Grad-CAM heat maps from <code>catsdogs explain</code>: red marks the parts of the photo '
                      "that counted most for the wrong answer.</p>")
    parts.body.append(Raw('<div class="grid">' + "".join(figures) + "</div>"))


def _explained_mistakes(folder: Path) -> list[tuple[str, Path]]:
    """Photos `explain` drew with a known true class it missed, surest first, whose figures are there."""
    listing = folder / EXPLANATIONS_FILE
    if not listing.is_file():
        return []
    with open(listing, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames != EXPLAIN_COLUMNS:
            return []
        rows = [row for row in reader if row["true"] and row["true"] != row["predicted"] and row["figure"]
                and Path(row["figure"]).name == row["figure"] and (folder / row["figure"]).is_file()]
    rows.sort(key=lambda row: -float(row["probability"] or 0.0))
    return [(row["photo"], folder / row["figure"]) for row in rows]


def _batch_section(parts: _Parts) -> None:
    parts.section("inputs", "Training images as the model got them")
    try:
        grid = draw_training_batch(run_config(parts.run_dir), BATCH_SHOWN, label=parts.run_dir.name)
    except CatsdogsError as exc:
        parts.absent("training images", f"The training photos cannot be drawn: {exc}")
        return
    parts.body.append(image(png_bytes(grid), "the first training images", f"The first {len(grid.pixels)} training "
                            "images of epoch 1 through the run's own batch order, resize and augmentation, as "
                            f"catsdogs show --augment {parts.quoted} draws them."))
