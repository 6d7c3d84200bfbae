"""--tensorboard: event files in RUN_DIR/tb that TensorBoard's own reader finds equal to history.csv."""

from __future__ import annotations

import csv
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import catsdogs.training.tensorboard_log as board_module
from catsdogs.cli import main
from catsdogs.training.loop import Hooks
from catsdogs.training.config import TrainConfig
from catsdogs.training.train import train
from tests.helpers import TRAIN, assert_finished, quiet, split_fixture, torchrun

pytest.importorskip("tensorboard")  # the extra, in dev: the tests of the missing package fake its absence
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

EPOCH_TAGS = {f"epoch/{column}": column for column in board_module.EPOCH_COLUMNS}


def read_events(run: Path) -> EventAccumulator:
    """The run's points as TensorBoard shows them (every point kept, restarts purged)."""
    events = EventAccumulator(str(run / "tb"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()
    return events


def points(events: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    return [(event.step, event.value) for event in events.Scalars(tag)]


def history(run: Path) -> list[dict[str, float]]:
    with (run / "history.csv").open() as handle:
        return [{key: float(value) for key, value in row.items()} for row in csv.DictReader(handle)]


def assert_epochs_equal_history(events: EventAccumulator, run: Path) -> None:
    rows = history(run)
    for tag, column in EPOCH_TAGS.items():
        got = points(events, tag)
        assert [step for step, _ in got] == [int(row["epoch"]) for row in rows], tag
        assert [value for _, value in got] == pytest.approx([row[column] for row in rows], abs=2e-6), tag


def make_config(data: Path, out: Path, **overrides) -> TrainConfig:
    values = dict(data=str(data), out=str(out), optim="adam", image_size=96, epochs=3, batch_size=8, device="cpu",
                  precision="fp32", tensorboard=True)
    return TrainConfig(**{**values, **overrides})


data = split_fixture((20, 4, 4), size=48)  # 40 training photos: 5 steps an epoch


def test_a_run_writes_its_history_its_steps_its_first_batch_and_its_hparams(data: Path, tmp_path: Path,
                                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(board_module, "LOSS_EVERY", 2)
    run = train(make_config(data, tmp_path / "run"), progress=False, log=quiet).run_dir
    events = read_events(run)
    assert_epochs_equal_history(events, run)
    assert [step for step, _ in points(events, "train/loss")] == list(range(2, 16, 2))  # 15 steps
    assert [value for _, value in points(events, "train/lr")] == pytest.approx([0.001] * 7)
    (image,) = events.Images("train/first_batch")
    assert image.step == 0 and image.width == 8 * (96 + 2) + 2  # 8 photos a row, 2 px between
    assert "_hparams_/session_start_info" in events.PluginTagToContent("hparams")
    assert points(events, "hparams/best_val_acc") == [(3, pytest.approx(max(r["val_acc"] for r in history(run))))]
    assert len(list((run / "tb").iterdir())) == 1


def test_an_interrupted_and_resumed_run_has_each_point_once_at_its_step(data: Path, tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(board_module, "LOSS_EVERY", 3)
    straight = train(make_config(data, tmp_path / "straight"), progress=False, log=quiet).run_dir

    def step(progress):  # Ctrl-C during step 7, inside epoch 2: it stops after that step
        if progress.global_step == 7:
            os.kill(os.getpid(), signal.SIGINT)

    broken = train(make_config(data, tmp_path / "broken"), progress=False, log=quiet, hooks=Hooks(after_step=[step]))
    assert broken.status == "interrupted" and broken.epochs_done == 1
    time.sleep(1.1)  # TensorBoard reads a folder's files in name order, which starts with the second they were made
    resumed = train(None, resume=broken.run_dir, progress=False, log=quiet)
    assert resumed.status == "finished"
    events = read_events(broken.run_dir)
    assert_epochs_equal_history(events, broken.run_dir)
    expected = read_events(straight)
    for tag in ("train/loss", "train/lr", *EPOCH_TAGS):  # the same points as the straight run, none twice
        assert [s for s, _ in points(events, tag)] == [s for s, _ in points(expected, tag)], tag
    loss, expected_loss = points(events, "train/loss"), points(expected, "train/loss")
    assert [value for _, value in loss] == pytest.approx([value for _, value in expected_loss], abs=1e-6)
    assert len(events.Images("train/first_batch")) == 1
    assert len(list((broken.run_dir / "tb").iterdir())) == 2  # the resumed process's own file beside the first


def test_points_written_after_the_last_save_are_dropped_on_resume(data: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A run killed mid-epoch wrote points that its last save does not cover; the resume redoes those
    steps, and TensorBoard shows the redone points only."""
    from torch.utils.tensorboard import SummaryWriter

    monkeypatch.setattr(board_module, "LOSS_EVERY", 1)
    run = train(make_config(data, tmp_path / "run", epochs=1), progress=False, log=quiet).run_dir
    orphan = SummaryWriter(str(run / "tb"))  # as the killed process left them: steps 6 and 7 of epoch 2
    for step in (6, 7):
        orphan.add_scalar("train/loss", 99.0, step)
    orphan.close()
    time.sleep(1.1)  # the resumed run's file must come later in name order, as it would in a new process
    train(None, resume=run, flags={"epochs": 2}, progress=False, log=quiet)
    loss = points(read_events(run), "train/loss")
    assert [step for step, _ in loss] == list(range(1, 11)) and 99.0 not in [value for _, value in loss]


def test_without_the_package_the_flag_is_refused_in_one_line(data: Path, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now raises ImportError
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["train", "--data", str(data), "--optim", "adam", "--tensorboard"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output == ("Error: --tensorboard (tensorboard: true) needs the tensorboard package: "
                             "pip install 'catsdogs[tensorboard]'\n")
    assert not (tmp_path / "runs").exists()
    (tmp_path / "tb.yaml").write_text("tensorboard: true\noptim: adam\n")
    from_file = CliRunner().invoke(main, ["train", "--data", str(data), "--config", "tb.yaml"])
    assert from_file.exit_code == 1 and "catsdogs[tensorboard]" in from_file.output


def test_the_flag_and_the_config_key_resolve_like_every_setting(tmp_path: Path) -> None:
    (tmp_path / "tb.yaml").write_text("tensorboard: true\n")
    runner = CliRunner()
    shown = runner.invoke(main, ["train", "--optim", "adam", "--config", str(tmp_path / "tb.yaml"),
                                 "--print-config"])
    assert "tensorboard: true" in shown.output
    undone = runner.invoke(main, ["train", "--optim", "adam", "--config", str(tmp_path / "tb.yaml"),
                                  "--no-tensorboard", "--print-config"])
    assert "tensorboard: false" in undone.output
    assert "tensorboard: false" in runner.invoke(main, ["train", "--optim", "adam", "--print-config"]).output


def test_under_torchrun_process_0_alone_writes(data: Path) -> None:
    process = torchrun(["--data", str(data), "--epochs", "2", "--out", "runs/ddp", "--tensorboard", *TRAIN],
                       data.parent)
    assert_finished(process)
    run = data.parent / "runs" / "ddp"
    (events_file,) = (run / "tb").iterdir()  # one writer for the two processes
    assert_epochs_equal_history(read_events(run), run)
    assert events_file.name.startswith("events.out.tfevents.")


@pytest.mark.parametrize(("class_weights", "best"), [("none", (0.80, 0.78)), ("balanced", (0.69, 0.725))])
def test_the_hparams_best_scores_are_those_of_the_epoch_kept_as_best_pt(tmp_path: Path, class_weights: str,
                                                                        best: tuple[float, float]) -> None:
    """Epoch 3 is best.pt in both: by its lower loss in an accuracy tie, or by balanced accuracy (and loss)."""
    scores = {"none": [(0.60, 0.75, 0.75), (0.55, 0.80, 0.79), (0.45, 0.80, 0.78)],
              "balanced": [(0.50, 0.857, 0.500), (0.70, 0.700, 0.725), (0.65, 0.690, 0.725)]}[class_weights]
    rows = [{"epoch": epoch, "train_loss": 0.5, "train_acc": 0.8, "val_loss": loss, "val_acc": acc,
             "val_balanced_acc": balanced, "lr": 0.001} for epoch, (loss, acc, balanced) in enumerate(scores, 1)]
    board = board_module.Board(tmp_path / "run", 0, ["Cat", "Dog"])
    board.finish(TrainConfig(class_weights=class_weights), rows, "finished")
    board.close()
    events = read_events(tmp_path / "run")
    assert points(events, "hparams/best_val_acc") == [(3, pytest.approx(best[0]))]
    assert points(events, "hparams/best_val_balanced_acc") == [(3, pytest.approx(best[1]))]
