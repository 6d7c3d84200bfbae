"""Recipe tricks: progressive resizing, alternating flips, multi-view TTA, the EMA's multi-tensor update."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from catsdogs.cli import main
from catsdogs.data import transforms as transforms_module
from catsdogs.data.transforms import train_preset
from catsdogs.errors import CatsdogsError, UsageError
from catsdogs.training.checkpoint import load_checkpoint
from catsdogs.training.config import TrainConfig, build_config
from catsdogs.training.ema import ModelEMA
from catsdogs.training.loop import EpochLoop, Progress
from catsdogs.training.models import build_model
from catsdogs.training import train as train_module, tricks
from catsdogs.training.train import train
from tests.helpers import RECIPE_SIZE, STEPS_PER_EPOCH, interrupt_after, quiet, recipe_config, split_fixture

data = split_fixture((20, 6, 6), size=RECIPE_SIZE)


def record_views(monkeypatch) -> list[tuple[list[str], list[bool] | None, int]]:
    """Per training step: each photo's hash (of its cached pixels), whether it was mirrored by an
    alternating flip, and the side of the batch the model saw."""
    calls: list[tuple[list[str], list[bool] | None, int]] = []
    original = transforms_module.Preset.__call__

    def call(self, batch, generator=None, size=None, hflips=None):
        out = original(self, batch, generator, size, hflips)
        if self.train:
            names = [hashlib.sha1(image.numpy().tobytes()).hexdigest() for image in batch]
            calls.append((names, None if hflips is None else hflips.tolist(), out.shape[-1]))
        return out

    monkeypatch.setattr(transforms_module.Preset, "__call__", call)
    return calls


def test_alternating_flips_mirror_each_photo_in_every_other_epoch(data: Path, tmp_path: Path, monkeypatch) -> None:
    calls = record_views(monkeypatch)
    train(recipe_config(data, tmp_path / "run", hflip_mode="alternate"), progress=False, log=quiet)
    assert len(calls) == 4 * STEPS_PER_EPOCH
    by_epoch: list[dict[str, bool]] = [{} for _ in range(4)]
    for step, (names, flips, _) in enumerate(calls):
        by_epoch[step // STEPS_PER_EPOCH].update(zip(names, flips))
    assert all(len(epoch) == 40 for epoch in by_epoch)  # every photo once an epoch
    for before, after in zip(by_epoch, by_epoch[1:]):
        assert all(before[name] != after[name] for name in before)  # mirrored exactly every other epoch
    assert 10 <= sum(by_epoch[0].values()) <= 30  # about half of them in a given epoch


def test_random_flips_stay_the_default(data: Path, tmp_path: Path, monkeypatch) -> None:
    calls = record_views(monkeypatch)
    train(recipe_config(data, tmp_path / "run", epochs=1), progress=False, log=quiet)
    assert all(flips is None for _, flips, _ in calls) and {size for *_, size in calls} == {RECIPE_SIZE}


def test_progressive_resizing_trains_small_first_then_at_full_size(data: Path, tmp_path: Path, monkeypatch) -> None:
    calls = record_views(monkeypatch)
    run = train(recipe_config(data, tmp_path / "run", progressive_size=32, progressive_fraction=0.5), progress=False,
                log=quiet).run_dir
    sizes = [size for *_, size in calls]
    assert sizes == [32] * 10 + [RECIPE_SIZE] * 10  # half of the 20 steps at 32 px
    assert load_checkpoint(run / "last.pt")["progress"]["low_res_steps"] == 10


def test_resume_inside_the_small_phase_equals_a_straight_run(data: Path, tmp_path: Path, monkeypatch) -> None:
    tricks = dict(progressive_size=32, progressive_fraction=0.6, hflip_mode="alternate", ema=0.9)
    straight = train(recipe_config(data, tmp_path / "straight", **tricks), progress=False, log=quiet).run_dir
    with monkeypatch.context() as patch:
        interrupt_after(patch, STEPS_PER_EPOCH + 2)  # epoch 2, small images, odd epoch's flips
        broken = train(recipe_config(data, tmp_path / "broken", **tricks), progress=False, log=quiet)
    assert broken.status == "interrupted"
    assert load_checkpoint(broken.run_dir / "last.pt")["progress"]["low_res_steps"] == STEPS_PER_EPOCH + 2
    train(None, resume=broken.run_dir, progress=False, log=quiet)
    first, second = load_checkpoint(straight / "last.pt"), load_checkpoint(broken.run_dir / "last.pt")
    for key in first["model"]:
        assert torch.equal(first["model"][key], second["model"][key]), key
    assert second["progress"]["low_res_steps"] == first["progress"]["low_res_steps"] == 12


def test_raising_epochs_of_a_finished_onecycle_run_with_progressive_resizing_is_refused(data: Path, tmp_path: Path,
                                                                                        monkeypatch) -> None:
    """Issue 24: the lr schedule and the switch to full-size images are planned over the run's length. A
    longer plan would send the finished run back to small images with the lr up again: it is refused."""
    calls = record_views(monkeypatch)
    tricks = dict(progressive_size=32, progressive_fraction=0.75, epochs=2)
    run = train(recipe_config(data, tmp_path / "run", **tricks), progress=False, log=quiet).run_dir
    assert [size for *_, size in calls] == [32] * 8 + [RECIPE_SIZE] * 2  # the first 7.5 of its 10 steps small
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    calls.clear()
    refusal = (f"--epochs 4 conflicts with the run being resumed: {run} plans its onecycle schedule and progressive "
               "resizing over its 2 epochs, and a new length would make its lr and image size jump part-way; start "
               f"a new run with its settings: catsdogs train --config {run / 'config.yaml'} --epochs 4")
    with pytest.raises(UsageError) as refused:
        train(None, resume=run, flags={"epochs": 4}, progress=False, log=quiet)
    assert str(refused.value) == refusal
    assert calls == []  # not one step more
    for args in (["--epochs", "4"], ["--epochs", "4", "--print-config"]):
        result = CliRunner().invoke(main, ["train", "--resume", str(run), *args])
        assert result.exit_code == 2 and "Traceback" not in result.output, result.output
        assert result.output.strip().splitlines()[-1] == f"Error: {refusal}"
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == before
    said: list[str] = []
    again = train(None, resume=run, flags={"epochs": 2}, progress=False, log=said.append)  # the length it has: fine
    assert again.status == "nothing-to-do" and calls == []
    assert said[-1] == (f"{run} already finished 2 epochs: nothing to do (to train longer, start a new run with its "
                        f"settings: catsdogs train --config {run / 'config.yaml'} --epochs N (its onecycle schedule "
                        "and progressive resizing cannot be extended))")


def _resume_state(cfg: TrainConfig, epochs_done: int, step: int = 0, stopped_early: bool = False,
                  seconds: float = 1.0) -> dict:
    """last.pt's config and progress, as a run of `cfg` leaves them after `epochs_done` epochs and `step`."""
    history = [{"epoch": e + 1, "seconds": seconds} for e in range(epochs_done)]
    return {"config": cfg.to_dict(), "progress": {"epoch": epochs_done, "step": step, "history": history,
                                                  "stopped_early": stopped_early}}


@pytest.mark.parametrize(("settings", "done", "flags", "refused"), [
    (dict(scheduler="cosine"), 2, {"epochs": 4}, "its cosine schedule over its 2 epochs, and a new length would make "
     "its lr jump part-way; start a new run with its settings: catsdogs train --config RUN/config.yaml --epochs 4"),
    (dict(scheduler="step"), 2, {"epochs": 3}, "its step schedule over its 2 epochs"),
    (dict(scheduler="constant", progressive_size=32), 2, {"epochs": 4},
     "progressive resizing over its 2 epochs, and a new length would make its image size jump part-way"),
    # Unfinished: resuming as planned is the other way out.
    (dict(scheduler="onecycle"), 1, {"epochs": 3}, "its onecycle schedule over its 2 epochs, and a new length would "
     "make its lr jump part-way; resume without --epochs to finish it as planned, or start a new run with its "
     "settings: catsdogs train --config RUN/config.yaml --epochs 3"),
    (dict(scheduler="onecycle"), 1, {"epochs": 1}, "; resume without --epochs to finish it as planned"),  # shorter too
    # A budget is a length too: the schedule is fitted to it as the run goes.
    (dict(scheduler="onecycle", time_budget=2.0), 1, {"time_budget": 5.0},
     "--time-budget 5 conflicts with the run being resumed: RUN plans its onecycle schedule over its 2 epochs and "
     "2-minute time budget, and a new length would make its lr jump part-way; resume without --time-budget"),
    (dict(scheduler="onecycle", time_budget=2.0), 1, {"time_budget": 0.0}, "--time-budget 0 conflicts"),
    (dict(scheduler="cosine"), 1, {"time_budget": 3.0}, "--time-budget 3 conflicts"),
    # Nothing in the plan depends on the length: the run goes on as the longer run would.
    (dict(scheduler="constant"), 2, {"epochs": 4}, None),
    (dict(scheduler="constant", warmup_epochs=1.0), 1, {"epochs": 4, "time_budget": 3.0}, None),
    (dict(scheduler="constant", progressive_size=32, progressive_fraction=0.0), 2, {"epochs": 4}, None),
    (dict(scheduler="onecycle", progressive_size=32), 1, {"epochs": 2, "time_budget": 0.0}, None),  # the same length
], ids=["cosine", "step", "resizing", "unfinished", "shorter", "raised-budget", "budget-removed", "budget-added",
        "constant", "constant-warmup", "fraction-0", "same-length"])
def test_a_resume_keeps_the_length_its_plan_spans(data: Path, tmp_path: Path, settings: dict, done: int, flags: dict,
                                                  refused: str | None) -> None:
    from catsdogs.training.resume import resumed_config

    run = tmp_path / "run"
    state = _resume_state(recipe_config(data, run, epochs=2, **settings), done)
    if refused is None:
        resumed = resumed_config(state, flags, run)
        assert {key: getattr(resumed, key) for key in flags} == flags
        return
    with pytest.raises(UsageError) as error:
        resumed_config(state, flags, run)
    assert refused.replace("RUN", str(run)) in str(error.value)


@pytest.mark.parametrize("ended", ["early-stopped", "budget-spent"])
def test_a_run_that_ended_for_good_is_left_to_say_so(data: Path, tmp_path: Path, ended: str) -> None:
    """An early stop or a spent budget has nothing to do whatever the length: train() says so, and
    why (see test_recipes' time budget test), rather than this refusal."""
    from catsdogs.training.resume import resumed_config

    cfg = recipe_config(data, tmp_path / "run", epochs=4, scheduler="onecycle", time_budget=1.0)
    state = _resume_state(cfg, 2, stopped_early=ended == "early-stopped", seconds=10.0 if ended == "early-stopped"
                          else 30.0)
    flags = {"epochs": 8, "time_budget": 2.0}
    assert {key: getattr(resumed_config(state, flags, tmp_path / "run"), key) for key in flags} == flags


def test_time_budget_estimate_counts_small_steps_at_their_cost() -> None:
    # 100 s budget, half the steps at half the side (a quarter of the cost): after 10 small steps in
    # 2.5 s (one full-size step a second), 20 s go to 80 small steps and 80 s to 80 full ones.
    fake = SimpleNamespace(steps_per_epoch=1000, cfg=SimpleNamespace(epochs=10, progressive_fraction=0.5),
                           budget_seconds=100.0, low_size=32, low_cost=0.25)
    assert EpochLoop._total_steps(fake, Progress(global_step=10, low_res_steps=10), 2.5) == 160
    # Past the switch (80 small steps, 20 full ones in 40 s): what is left is at full size.
    assert EpochLoop._total_steps(fake, Progress(global_step=100, low_res_steps=80), 40.0) == 160
    off = SimpleNamespace(steps_per_epoch=1000, cfg=SimpleNamespace(epochs=10, progressive_fraction=0.5),
                          budget_seconds=100.0, low_size=None, low_cost=1.0)
    assert EpochLoop._total_steps(off, Progress(global_step=10), 2.5) == 400  # as before: steps at the pace so far


def test_progressive_size_is_checked(data: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="progressive_size 64 must be below image_size 64"):
        train(recipe_config(data, tmp_path / "a", progressive_size=64), progress=False, log=quiet)
    with pytest.raises(UsageError, match="model cnn3 takes only 224px images"):
        train(recipe_config(data, tmp_path / "b", model="cnn3", image_size=224, progressive_size=128, optim="adam"),
              progress=False, log=quiet)
    assert not (tmp_path / "b").exists()
    with pytest.raises(CatsdogsError, match="progressive_fraction must be at most 1"):
        build_config(None, {"progressive_fraction": 1.5})
    with pytest.raises(CatsdogsError, match="hflip_mode must be one of random, alternate"):
        build_config(None, {"hflip_mode": "sometimes"})
    assert build_config(None, {"progressive_size": 0}).progressive_size == 0  # 0: off


def test_preset_scales_down_and_mirrors_the_chosen_images() -> None:
    batch = torch.randint(0, 256, (3, 64, 64, 3), dtype=torch.uint8)
    preset = train_preset(64, hflip=0.0, augment="flip")
    plain = preset(batch)
    mirrored = preset(batch, hflips=torch.tensor([True, False, True]))
    assert torch.equal(mirrored[0], plain[0].flip(2)) and torch.equal(mirrored[1], plain[1])
    small = preset(batch, size=32)
    assert small.shape == (3, 3, 32, 32) and small.is_contiguous(memory_format=torch.channels_last)
    # A flat image stays flat when scaled down (antialiased, no ringing past 0..255).
    flat = preset(torch.full((1, 64, 64, 3), 200, dtype=torch.uint8), size=32)
    assert torch.allclose(flat, preset(torch.full((1, 32, 32, 3), 200, dtype=torch.uint8)), atol=1e-5)


def test_evaluate_tta_flag_and_modes(tiny_run, tmp_path: Path) -> None:
    run_dir, _ = tiny_run
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    runner = CliRunner()
    plain = runner.invoke(main, ["evaluate", str(run), "--tta"])
    assert plain.exit_code == 0, plain.output
    flip = json.loads((run / "metrics_tta.json").read_text())
    assert flip["tta"] is True and flip["tta_mode"] == "flip"
    shifted = runner.invoke(main, ["evaluate", str(run), "--tta-mode", "flip-shift"])
    assert shifted.exit_code == 0, shifted.output
    six = json.loads((run / "metrics_tta-flip-shift.json").read_text())
    assert six["tta"] is True and six["tta_mode"] == "flip-shift" and 0.0 <= six["accuracy"] <= 1.0
    bad = runner.invoke(main, ["evaluate", str(run), "--tta-mode", "crops"])
    assert bad.exit_code == 2


def test_ema_multi_tensor_update_equals_one_lerp_per_tensor() -> None:
    torch.manual_seed(0)
    model = build_model("bncnn-s", 2, 32)
    ema = ModelEMA(model, 0.9)
    reference = copy.deepcopy(ema.module)
    for _ in range(3):
        with torch.no_grad():
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
        model(torch.randn(4, 3, 32, 32))  # moves the batch-norm statistics and counters
        ema.update(model)
        decay = min(0.9, (1 + ema.updates) / (10 + ema.updates))
        current = model.state_dict()
        for name, average in reference.state_dict().items():
            if average.dtype.is_floating_point:
                average.lerp_(current[name], 1.0 - decay)
            else:
                average.copy_(current[name])
    for name, value in reference.state_dict().items():
        assert torch.allclose(ema.module.state_dict()[name], value, atol=1e-6), name


@pytest.mark.parametrize("size", [16, 97])
def test_random_crop_cuts_the_reflection_padded_image(size: int) -> None:
    batch = torch.randint(0, 256, (6, size, size, 3), dtype=torch.uint8).permute(0, 3, 1, 2)
    crops = transforms_module.random_crop(batch, torch.Generator().manual_seed(3))
    pad = size // 8
    padded = torch.nn.functional.pad(batch.float(), (pad, pad, pad, pad), mode="reflect")
    offsets = torch.randint(0, 2 * pad + 1, (6, 2), generator=torch.Generator().manual_seed(3)).tolist()
    expected = torch.stack([padded[i, :, y:y + size, x:x + size] for i, (y, x) in enumerate(offsets)])
    assert torch.equal(crops, expected) and crops.is_contiguous(memory_format=torch.channels_last)


# ---- airbench's and Myrtle's tricks (catsdogs/training/tricks.py) ----------------------------------------

def test_whitening_filters_decorrelate_patches_to_unit_variance_in_signed_pairs() -> None:
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(27, 27, generator=generator)  # correlated patch values, variances far from 1
    patches = (torch.randn(20000, 27, generator=generator) @ mixing).reshape(-1, 3, 3, 3)
    filters = tricks.whitening_filters(patches, 24)
    assert filters.shape == (24, 3, 3, 3)
    assert torch.equal(filters[1::2], -filters[::2])  # each direction with its negative
    out = (patches.reshape(len(patches), -1) - patches.reshape(len(patches), -1).mean(0)) @ filters[::2].reshape(12, -1).T
    covariance = out.T @ out / (len(out) - 1)
    torch.testing.assert_close(covariance, torch.eye(12), atol=0.05, rtol=0)
    with pytest.raises(UsageError, match="more than twice"):
        tricks.whitening_filters(patches, 56)


def test_bn_tricks_and_lr_scaling_reach_the_optimizer_and_the_model(data: Path, tmp_path: Path) -> None:
    cfg = recipe_config(data, tmp_path / "run", epochs=1, scheduler="constant", lr=0.05, batch_size=16, lr_batch=8,
                        bn_momentum=0.4, bn_bias_lr_scale=8.0)
    lines: list[str] = []
    result = train(cfg, progress=False, log=lines.append)
    assert any("lr 0.1 = 0.05 x 16/8" in line for line in lines), lines
    groups = load_checkpoint(result.run_dir / "last.pt")["optimizer"]["param_groups"]
    model = build_model("bncnn-s", 2, RECIPE_SIZE)
    bn_biases = len([m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)])
    others = len(list(model.parameters())) - bn_biases
    assert [(len(g["params"]), g["lr"]) for g in groups] == [(others, 0.1), (bn_biases, 0.8)]
    assert tricks.set_bn_momentum(model, 0.4) == bn_biases
    assert {m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)} == {0.4}


def test_a_whitened_stem_starts_from_the_photos_and_resumes_exactly(data: Path, tmp_path: Path, monkeypatch) -> None:
    cfg = recipe_config(data, tmp_path / "straight", whiten_stem=True, epochs=2)
    started = {}
    original = tricks.whiten_stem

    def keep(model, source, size):
        original(model, source, size)
        started["weight"] = next(model.parameters()).detach().clone()

    monkeypatch.setattr(train_module, "whiten_stem", keep)
    straight = train(cfg, progress=False, log=quiet).run_dir
    first = started.pop("weight")
    assert torch.allclose(first[1::2], -first[::2]) and first.abs().max() > 1.0  # whitened: not torch's init
    with monkeypatch.context() as patch:
        interrupt_after(patch, STEPS_PER_EPOCH + 2)
        broken = train(dataclasses.replace(cfg, out=str(tmp_path / "broken")), progress=False, log=quiet)
    assert torch.equal(started.pop("weight"), first)  # the same photos, the same start
    train(None, resume=broken.run_dir, progress=False, log=quiet)
    assert not started  # a resume takes its weights from last.pt
    one, two = load_checkpoint(straight / "last.pt"), load_checkpoint(broken.run_dir / "last.pt")
    for key in one["model"]:
        assert torch.equal(one["model"][key], two["model"][key]), key


def test_a_whitened_stem_and_pretrained_weights_are_refused_together(data: Path, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="choose one"):
        train(recipe_config(data, tmp_path / "run", whiten_stem=True, pretrained="cache"), progress=False, log=quiet)
