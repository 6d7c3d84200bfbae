"""Tests for catsdogs.inference.plots: curves from history.csv in PNG, SVG or PDF, several runs overlaid."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from catsdogs.errors import CatsdogsError  # noqa: E402
from catsdogs.inference.plots import plot_curves, read_history, run_label  # noqa: E402
from tests.helpers import HISTORY_HEADER as HEADER, visible_ticks  # noqa: E402



def make_run(folder: Path, optim: str, epochs: int = 3) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(f"optim: {optim}\nepochs: {epochs}\n")
    rows = [f"{e},{0.7 - 0.1 * e:.6f},{0.5 + 0.1 * e:.6f},{0.75 - 0.05 * e:.6f},{0.5 + 0.05 * e:.6f},0.001,1.5\n"
            for e in range(1, epochs + 1)]
    (folder / "history.csv").write_text(HEADER + "".join(rows))
    return folder


@pytest.fixture
def drawn(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """What each figure showed just before plot_curves closed it: titles, legend labels, line data."""
    seen: list[dict] = []
    close = plt.close

    def record(fig=None) -> None:
        seen.append({"titles": [ax.get_title() for ax in fig.axes],
                     "legends": [[t.get_text() for t in ax.get_legend().get_texts()] for ax in fig.axes
                                 if ax.get_legend()],
                     "figure_legend": [t.get_text() for legend in fig.legends for t in legend.get_texts()],
                     "lines": [[(list(l.get_xdata()), list(l.get_ydata())) for l in ax.get_lines()]
                               for ax in fig.axes],
                     "xticks": [visible_ticks(ax) for ax in fig.axes]})
        close(fig)

    monkeypatch.setattr(plt, "close", record)
    return seen


def test_read_history_gives_float_columns(tmp_path: Path) -> None:
    history = read_history(make_run(tmp_path / "adam", "adam", epochs=2))
    assert history["epoch"] == [1.0, 2.0]
    assert history["train_loss"] == pytest.approx([0.6, 0.5])
    assert history["val_acc"] == pytest.approx([0.55, 0.6])


@pytest.mark.parametrize(("suffix", "magic"), [(".png", b"\x89PNG\r\n\x1a\n"), (".pdf", b"%PDF-"),
                                               (".PNG", b"\x89PNG\r\n\x1a\n")])
def test_the_format_follows_the_extension(tmp_path: Path, suffix: str, magic: bytes) -> None:
    run = make_run(tmp_path / "adam", "adam")
    out = plot_curves([run], tmp_path / "figures" / f"curves{suffix}")
    assert out == tmp_path / "figures" / f"curves{suffix}"
    assert out.read_bytes().startswith(magic)


def test_svg_output_is_an_svg_document(tmp_path: Path) -> None:
    out = plot_curves([make_run(tmp_path / "adam", "adam")], tmp_path / "curves.svg")
    head = out.read_bytes()[:400]
    assert head.startswith(b"<?xml") and b"<svg" in head


@pytest.mark.parametrize("suffix", [".png", ".svg", ".pdf"])
def test_a_figure_of_the_user_s_is_never_replaced_but_an_earlier_plot_is(tmp_path: Path, suffix: str) -> None:
    run = make_run(tmp_path / "adam", "adam")
    mine = tmp_path / f"holiday{suffix}"
    mine.write_bytes(b"my own figure")
    with pytest.raises(CatsdogsError, match=f"holiday{suffix} exists and is not a figure drawn by catsdogs"):
        plot_curves([run], mine)
    assert mine.read_bytes() == b"my own figure"
    out = plot_curves([run], tmp_path / f"curves{suffix}")
    first = out.read_bytes()
    assert plot_curves([run, make_run(tmp_path / "sgd", "sgd")], out) == out and out.read_bytes() != first
    (run / "curves.png").write_bytes(b"stale")  # the run's own figure, perhaps drawn by an older version
    assert plot_curves([run], run / "curves.png").read_bytes().startswith(b"\x89PNG")
    (run / "notes.png").write_bytes(b"the user's")  # another file in a run folder is the user's
    with pytest.raises(CatsdogsError, match="notes.png exists and is not a figure drawn by catsdogs"):
        plot_curves([run], run / "notes.png")
    with pytest.raises(CatsdogsError, match="notes.png exists and is not a figure drawn by catsdogs"):
        plot_curves([run], run / "missing" / ".." / "notes.png")  # judged where it lands
    assert (run / "notes.png").read_bytes() == b"the user's" and not (run / "missing").exists()


@pytest.mark.parametrize("name", ["curves.jpg", "curves", "curves.png.txt"])
def test_other_extensions_are_refused(tmp_path: Path, name: str) -> None:
    run = make_run(tmp_path / "adam", "adam")
    with pytest.raises(CatsdogsError, match="use a .png, .svg or .pdf file name") as info:
        plot_curves([run], tmp_path / name)
    assert name in str(info.value)
    assert not (tmp_path / name).exists()


def test_one_run_draws_loss_and_accuracy_against_epoch(tmp_path: Path, drawn: list[dict]) -> None:
    plot_curves([make_run(tmp_path / "adam", "adam")], tmp_path / "curves.png")
    (figure,) = drawn
    assert figure["titles"] == ["Training and validation loss", "Training and validation accuracy"]
    assert figure["legends"] == [["adam train", "adam val"]] * 2
    (train_loss, val_loss), (train_acc, val_acc) = figure["lines"]
    assert train_loss[0] == [1.0, 2.0, 3.0]
    assert train_loss[1] == pytest.approx([0.6, 0.5, 0.4])
    assert val_acc[1] == pytest.approx([0.55, 0.6, 0.65])


@pytest.mark.parametrize("epochs", [1, 2, 3])
def test_the_epoch_axis_has_whole_epochs_only(tmp_path: Path, drawn: list[dict], epochs: int) -> None:
    plot_curves([make_run(tmp_path / "adam", "adam", epochs)], tmp_path / "curves.png")
    (figure,) = drawn
    assert figure["xticks"] == [[float(e) for e in range(1, epochs + 1)]] * 2


def test_several_runs_are_overlaid_with_run_and_optimizer_in_the_legend(tmp_path: Path,
                                                                         drawn: list[dict]) -> None:
    runs = [make_run(tmp_path / "runs" / "adam-2", "adam"), make_run(tmp_path / "runs" / "baseline", "momentum", 2)]
    out = plot_curves(runs, tmp_path / "compare.png")
    assert out.read_bytes().startswith(b"\x89PNG")
    (figure,) = drawn
    expected = ["adam-2 (adam) train", "adam-2 (adam) val", "baseline (momentum) train", "baseline (momentum) val"]
    assert figure["legends"] == [expected, expected]
    assert [len(x) for x, _ in figure["lines"][0]] == [3, 3, 2, 2]


def test_many_runs_share_one_legend_outside_and_a_run_named_twice_is_drawn_once(tmp_path: Path,
                                                                                drawn: list[dict]) -> None:
    runs = [make_run(tmp_path / f"seed{i}", "adam") for i in range(4)]
    plot_curves([*runs, runs[0]], tmp_path / "study.png")
    (figure,) = drawn
    assert figure["legends"] == []  # nothing over the lines
    assert figure["figure_legend"] == ["seed0 (adam)", "seed1 (adam)", "seed2 (adam)", "seed3 (adam)", "train", "val"]
    assert [len(lines) for lines in figure["lines"]] == [8, 8]  # train and val of each run, once


def test_run_label_names_the_optimizer_only_when_the_folder_does_not(tmp_path: Path) -> None:
    assert run_label(make_run(tmp_path / "adam", "adam")) == "adam"
    assert run_label(make_run(tmp_path / "first-try", "vanilla-sgd")) == "first-try (vanilla-sgd)"
    bare = tmp_path / "bare"
    bare.mkdir()
    assert run_label(bare) == "bare"


def test_a_run_without_history_is_a_clear_error(tmp_path: Path) -> None:
    run = tmp_path / "adam"
    run.mkdir()
    with pytest.raises(CatsdogsError, match="has no history.csv") as info:
        plot_curves([run], tmp_path / "curves.png")
    assert str(run) in str(info.value)
    assert not (tmp_path / "curves.png").exists()


def test_a_history_without_epochs_is_a_clear_error(tmp_path: Path) -> None:
    run = make_run(tmp_path / "adam", "adam")
    (run / "history.csv").write_text(HEADER)
    with pytest.raises(CatsdogsError, match="holds no epochs yet"):
        plot_curves([run], tmp_path / "curves.png")


def test_a_history_with_text_values_is_refused(tmp_path: Path) -> None:
    run = make_run(tmp_path / "adam", "adam")
    (run / "history.csv").write_text(HEADER + "1,low,0.5,0.7,0.5,0.001,1.0\n")
    with pytest.raises(CatsdogsError, match="is not a catsdogs history file"):
        plot_curves([run], tmp_path / "curves.png")


def test_a_numeric_csv_without_the_catsdogs_columns_is_refused(tmp_path: Path) -> None:
    run = make_run(tmp_path / "adam", "adam")
    (run / "history.csv").write_text("step,loss\n1,0.5\n2,0.4\n")
    with pytest.raises(CatsdogsError, match="is not a catsdogs history file"):
        plot_curves([run], tmp_path / "curves.png")
