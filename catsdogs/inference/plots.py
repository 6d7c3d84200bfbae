"""Learning curves from history.csv: loss and accuracy against epoch, one line per run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from catsdogs.errors import CatsdogsError
from catsdogs.figures import pyplot, save_figure
from catsdogs.training.runs import CURVES_FILE, RunFolder, read_history

if TYPE_CHECKING:
    from matplotlib.axes import Axes

FORMATS = (".png", ".svg", ".pdf")
MAX_INLINE_LEGEND = 2  # more runs than this get one legend outside the panels, not over the lines
DEFAULT_NAME = CURVES_FILE
SIGNATURE = "catsdogs plot-curves"  # in each figure's metadata, so a later run may replace it


def run_label(run_dir: Path) -> str:
    """The run's name and its optimizer, for the legend."""
    try:
        optim = RunFolder(run_dir).read_config().get("optim")
    except (OSError, yaml.YAMLError):
        optim = None
    return f"{run_dir.name} ({optim})" if optim and optim != run_dir.name else run_dir.name


def set_epoch_ticks(ax: Axes) -> None:
    """Whole epochs only on the x axis, even for a run of one or two epochs."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))


def plot_curves(run_dirs: list[Path], out: Path) -> Path:
    """Draw training/validation loss and accuracy of every run; the format follows `out`'s suffix."""
    if out.suffix.lower() not in FORMATS:
        raise CatsdogsError(f"--out {out}: use a .png, .svg or .pdf file name")
    target = out.resolve() if ".." in out.parts else out  # judged where it lands: `missing/..` is no new folder
    # A run's curves.png is ours (older versions did not sign it); any other file must carry the signature.
    runs_own = target.name == DEFAULT_NAME and target.resolve().parent in {run.resolve() for run in run_dirs}
    if target.exists() and not runs_own and not drawn_by_catsdogs(target):
        raise CatsdogsError(f"{out} exists and is not a figure drawn by catsdogs: choose another --out, or move it")
    unique: dict[Path, Path] = {}
    for run in run_dirs:  # a run named twice is drawn once
        unique.setdefault(run.resolve(), run)
    histories = [(run_label(run), read_history(run)) for run in unique.values()]
    plt = pyplot()
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4.2))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for index, (label, history) in enumerate(histories):
        colour = colours[index % len(colours)]
        epochs = history["epoch"]
        for ax, key in ((loss_ax, "loss"), (acc_ax, "acc")):
            ax.plot(epochs, history[f"train_{key}"], color=colour, linestyle="--", marker=".",
                    label=f"{label} train")
            ax.plot(epochs, history[f"val_{key}"], color=colour, linestyle="-", marker="o", markersize=3,
                    label=f"{label} val")
    loss_ax.set(title="Training and validation loss", xlabel="epoch", ylabel="cross-entropy loss")
    acc_ax.set(title="Training and validation accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (loss_ax, acc_ax):
        set_epoch_ticks(ax)
        ax.grid(alpha=0.3)
        if len(histories) <= MAX_INLINE_LEGEND:
            ax.legend(fontsize=8)
    if len(histories) > MAX_INLINE_LEGEND:
        # One legend beside both panels: a colour per run, and the two line styles once.
        from matplotlib.lines import Line2D

        handles = [Line2D([], [], color=colours[i % len(colours)], label=label)
                   for i, (label, _) in enumerate(histories)]
        handles += [Line2D([], [], color="grey", linestyle="--", marker=".", label="train"),
                    Line2D([], [], color="grey", linestyle="-", marker="o", markersize=3, label="val")]
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, handlelength=3)
    target.parent.mkdir(parents=True, exist_ok=True)
    save_figure(fig, target, dpi=120, bbox_inches="tight",
                metadata={("Software" if out.suffix.lower() == ".png" else "Creator"): SIGNATURE})
    return out


def drawn_by_catsdogs(path: Path) -> bool:
    """Whether the figure at `path` carries the signature `plot_curves` writes into its metadata
    (uncompressed in PNG, SVG and PDF alike)."""
    try:
        return SIGNATURE.encode() in path.read_bytes()
    except OSError:
        return False
