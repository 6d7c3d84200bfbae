"""Training runs: files written, determinism, exact resume, interruption, early stop, schedules."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from catsdogs.errors import CatsdogsError, UsageError
from catsdogs.training import run_setup, train as train_module
from catsdogs.training.checkpoint import load_checkpoint
from catsdogs.training.config import TrainConfig
from catsdogs.training.loop import Hooks
from catsdogs.training.optim import get_optimizer_spec
from catsdogs.training.schedules import lr_factor
from catsdogs.training.runs import HISTORY_COLUMNS
from catsdogs.training.train import new_run_config, train
from tests.helpers import (history_without_time, interrupt_after, on_training_batch, paused_at_epoch_2, quiet,
                           split_fixture, waiting)

SIZE = 96  # cnn3's minimum, to keep the tests fast


def make_config(data: Path, out: Path | None, **overrides) -> TrainConfig:
    values = dict(data=str(data), out=str(out) if out else None, optim="adam", image_size=SIZE, epochs=2, batch_size=8,
                  device="cpu", precision="fp32")
    values.update(overrides)
    return TrainConfig(**values)


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


data = split_fixture((20, 6, 6), size=SIZE)


def test_run_folder_holds_config_history_and_safe_checkpoints(data: Path, tmp_path: Path) -> None:
    result = train(make_config(data, tmp_path / "run"), progress=False, log=quiet)
    run = result.run_dir
    assert result.status == "finished" and result.epochs_done == 2
    with (run / "history.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0]) == HISTORY_COLUMNS
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    for row in rows:
        assert 0.0 <= float(row["train_acc"]) <= 1.0 and 0.0 <= float(row["val_acc"]) <= 1.0
        assert float(row["lr"]) == pytest.approx(get_optimizer_spec("adam").defaults["lr"])  # constant schedule
    for name in ("last.pt", "best.pt"):
        state = torch.load(run / name, map_location="cpu", weights_only=True)
        assert state["classes"] == ["Cat", "Dog"]
        assert state["config"]["batch_size"] == 8 and state["config"]["optim"] == "adam"
        assert "classifier.4.weight" in state["model"]
    last = load_checkpoint(run / "last.pt")
    assert last["epoch"] == 2 and "optimizer" in last
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["lr"], saved["image_size"]) == (get_optimizer_spec("adam").defaults["lr"], 96)
    assert json.loads((run / "status.json").read_text())["status"] == "finished"


def test_optimizer_defaults_fill_the_resolved_config(data: Path, tmp_path: Path) -> None:
    cfg = make_config(data, tmp_path / "run", optim="momentum", batch_size=None, epochs=1)
    resolved = train_module.resolve_config(cfg)
    spec = get_optimizer_spec("momentum")
    assert (resolved.batch_size, resolved.lr, resolved.momentum) == (spec.batch_size, spec.defaults["lr"],
                                                                    spec.defaults["momentum"])
    assert train_module.resolve_config(make_config(data, tmp_path, optim="vanilla-sgd", batch_size=None)).batch_size == 1


def test_same_seed_same_history_and_weights(data: Path, tmp_path: Path) -> None:
    first = train(make_config(data, tmp_path / "a"), progress=False, log=quiet).run_dir
    second = train(make_config(data, tmp_path / "b"), progress=False, log=quiet).run_dir
    assert history_without_time(first) == history_without_time(second)
    assert_same_weights(first / "last.pt", second / "last.pt")
    other = train(make_config(data, tmp_path / "c", seed=7), progress=False, log=quiet).run_dir
    assert history_without_time(other) != history_without_time(first)


def test_a_new_run_never_overwrites_an_old_one(data: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = make_config(data, None, epochs=1)
    runs = [train(cfg, progress=False, log=quiet).run_dir for _ in range(2)]
    assert runs == [Path("runs/adam"), Path("runs/adam-2")]


@pytest.mark.parametrize(("precision", "scheduler", "augment"),
                         [("fp32", "constant", "flip"), ("auto", "constant", "flip"),
                          ("fp32", "onecycle", "flip"),  # the recipes' schedule
                          ("fp32", "constant", "trivialaugment"), ("fp32", "constant", "randaugment")])
def test_interrupted_mid_epoch_then_resumed_equals_straight_run(data: Path, tmp_path: Path, monkeypatch,
                                                                 precision: str, scheduler: str, augment: str) -> None:
    cfg = dict(epochs=4, precision=precision, scheduler=scheduler, augment=augment)
    straight = train(make_config(data, tmp_path / "straight", **cfg), progress=False, log=quiet).run_dir
    steps_per_epoch = 5  # 40 training images, batch 8
    with monkeypatch.context() as patch:
        interrupt_after(patch, 2 * steps_per_epoch + 2)  # inside epoch 3
        messages: list[str] = []
        broken = train(make_config(data, tmp_path / "broken", **cfg), progress=False, log=messages.append)
    assert broken.status == "interrupted" and broken.epochs_done == 2
    assert any(f"catsdogs train --resume {broken.run_dir}" in m for m in messages)
    state = load_checkpoint(broken.run_dir / "last.pt")
    assert state["progress"]["epoch"] == 2 and state["progress"]["step"] == 2
    said: list[str] = []
    resumed = train(None, resume=broken.run_dir, progress=False, log=said.append)
    assert resumed.status == "finished" and resumed.epochs_done == 4
    assert said[0] == f"resuming {broken.run_dir} in epoch 3 after step 2"
    assert history_without_time(straight) == history_without_time(broken.run_dir)
    assert_same_weights(straight / "last.pt", broken.run_dir / "last.pt")
    assert_same_weights(straight / "best.pt", broken.run_dir / "best.pt")


def test_an_interrupt_mid_epoch_resumes_at_the_next_step_with_the_epochs_remaining_batches(
        data: Path, tmp_path: Path, monkeypatch) -> None:
    steps_per_epoch = 5  # 40 training images, batch 8
    with monkeypatch.context() as patch:
        straight = on_training_batch(patch, lambda _: None)
        train(make_config(data, tmp_path / "straight"), progress=False, log=quiet)
    assert len(straight) == 2 * steps_per_epoch
    with monkeypatch.context() as patch:
        before = interrupt_after(patch, steps_per_epoch + 3)  # during step 3 of epoch 2
        broken = train(make_config(data, tmp_path / "broken"), progress=False, log=quiet)
    assert broken.status == "interrupted" and before == straight[:steps_per_epoch + 3]  # it finished that step
    saved = load_checkpoint(broken.run_dir / "last.pt")["progress"]
    assert (saved["epoch"], saved["step"], saved["global_step"]) == (1, 3, steps_per_epoch + 3)
    with monkeypatch.context() as patch:
        after = on_training_batch(patch, lambda _: None)
        said: list[str] = []
        train(None, resume=broken.run_dir, progress=False, log=said.append)
    assert said[0] == f"resuming {broken.run_dir} in epoch 2 after step 3"
    # Step 4 of epoch 2 next, then 5: the same photos in the same order, augmented alike, as the straight run's.
    assert after == straight[steps_per_epoch + 3:]
    epoch_two = [photo for photos, _ in before[steps_per_epoch:] + after for photo in photos]
    assert sorted(epoch_two) == sorted(photo for photos, _ in straight[:steps_per_epoch] for photo in photos)


def test_an_interrupt_stops_a_run_whose_epochs_are_one_step_at_an_epoch_end(data: Path, tmp_path: Path,
                                                                             monkeypatch) -> None:
    """A batch that holds the whole training split (a small study's batch of 100) leaves no step inside an epoch
    to stop after: the run stops at the end of the epoch the Ctrl-C came in (until 2026-12-07, of the next one),
    and resumes from there to the straight run's end."""
    cfg = dict(batch_size=64, epochs=4)  # 40 training images: one step an epoch
    straight = train(make_config(data, tmp_path / "straight", **cfg), progress=False, log=quiet).run_dir
    with monkeypatch.context() as patch:
        interrupt_after(patch, 2)  # during epoch 2's only step
        messages: list[str] = []
        broken = train(make_config(data, tmp_path / "broken", **cfg), progress=False, log=messages.append)
    assert broken.status == "interrupted" and broken.epochs_done == 2
    assert f"interrupted after epoch 2; resume with: catsdogs train --resume {broken.run_dir}" in messages
    saved = load_checkpoint(broken.run_dir / "last.pt")["progress"]
    assert (saved["epoch"], saved["step"]) == (2, 0)
    assert json.loads((broken.run_dir / "status.json").read_text())["status"] == "interrupted"
    assert train(None, resume=broken.run_dir, progress=False, log=quiet).status == "finished"
    assert history_without_time(straight) == history_without_time(broken.run_dir)
    assert_same_weights(straight / "last.pt", broken.run_dir / "last.pt")


def test_an_interrupt_in_an_epoch_s_last_step_stops_at_that_epoch_s_end(data: Path, tmp_path: Path,
                                                                      monkeypatch) -> None:
    with monkeypatch.context() as patch:
        interrupt_after(patch, 5)  # epoch 1's last step: 40 training images, batch 8
        messages: list[str] = []
        broken = train(make_config(data, tmp_path / "broken"), progress=False, log=messages.append)
    assert broken.status == "interrupted" and broken.epochs_done == 1  # not one step into epoch 2
    assert f"interrupted after epoch 1; resume with: catsdogs train --resume {broken.run_dir}" in messages
    assert load_checkpoint(broken.run_dir / "last.pt")["progress"]["step"] == 0


def test_extending_a_finished_run_equals_the_longer_run(data: Path, tmp_path: Path) -> None:
    straight = train(make_config(data, tmp_path / "four", epochs=4), progress=False, log=quiet).run_dir
    short = train(make_config(data, tmp_path / "two", epochs=2), progress=False, log=quiet).run_dir
    messages: list[str] = []
    again = train(None, resume=short, progress=False, log=messages.append)
    assert again.status == "nothing-to-do" and "nothing to do" in messages[-1]
    extended = train(None, resume=short, flags={"epochs": 4}, progress=False, log=quiet)
    assert extended.epochs_done == 4
    assert history_without_time(straight) == history_without_time(short)
    assert_same_weights(straight / "last.pt", short / "last.pt")


@pytest.mark.parametrize("flag, value", [("model", "other"), ("image_size", 128), ("batch_size", 4),
                                         ("optim", "momentum")])
def test_resume_refuses_conflicting_settings(data: Path, tmp_path: Path, flag: str, value) -> None:
    run = train(make_config(data, tmp_path / "run", epochs=1), progress=False, log=quiet).run_dir
    with pytest.raises(UsageError, match=f"--{flag.replace('_', '-')} .*conflicts"):
        train(None, resume=run, flags={flag: value, "epochs": 2}, progress=False, log=quiet)


def test_print_config_of_a_resume_shows_the_resumed_settings_and_trains_nothing(data: Path, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from catsdogs.cli import main

    run = train(make_config(data, tmp_path / "run", epochs=1), progress=False, log=quiet).run_dir
    saved = yaml.safe_load((run / "config.yaml").read_text())
    before = {path.name: path.read_bytes() for path in run.iterdir()}
    result = CliRunner().invoke(main, ["train", "--resume", str(run), "--epochs", "3", "--print-config"])
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(result.output) == {**saved, "epochs": 3}  # the run's settings, with the allowed change
    assert {path.name: path.read_bytes() for path in run.iterdir()} == before  # no epoch trained, nothing written
    refused = CliRunner().invoke(main, ["train", "--resume", str(run), "--lr", "0.5", "--print-config"])
    assert refused.exit_code == 2 and "--lr 0.5 conflicts with the run being resumed" in refused.output


def scripted_validation(scores: list[tuple[float, float]]) -> Hooks:
    """Hooks under which validation reports these (val_loss, val_acc) pairs, one per epoch in order, balanced
    accuracy = accuracy."""
    return _validation_gives([(loss, acc, acc) for loss, acc in scores])


def test_best_pt_is_written_before_the_last_pt_that_counts_its_epoch(data: Path, tmp_path: Path,
                                                                    monkeypatch) -> None:
    """A kill between the two saves must not leave best.pt behind a last.pt that already knows the epoch."""
    seen: list[tuple[int, int]] = []
    run = tmp_path / "run"

    def saved_last(progress):  # told as soon as last.pt is written, before anything else is
        if progress.step == 0 and progress.history:  # an epoch's end: which epoch does best.pt hold by now?
            seen.append((progress.history[-1]["epoch"], load_checkpoint(run / "best.pt")["epoch"]))

    hooks = scripted_validation([(0.6, 0.50), (0.5, 0.75), (0.4, 0.70)])  # epoch 2 stays the best
    hooks.after_save.append(saved_last)
    train(make_config(data, run, epochs=3), progress=False, log=quiet, hooks=hooks)
    assert seen == [(1, 1), (2, 2), (3, 2)]


@pytest.mark.parametrize(("third", "best"), [
    ((0.60, 0.90), 3),  # a higher accuracy, whatever its loss
    ((0.40, 0.75), 3),  # the same accuracy with a lower loss: the model still learns
    ((0.60, 0.75), 2),  # the same accuracy and a higher loss: the earlier epoch stays
    ((0.10, 0.70), 2),  # a lower accuracy, whatever its loss
], ids=["higher-acc", "same-acc-lower-loss", "same-acc-higher-loss", "lower-acc"])
def test_the_best_epoch_is_carried_across_a_resume(data: Path, tmp_path: Path, monkeypatch, third, best: int) -> None:
    run = train(make_config(data, tmp_path / "run", epochs=2), progress=False, log=quiet,
                hooks=scripted_validation([(0.70, 0.50), (0.50, 0.75)])).run_dir
    before = load_checkpoint(run / "best.pt")
    assert before["epoch"] == 2
    train(None, resume=run, flags={"epochs": 3}, progress=False, log=quiet, hooks=scripted_validation([third]))
    after = load_checkpoint(run / "best.pt")
    assert after["epoch"] == best
    holds = before["model"] if best == 2 else load_checkpoint(run / "last.pt")["model"]  # epoch 3's weights
    assert all(torch.equal(after["model"][key], holds[key]) for key in holds)


def _validation_gives(scores: list[tuple[float, float, float]]) -> Hooks:
    """Hooks under which each epoch's validation gives the next (val loss, val accuracy, val balanced accuracy)
    of `scores`: they replace the epoch's measured ones before the run judges the epoch."""
    given = iter(scores)

    def score(progress) -> None:
        row = progress.history[-1]
        row["val_loss"], row["val_acc"], row["val_balanced_acc"] = next(given)

    return Hooks(after_epoch=[score])


# Epoch 1 answers the larger class: the best plain accuracy, and the worst balanced accuracy.
UNBALANCED_SCORES = [(0.50, 0.857, 0.500), (0.70, 0.700, 0.725), (0.65, 0.690, 0.740)]


@pytest.mark.parametrize(("class_weights", "best"), [("balanced", (3, 0.690, 0.740)), ("none", (1, 0.857, 0.500))])
def test_status_and_result_name_the_best_epoch_and_both_of_its_accuracies(data: Path, tmp_path: Path, monkeypatch,
                                                                          class_weights: str, best) -> None:
    result = train(make_config(data, tmp_path / "run", epochs=3, class_weights=class_weights), progress=False,
                   log=quiet, hooks=_validation_gives(UNBALANCED_SCORES))
    status = json.loads((result.run_dir / "status.json").read_text())
    assert (status["best_epoch"], status["best_val_acc"], status["best_val_balanced_acc"]) == best
    assert (result.best_epoch, result.best_val_acc, result.best_val_balanced_acc) == best
    assert status["best_chosen_by"] == ("val_balanced_acc" if class_weights == "balanced" else "val_acc")
    assert load_checkpoint(result.run_dir / "best.pt")["epoch"] == best[0]


def test_early_stopping_triggers_after_patience(data: Path, tmp_path: Path) -> None:
    # With lr 1e-12 the model barely changes, so validation accuracy never improves after epoch 1.
    messages: list[str] = []
    result = train(make_config(data, tmp_path / "run", epochs=6, lr=1e-12, patience=2), progress=False,
                   log=messages.append)
    assert result.status == "early-stopped" and result.epochs_done == 3
    assert any("early stop" in m for m in messages)
    status = json.loads((result.run_dir / "status.json").read_text())
    assert status["status"] == "early-stopped" and "2 epochs" in status["reason"]
    again = train(None, resume=result.run_dir, progress=False, log=quiet)
    assert again.status == "nothing-to-do"


def test_raising_epochs_of_a_run_that_ran_out_of_patience_at_its_end_stops_it_as_a_straight_run(
        data: Path, tmp_path: Path) -> None:
    # Epochs 2 and 3 do not improve (lr 1e-12): at its cap of 3 the run had run out of patience 2 but ended
    # "finished". Given 6 epochs, a straight run stops early after epoch 3 (above): so must the extended one,
    # not train a fourth epoch first.
    first = train(make_config(data, tmp_path / "run", epochs=3, lr=1e-12, patience=2), progress=False, log=quiet)
    assert first.status == "finished" and first.epochs_done == 3
    messages: list[str] = []
    again = train(None, resume=first.run_dir, flags={"epochs": 6}, progress=False, log=messages.append)
    assert again.status == "nothing-to-do" and again.epochs_done == 3
    assert any("already stopped early" in m for m in messages)
    status = json.loads((first.run_dir / "status.json").read_text())
    assert (status["status"], status["epochs_done"], status["epochs"]) == ("early-stopped", 3, 6)
    assert yaml.safe_load((first.run_dir / "config.yaml").read_text())["epochs"] == 6


def test_scheduler_is_recorded_in_the_lr_column(data: Path, tmp_path: Path) -> None:
    run = train(make_config(data, tmp_path / "run", epochs=3, scheduler="cosine", lr=0.01), progress=False,
                log=quiet).run_dir
    with (run / "history.csv").open() as handle:
        lrs = [float(r["lr"]) for r in csv.DictReader(handle)]
    steps = 5
    expected = [0.01 * lr_factor("cosine", (epoch + 1) * steps - 1, 3 * steps) for epoch in range(3)]
    assert lrs == pytest.approx(expected, abs=1e-6)
    assert lrs[0] > lrs[1] > lrs[2]


def test_unknown_scheduler_is_refused(data: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown scheduler 'wobbly'.*constant"):
        train(make_config(data, tmp_path / "run", scheduler="wobbly"), progress=False, log=quiet)


@pytest.mark.parametrize("cache", ["auto", "off"])
def test_an_image_broken_after_the_split_is_skipped_and_reported(data: Path, tmp_path: Path, monkeypatch,
                                                                 cache: str) -> None:
    victim = sorted((data / "train" / "Cat").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:40])  # truncated
    with pytest.raises(CatsdogsError, match="1 of 52 images could not be read"):
        train(make_config(data, tmp_path / "strict", epochs=1, cache=cache), progress=False, log=quiet)
    monkeypatch.setattr(run_setup, "MAX_UNREADABLE_FRACTION", 0.1)
    result = train(make_config(data, tmp_path / "lenient", epochs=1, cache=cache), progress=False, log=quiet)
    status = json.loads((result.run_dir / "status.json").read_text())
    assert status["unreadable_images"] == [str(victim)]


def test_a_file_that_fails_every_epoch_counts_once(tmp_path: Path, tiny_split) -> None:
    # 220 train and val photos: one bad file is under the 1% limit (2.2), three would be over it.
    data = tiny_split(tmp_path / "split", per_class=(100, 10, 10), size=32)
    victim = data / "train" / "Cat" / "0.jpg"
    victim.write_bytes(b"garbage, not a jpeg")
    messages: list[str] = []
    result = train(make_config(data, tmp_path / "run", epochs=3, cache="off", workers=0, batch_size=32),
                   progress=False, log=messages.append)
    assert result.status == "finished" and result.epochs_done == 3
    warnings = [m for m in messages if "unreadable" in m]
    assert warnings == [f"warning: skipped 1 unreadable image(s): {victim}"]  # in epoch 1 only
    status = json.loads((result.run_dir / "status.json").read_text())
    assert status["unreadable_images"] == [str(victim)]


@pytest.mark.parametrize("cache", ["auto", "off"])
def test_names_that_are_not_utf8_train_and_a_tiny_photo_is_left_out(data: Path, tmp_path: Path, monkeypatch,
                                                                     cache: str) -> None:
    from PIL import Image

    # A split folder made by hand (or by an older split) holding names Linux allows but UTF-8 does not.
    (data / "train" / "Cat" / "0.jpg").rename(data / "train" / "Cat" / os.fsdecode(b"\xff.jpg"))
    tiny = data / "train" / "Dog" / os.fsdecode(b"pixel\xe9.png")
    Image.new("RGB", (1, 1), (60, 70, 190)).save(tiny)
    monkeypatch.setattr(run_setup, "MAX_UNREADABLE_FRACTION", 0.1)
    messages: list[str] = []
    run = train(make_config(data, tmp_path / "run", epochs=1, cache=cache), progress=False,
                log=messages.append).run_dir
    shown = str(data / "train" / "Dog" / "pixel\\xe9.png")  # as every file catsdogs writes names it
    assert [m for m in messages if "unreadable" in m] == [f"warning: skipped 1 unreadable image(s): {tiny}"]
    status = json.loads((run / "status.json").read_bytes().decode("utf-8"))  # strict: valid UTF-8
    assert status["unreadable_images"] == [shown]  # the pixel only: the odd name was read


def test_cache_rebuild_acts_once_in_the_run_that_asks(data: Path, tmp_path: Path, monkeypatch) -> None:
    from catsdogs.data import cache as data_module
    from catsdogs.inference.evaluate import evaluate_run
    from catsdogs.training.train import print_config

    built: list[str] = []
    build = data_module._build_cache
    monkeypatch.setattr(data_module, "_build_cache", lambda split, *args: built.append(split.root.name) or
                        build(split, *args))
    cfg = make_config(data, tmp_path / "run", epochs=1)
    run = train(cfg, progress=False, log=quiet).run_dir  # makes the caches
    built.clear()
    rebuilt = train(make_config(data, tmp_path / "rebuilt", epochs=1, cache="rebuild"), progress=False, log=quiet)
    assert built == ["train", "val"]
    assert "cache: auto\n" in (rebuilt.run_dir / "config.yaml").read_text()
    assert load_checkpoint(rebuilt.run_dir / "last.pt")["config"]["cache"] == "auto"
    assert "cache: auto\n" in print_config(make_config(data, None, cache="rebuild"))  # as config.yaml holds it
    built.clear()
    train(None, resume=rebuilt.run_dir, flags={"epochs": 2}, progress=False, log=quiet)
    evaluate_run(rebuilt.run_dir, split="val", progress=False)
    assert built == []  # neither the resume nor evaluate decodes again
    train(None, resume=run, flags={"epochs": 2, "cache": "rebuild"}, progress=False, log=quiet)
    assert built == ["train", "val"]  # a resume may ask for it, once
    assert "cache: auto\n" in (run / "config.yaml").read_text()


def test_full_disk_while_saving_keeps_the_previous_checkpoint(data: Path, tmp_path: Path, monkeypatch) -> None:
    run = train(make_config(data, tmp_path / "run", epochs=1), progress=False, log=quiet).run_dir
    before = (run / "last.pt").read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(CatsdogsError, match="No space left on device.*previous checkpoint is untouched"):
        train(None, resume=run, flags={"epochs": 2}, progress=False, log=quiet)
    assert (run / "last.pt").read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def _before_step(monkeypatch, number: int, act) -> None:
    """Call `act()` just before training step `number` (1-based) of this process."""
    on_training_batch(monkeypatch, lambda step: act() if step == number else None)


@pytest.mark.parametrize("at_step", [2, 5 + 2])
def test_a_second_ctrl_c_says_what_is_left_and_leaves_no_empty_run(data: Path, tmp_path: Path, monkeypatch,
                                                                   at_step: int) -> None:
    def ctrl_c_twice() -> None:  # out at once
        os.kill(os.getpid(), signal.SIGINT)
        os.kill(os.getpid(), signal.SIGINT)

    _before_step(monkeypatch, at_step, ctrl_c_twice)
    messages: list[str] = []
    out = tmp_path / "runs" / "r"
    with pytest.raises(KeyboardInterrupt):
        train(make_config(data, out, epochs=3), progress=False, log=messages.append)
    if at_step == 2:  # in the first epoch, before any save: the folder would only hold config.yaml
        assert messages[-1] == f"stopped before anything was saved: nothing to resume, so {out} is removed"
        assert not out.exists()
    else:  # epoch 1 was saved
        assert messages[-1] == f"stopped at once; the last save can be resumed with: catsdogs train --resume {out}"
        assert load_checkpoint(out / "last.pt")["progress"]["epoch"] == 1


@pytest.mark.parametrize("at_step", [2, 5 + 2])
def test_running_out_of_memory_is_one_line_and_leaves_no_empty_run(data: Path, tmp_path: Path, monkeypatch,
                                                                   at_step: int) -> None:
    from click.testing import CliRunner

    from catsdogs.cli import main

    def out_of_memory() -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.77 GiB total)")

    _before_step(monkeypatch, at_step, out_of_memory)
    out = tmp_path / "runs" / "r"
    result = CliRunner().invoke(main, ["train", "--data", str(data), "--optim", "adam", "--image-size", str(SIZE),
                                       "--batch-size", "8", "--epochs", "3", "--device", "cpu", "--out", str(out)])
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = result.output.strip().splitlines()  # the log (stdout) and the error (stderr), in either order
    assert ("Error: out of memory (CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 15.77 GiB total)): "
            "train the same batches in passes with --micro-batch N, or use a smaller --batch-size or "
            "--image-size") in lines
    assert len([line for line in lines if line.startswith("Error")]) == 1
    if at_step == 2:  # before any save: the folder would only hold config.yaml
        assert f"failed before anything was saved: nothing to resume, so {out} is removed" in lines
        assert not out.exists()
    else:
        assert f"failed; the last save can be resumed with: catsdogs train --resume {out}" in lines
        assert load_checkpoint(out / "last.pt")["progress"]["epoch"] == 1


CLI_STEPS_PER_EPOCH = 20  # _train_command's batches: 40 training images, batch 2


def _train_command(data: Path, out: Path, epochs: int) -> list[str]:
    return [sys.executable, "-m", "catsdogs", "train", "--data", str(data), "--optim", "adam", "--image-size",
            str(SIZE), "--batch-size", "2", "--epochs", str(epochs), "--device", "cpu", "--out", str(out)]


def _wait_for(done, process: subprocess.Popen, what: str, timeout: float = 120.0) -> None:
    """Poll `done()` until it holds; fail (and stop `process`) when the process ends first or time runs out."""
    deadline = time.monotonic() + timeout
    while not done():
        ended = process.poll() is not None
        if ended or time.monotonic() > deadline:
            if not ended:
                process.kill()
            _, stderr = process.communicate()
            why = f"the process ended (exit {process.returncode})" if ended else f"{timeout:g} s passed"
            pytest.fail(f"{why} before {what}; its stderr ends: {str(stderr or '')[-2000:]}")
        time.sleep(0.05)


def _stamp(path: Path) -> tuple[int, int] | None:
    """Which file `path` is (an atomic write makes a new one), or None while there is none."""
    try:
        info = path.stat()
    except FileNotFoundError:
        return None
    return info.st_ino, info.st_mtime_ns


def _assert_saved_inside_an_epoch(out: Path) -> dict:
    """last.pt of an interrupted run holds its position inside an epoch, and the run's files agree with it."""
    saved = load_checkpoint(out / "last.pt")["progress"]
    # These tests press Ctrl-C as the run waits to begin epoch 2 (paused_at_epoch_2): it stops after that step.
    assert 1 <= saved["step"] < CLI_STEPS_PER_EPOCH, saved["step"]
    assert saved["global_step"] == saved["epoch"] * CLI_STEPS_PER_EPOCH + saved["step"]
    with (out / "history.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == saved["epoch"] >= 1  # stopped after history.csv existed
    status = json.loads((out / "status.json").read_text())
    assert (status["status"], status["epochs_done"]) == ("interrupted", saved["epoch"])
    return saved


def test_ctrl_c_in_a_real_process_saves_and_prints_the_resume_command(data: Path, tmp_path: Path) -> None:
    out, pause = tmp_path / "run", tmp_path / "pause"
    process = subprocess.Popen(_train_command(data, out, 50), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=paused_at_epoch_2(pause))
    _wait_for(lambda: waiting(pause) == 1, process, "epoch 1 ended")  # it waits to begin epoch 2 until the Ctrl-C
    process.send_signal(signal.SIGINT)
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    said = re.search(r"interrupted in epoch (\d+) after step (\d+); resume with: catsdogs train --resume (\S+)", stdout)
    assert said and said[3] == str(out), stdout
    saved = _assert_saved_inside_an_epoch(out)
    assert (saved["epoch"] + 1, saved["step"]) == (int(said[1]), int(said[2])) == (2, 1)  # what it said it saved


def test_ctrl_c_saves_even_when_the_log_pipe_is_gone(data: Path, tmp_path: Path) -> None:
    """`catsdogs train | tee log`: the same Ctrl-C ends tee, and the log lines then meet a closed pipe."""
    out, pause = tmp_path / "run", tmp_path / "pause"
    process = subprocess.Popen(_train_command(data, out, 50), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               env=paused_at_epoch_2(pause))
    _wait_for(lambda: waiting(pause) == 1, process, "epoch 1 ended")  # it waits to begin epoch 2 until the Ctrl-C
    process.stdout.close()  # tee is gone
    process.send_signal(signal.SIGINT)
    stderr = process.communicate(timeout=120)[1].decode()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "Broken pipe" not in stderr, stderr
    _assert_saved_inside_an_epoch(out)  # the position in the epoch is kept


def test_sigkill_at_any_moment_leaves_a_loadable_last_checkpoint(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    epochs_saved = 0
    for delay in (0.05, 0.2, 0.45):
        command = (_train_command(data, out, 50) if not out.exists() else
                   [sys.executable, "-m", "catsdogs", "train", "--resume", str(out)])
        before = _stamp(out / "last.pt")
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        _wait_for(lambda: _stamp(out / "last.pt") not in (None, before), process, "it saved an epoch")
        time.sleep(delay)  # killed before, during or after the next save
        process.send_signal(signal.SIGKILL)
        process.communicate()
        saved = load_checkpoint(out / "last.pt")["progress"]  # whole: never a torn file
        assert saved["epoch"] > epochs_saved  # this process saved an epoch more than the last one left
        epochs_saved = saved["epoch"]


def test_a_run_records_its_data_folder_absolute_and_resumes_from_anywhere(data: Path, tmp_path: Path,
                                                                        monkeypatch) -> None:
    monkeypatch.chdir(data.parent)
    run = train(make_config(Path("data"), tmp_path / "run", epochs=1), progress=False, log=quiet).run_dir
    saved = load_checkpoint(run / "last.pt")
    assert saved["config"]["data"] == str(data.resolve())
    assert set(saved["data_fingerprint"]) == {"train", "val"}  # never the test split, not even its names
    monkeypatch.chdir(tmp_path)  # somewhere else entirely
    assert train(None, resume=run, flags={"epochs": 2}, progress=False, log=quiet).epochs_done == 2


def test_resume_follows_a_moved_split_but_refuses_a_new_one(data: Path, tmp_path: Path, monkeypatch) -> None:
    import shutil

    run = train(make_config(data, tmp_path / "run", epochs=1), progress=False, log=quiet).run_dir
    moved = Path(shutil.copytree(data, tmp_path / "moved" / "data"))
    shutil.rmtree(data)
    monkeypatch.chdir(tmp_path / "moved")  # given relative, recorded absolute
    result = train(None, resume=run, flags={"data": "data", "epochs": 2}, progress=False, log=quiet)
    assert result.epochs_done == 2
    for name in ("last.pt", "best.pt"):  # best.pt is what evaluate reads: it follows the move too
        assert load_checkpoint(run / name)["config"]["data"] == str(moved), name
    # A re-split: one training photo swapped into validation.
    (moved / "train" / "Cat" / "0.jpg").rename(moved / "val" / "Cat" / "moved-from-train.jpg")
    with pytest.raises(CatsdogsError, match=r"does not hold the split .* \(re-split since\?\)"):
        train(None, resume=run, flags={"epochs": 3}, progress=False, log=quiet)


def test_a_run_folder_inside_the_split_is_refused(data: Path) -> None:
    with pytest.raises(UsageError, match="inside .*train, where it would be read as a class"):
        train(make_config(data, data / "train" / "run"), progress=False, log=quiet)
    assert sorted(p.name for p in (data / "train").iterdir()) == ["Cat", "Dog"]


def test_an_existing_out_folder_is_never_reused_and_the_run_says_where_it_went(data: Path, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "keep.txt").write_text("mine")
    lines: list[str] = []
    result = train(make_config(data, tmp_path / "run", epochs=1), progress=False, log=lines.append)
    assert result.run_dir == tmp_path / "run-2"
    assert f"{tmp_path / 'run'} already exists, so this run goes to {tmp_path / 'run-2'} (a run never reuses a " \
           "folder)" in lines
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["keep.txt"]


def test_unbalanced_validation_photos_get_the_majority_baseline_beside_the_best_accuracy(data: Path,
                                                                                          tmp_path: Path) -> None:
    lines: list[str] = []
    train(make_config(data, tmp_path / "balanced", epochs=1), progress=False, log=lines.append)
    assert lines[-1].startswith("best val accuracy ") and "always answering" not in lines[-1]
    for index in range(4):  # val: 6 cats, 2 dogs
        (data / "val" / "Dog" / f"{index}.jpg").unlink()
    lines.clear()
    train(make_config(data, tmp_path / "unbalanced", epochs=1), progress=False, log=lines.append)
    assert ("(unbalanced classes: always answering Cat scores 0.7500; see balanced accuracy in `catsdogs evaluate`)"
            in lines[-1])


def test_a_batch_in_several_passes_gets_the_same_gradient(data: Path, tmp_path: Path) -> None:
    runs = {}
    for micro in (None, 3):  # batches of 8 in passes of 3, 3 and 2
        cfg = make_config(data, tmp_path / f"micro-{micro}", micro_batch=micro)
        runs[micro] = train(cfg, progress=False, log=quiet).run_dir
    whole, parts = (load_checkpoint(runs[m] / "last.pt")["model"] for m in (None, 3))
    assert all(torch.allclose(whole[k], parts[k], atol=1e-5) for k in whole)  # float sums differ in order only
    assert history_without_time(runs[None]) == history_without_time(runs[3])
    lines: list[str] = []
    train(make_config(data, tmp_path / "shown", epochs=1, micro_batch=3), progress=False, log=lines.append)
    assert any("(lr 0.001, batch 8, in passes of 3), 1 epoch" in line for line in lines)


def test_balanced_class_weights_weigh_the_rare_class_and_passes_still_add_up(data: Path, tmp_path: Path) -> None:
    from catsdogs.data.cache import BatchSource, read_split
    from catsdogs.data.transforms import eval_preset
    from catsdogs.training.loop import class_weights

    for extra in sorted((data / "train" / "Dog").iterdir())[6:]:  # 20 cats, 6 dogs
        extra.unlink()
    source = BatchSource(read_split(data, "train"), eval_preset(SIZE), None)
    assert class_weights(source, "none") is None
    assert class_weights(source, "balanced").tolist() == pytest.approx([26 / (2 * 20), 26 / (2 * 6)])
    runs = {}
    for scheme, micro in (("none", None), ("balanced", None), ("balanced", 3)):
        cfg = make_config(data, tmp_path / f"{scheme}-{micro}", class_weights=scheme, micro_batch=micro)
        runs[scheme, micro] = load_checkpoint(train(cfg, progress=False, log=quiet).run_dir / "last.pt")
    # history.csv's val balanced accuracy is evaluate's, for the epoch best.pt holds
    from catsdogs.inference.evaluate import evaluate_run

    run = tmp_path / "balanced-None"
    best = load_checkpoint(run / "best.pt")["epoch"]
    with (run / "history.csv").open() as handle:
        row = next(r for r in csv.DictReader(handle) if int(r["epoch"]) == best)
    measured = evaluate_run(run, split="val", progress=False).metrics["balanced_accuracy"]
    assert float(row["val_balanced_acc"]) == pytest.approx(measured, abs=1e-6)
    whole, parts = runs["balanced", None]["model"], runs["balanced", 3]["model"]
    assert all(torch.allclose(whole[k], parts[k], atol=1e-5) for k in whole)
    plain = runs["none", None]["model"]
    assert not all(torch.allclose(whole[k], plain[k], atol=1e-3) for k in whole)  # the weights change the steps
    assert runs["balanced", None]["config"]["class_weights"] == "balanced"


@pytest.mark.parametrize("accelerator", ["cuda", "mps"])
def test_the_accelerators_random_state_is_saved_and_restored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                             accelerator: str) -> None:
    """Dropout on a GPU draws from the GPU's generator: a resume must continue it, not restart it."""
    from catsdogs.training.state import rng_state, set_rng_state

    generator = {"state": torch.arange(16, dtype=torch.uint8)}  # stands in for the device's generator
    module = torch.cuda if accelerator == "cuda" else torch.mps
    monkeypatch.setattr(torch.cuda, "is_available", lambda: accelerator == "cuda")
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: accelerator == "cuda")
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: accelerator == "mps")
    monkeypatch.setattr(module, "get_rng_state", lambda *args: generator["state"].clone())
    monkeypatch.setattr(module, "set_rng_state", lambda state, *args: generator.update(state=state.clone()))
    torch.save(rng_state(), tmp_path / "rng.pt")
    generator["state"] = torch.zeros(16, dtype=torch.uint8)  # the stream moved on (or a fresh process seeded it)
    saved = torch.load(tmp_path / "rng.pt", weights_only=True)
    assert set(saved) == {"torch", "python", "numpy", accelerator}
    set_rng_state(saved)
    assert torch.equal(generator["state"], torch.arange(16, dtype=torch.uint8))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # resumed on the CPU: the state is not needed
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    generator["state"] = torch.zeros(16, dtype=torch.uint8)
    set_rng_state(saved)
    assert not generator["state"].any()


def test_a_config_files_runs_are_named_after_it(tmp_path: Path) -> None:
    recipe = tmp_path / "cpu-fast.yaml"
    recipe.write_text("optim: adam\n")
    assert new_run_config(recipe, {}).out == "runs/cpu-fast"
    assert new_run_config(recipe, {"out": "runs/mine"}).out == "runs/mine"  # --out wins
    hidden = tmp_path / ".yaml"
    hidden.write_text("optim: adam\n")
    assert new_run_config(hidden, {}).out == "runs/yaml"  # never a hidden folder
    assert new_run_config(None, {"optim": "adam"}).out is None  # train names it runs/<optim>
