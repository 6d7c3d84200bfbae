"""speed.py: auto's probe times what a run does with each image, and resists one slow window."""

from __future__ import annotations

import pytest
import torch

from catsdogs.training import speed
from catsdogs.training.ema import ModelEMA
from catsdogs.training.hardware import select_precision
from catsdogs.training.speed import Probe

CPU = torch.device("cpu")
FP32 = select_precision("fp32", CPU)


def test_the_median_window_counts_not_the_mean() -> None:
    now = [0.0]
    # Warm-up steps, then three one-second windows: one step of 2 s, two of 0.5 s, one of 4 s.
    costs = iter([9.0, 9.0, 9.0, 2.0, 0.5, 0.5, 4.0])

    def step() -> None:
        now[0] += next(costs)

    per_image = speed._timed(step, CPU, images_per_step=8, seconds=3.0, max_steps=50, repeats=3,
                             clock=lambda: now[0])
    assert per_image == pytest.approx(2.0 / 8)  # the windows' 2/8, 0.5/8 and 4/8; the mean would be 2.17/8


def test_each_epoch_s_validation_is_shared_out_over_its_training_images(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple] = []

    def train(model, size, device, precision, probe, view_size=None):
        calls.append((size, view_size, probe.batch_size, probe.augment, probe.ema, probe.repeats))
        return 1e-3 if view_size else 2e-3

    monkeypatch.setattr(speed, "seconds_per_image", train)
    monkeypatch.setattr(speed, "eval_seconds_per_image", lambda *args, **kwargs: 0.9e-3)
    probe = Probe(batch_size=64, augment="crop", ema=0.998, val_share=0.1, seconds=1.0, repeats=3)
    found = speed.schedule_seconds_per_image("bncnn-s", 64, 48, 0.75, CPU, FP32, probe)
    assert found == pytest.approx(0.75 * 1e-3 + 0.25 * 2e-3 + 0.1 * 0.9e-3)
    assert calls == [(64, None, 64, "crop", 0.998, 3), (64, 48, 64, "crop", 0.998, 3)]
    # Without validation (no val photos) the probe does not time it.
    monkeypatch.setattr(speed, "eval_seconds_per_image", lambda *args, **kwargs: pytest.fail("timed validation"))
    assert speed.schedule_seconds_per_image("bncnn-s", 64, None, 0.75, CPU, FP32,
                                            Probe(batch_size=64)) == pytest.approx(2e-3)


@pytest.mark.parametrize("decay", [0.99, None])
def test_the_probe_updates_the_weight_average_at_every_step_when_the_run_keeps_one(
        monkeypatch: pytest.MonkeyPatch, decay: float | None) -> None:
    updates: list[float] = []

    class Counting(ModelEMA):
        def update(self, model: torch.nn.Module) -> None:
            updates.append(self.decay)
            super().update(model)

    monkeypatch.setattr(speed, "ModelEMA", Counting)
    per_image = speed.seconds_per_image("bncnn-s", 32, CPU, FP32, Probe(4, "crop", ema=decay, seconds=0.0, repeats=1),
                                        max_steps=2)
    assert per_image > 0
    # The warm-up steps, then one timed step (a window of 0 s times one).
    assert updates == ([decay] * (speed.WARMUP_STEPS + 1) if decay else [])
    assert speed.eval_seconds_per_image("bncnn-s", 32, CPU, FP32, seconds=0.0, max_steps=1) > 0
