"""Beyond cnn3: every model, augmentations, EMA, TTA, time budgets and the recipe files."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch.utils.flop_counter import FlopCounterMode

from catsdogs.data.transforms import AUGMENTS, list_augments, train_preset
from catsdogs.errors import CatsdogsError, UsageError
from catsdogs.inference.evaluate import evaluate_run
from catsdogs.training import loop as loop_module
from catsdogs.training.checkpoint import load_checkpoint
from catsdogs.training.config import build_config, read_yaml_overrides
from catsdogs.training.ema import ModelEMA
from catsdogs.training.loop import Hooks
from catsdogs.training.models import MODELS, build_model, count_flops, list_models, load_pretrained
from catsdogs.training.optim import get_optimizer_spec, parameter_groups
from catsdogs.training.train import train
from tests.helpers import quiet, split_fixture

ROOT = Path(__file__).resolve().parents[1]
# finetune downloads ImageNet weights: tests/training/test_pretrained.py trains it from a local file instead.
# auto chooses its model and sizes when it starts: tests/training/test_auto.py trains it.
RECIPES = sorted(p for p in (ROOT / "configs" / "recipes").glob("*.yaml") if p.stem not in ("finetune", "auto"))


@pytest.mark.parametrize("name", list_models())
def test_every_model_trains_at_its_minimum_size_and_counts_its_flops(name: str) -> None:
    size = MODELS.get(name).min_image_size
    torch.manual_seed(0)
    model = build_model(name, 2, size)
    images = torch.randn(2, 3, size, size)
    logits = model(images)
    assert logits.shape == (2, 2)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1])).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, 3, size, size))
    assert count_flops(model, size) == pytest.approx(counter.get_total_flops())
    assert count_flops(model, size) > 0


def test_count_flops_matches_a_count_by_hand() -> None:
    # count_flops follows torch's FlopCounterMode: a multiply-add is 2 FLOPs, and only convolutions and matrix
    # products count (not biases, ReLU, pooling or batch norm). A conv: 2 * Cin * Cout * k * k * Hout * Wout;
    # a linear layer: 2 * in * out.
    # Conv2d(3, 4, 3, stride 2, padding 1) on 8 x 8: Hout = (8 + 2 - 3) // 2 + 1 = 4, 2 * 3 * 4 * 9 * 16 = 3456;
    # Linear(4 * 4 * 4 = 64, 2): 2 * 64 * 2 = 256. In all 3712.
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, stride=2, padding=1), torch.nn.BatchNorm2d(4),
                                torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.Linear(64, 2))
    assert count_flops(model, 8) == 3712
    # cnn3 at 96 px: three conv 3x3 stride 2 (no padding) + max-pool 2 blocks, 32-64-128 channels, then 128-10-2.
    #   conv 3->32:   96 -> (96 - 3) // 2 + 1 = 47, pool -> 23: 2 * 3 * 32 * 9 * 47 * 47 = 3,817,152
    #   conv 32->64:  23 -> 11, pool -> 5:                    2 * 32 * 64 * 9 * 11 * 11 = 4,460,544
    #   conv 64->128: 5 -> 2, pool -> 1:                      2 * 64 * 128 * 9 * 2 * 2 =   589,824
    #   linear 128->10: 2,560; linear 10->2: 40.              In all                     8,870,120
    assert count_flops(build_model("cnn3", 2, 96), 96) == 8_870_120


def test_bncnn_s_is_the_probe_model() -> None:
    model = build_model("bncnn-s", 2, 128)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(656_000, rel=0.01)
    assert 3 * count_flops(model, 128) / 1e9 == pytest.approx(0.58, rel=0.03)


@pytest.mark.parametrize("name", list_augments())
def test_every_augmentation_keeps_shape_and_range_and_differs_per_image(name: str) -> None:
    base = torch.from_numpy(np.tile(np.linspace(0, 255, 32, dtype=np.uint8), (32, 1)))
    batch = torch.stack([base, base.T, base.flip(0)], dim=-1).unsqueeze(0).repeat(6, 1, 1, 1).contiguous()
    preset = train_preset(32, hflip=0.0, augment=name)
    out = preset(batch, torch.Generator().manual_seed(1))
    assert out.shape == (6, 3, 32, 32) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    raw = AUGMENTS.get(name)(batch.permute(0, 3, 1, 2), torch.Generator().manual_seed(1)).float()
    assert raw.min() >= 0 and raw.max() <= 255
    if name != "flip":
        assert any(not torch.equal(raw[0], raw[i]) for i in range(1, 6)), "each image gets its own draw"


def test_weight_decay_skips_biases_and_norm_weights() -> None:
    model = build_model("bncnn-s", 2, 64)
    decay, no_decay = parameter_groups(model, 5e-4)
    assert decay["weight_decay"] == 5e-4 and no_decay["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decay["params"]) and all(p.ndim == 1 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))
    assert len(parameter_groups(model, None)) == 1


def test_ema_follows_the_weights_with_a_lag() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    ema = ModelEMA(model, 0.9)
    start = model.weight.detach().clone()
    for _ in range(20):
        with torch.no_grad():
            model.weight.add_(1.0)
        ema.update(model)
    averaged = ema.module.weight
    assert torch.all(averaged > start) and torch.all(averaged < model.weight)
    with pytest.raises(ValueError):
        ModelEMA(model, 1.0)


data = split_fixture((16, 4, 4), size=48)


def test_ema_weights_are_saved_as_the_model(data: Path, tmp_path: Path) -> None:
    cfg = build_config(None, dict(data=str(data), out=str(tmp_path / "run"), optim="sgd-nesterov", model="bncnn-s",
                                  image_size=32, epochs=2, batch_size=8, ema=0.9, device="cpu", precision="fp32"))
    run = train(cfg, progress=False, log=quiet).run_dir
    last = load_checkpoint(run / "last.pt")
    assert set(last["model"]) == set(last["raw_model"])
    differs = [k for k in last["model"] if last["model"][k].is_floating_point()
               and not torch.equal(last["model"][k], last["raw_model"][k])]
    assert differs, "the average must differ from the raw weights"
    assert last["ema"]["updates"] == 8
    # Resuming continues from the raw weights and the average, exactly as a straight run.
    straight = train(build_config(None, {**cfg.to_dict(), "out": str(tmp_path / "straight"), "epochs": 3}),
                     progress=False, log=quiet).run_dir
    train(None, resume=run, flags={"epochs": 3}, progress=False, log=quiet)
    a, b = load_checkpoint(run / "last.pt"), load_checkpoint(straight / "last.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]) and torch.equal(a["raw_model"][key], b["raw_model"][key])


def test_tta_only_averages_the_mirror_prediction(data: Path, tmp_path: Path) -> None:
    cfg = build_config(None, dict(data=str(data), out=str(tmp_path / "run"), optim="adam", image_size=96, epochs=1,
                                  batch_size=8, device="cpu", precision="fp32"))
    run = train(cfg, progress=False, log=quiet).run_dir
    # Lossless test photos at the model's size: evaluating their mirror images on disk then feeds the model
    # exactly the tensors TTA makes by flipping, so the average can be checked to the CSV's 6 decimals.
    from PIL import Image

    for path in sorted((data / "test").rglob("*.jpg")):
        Image.open(path).convert("RGB").resize((96, 96)).save(path.with_suffix(".png"))
        path.unlink()
    plain = evaluate_run(run, progress=False)
    tta = evaluate_run(run, progress=False, tta=True)
    assert tta.metrics_path.name == "metrics_tta.json" and plain.metrics_path.name == "metrics.json"
    assert json.loads(tta.metrics_path.read_text())["tta"] is True

    def probs(path: Path) -> np.ndarray:
        rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
        return np.asarray([[float(x) for x in row[3:]] for row in rows])

    p_plain, p_tta = probs(plain.predictions_path), probs(tta.predictions_path)
    for path in sorted((data / "test").rglob("*.png")):
        Image.open(path).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(path)
    mirrored = probs(evaluate_run(run, progress=False, split="test").predictions_path)
    assert not np.allclose(p_plain, mirrored, atol=1e-4)  # the mirror images were read, not a stale cache
    # Each of the three is rounded to 6 decimals in predictions.csv: 0.5e-6 + (0.5e-6 + 0.5e-6) / 2 at most.
    assert p_tta == pytest.approx((p_plain + mirrored) / 2, abs=1.5e-6)
    assert not np.allclose(p_plain, p_tta, atol=1e-4)


class SteppedClock:
    """The training loop's clock, advanced by exactly one second per training step and by nothing else."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now

    def monotonic(self) -> float:  # the signal handler's clock stays real
        return time.monotonic()


def test_time_budget_stops_at_the_first_step_past_it(data: Path, tmp_path: Path, monkeypatch) -> None:
    clock = SteppedClock()
    monkeypatch.setattr(loop_module, "time", clock)

    def step(progress):  # each step takes a second of the clock
        clock.now += 1.0

    budget_minutes = 0.05  # three seconds: three steps of the clock above
    cfg = build_config(None, dict(data=str(data), out=str(tmp_path / "run"), optim="adam", image_size=96,
                                  epochs=1000, batch_size=2, time_budget=budget_minutes, scheduler="onecycle",
                                  device="cpu", precision="fp32"))
    lines: list[str] = []
    result = train(cfg, progress=False, log=lines.append, hooks=Hooks(after_step=[step]))
    assert (result.status, result.epochs_done) == ("time-budget", 1)
    steps = len(list((data / "train").rglob("*.jpg"))) // 2  # batch 2
    assert ("time budget of 0.05 min reached after 3 steps; epoch 1 stopped after 3 of its "
            f"{steps} steps, and its row in history.csv covers those") in lines
    status = json.loads((result.run_dir / "status.json").read_text())
    assert status["status"] == "time-budget"
    (row,) = list(csv.DictReader((result.run_dir / "history.csv").open()))
    assert float(row["seconds"]) == budget_minutes * 60  # the step that reached the budget was the last
    again: list[str] = []  # more epochs do not extend it: the schedule has ended, and the advice says so
    assert train(None, resume=result.run_dir, flags={"epochs": 2000}, progress=False,
                 log=again.append).status == "nothing-to-do"
    assert again[-1].endswith("start a new run with a larger --time-budget)")
    for budget in (5.0, 0.0):  # a changed budget would restart the ended schedule
        assert train(None, resume=result.run_dir, flags={"time_budget": budget}, progress=False,
                     log=quiet).status == "nothing-to-do"
    assert yaml.safe_load((result.run_dir / "config.yaml").read_text())["time_budget"] == budget_minutes


def test_ema_0_from_a_flag_trains_without_an_average(data: Path, tmp_path: Path) -> None:
    recipe = Path(__file__).resolve().parents[1] / "configs" / "recipes" / "cpu-fast.yaml"
    cfg = build_config(recipe, dict(data=str(data), out=str(tmp_path / "run"), epochs=1, image_size=32,
                                    batch_size=8, device="cpu", ema=0.0, time_budget=0.0, progressive_size=0))
    result = train(cfg, progress=False, log=quiet)
    last = load_checkpoint(result.run_dir / "last.pt")
    assert "raw_model" not in last and "ema" not in last and result.status == "finished"


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_trains_with_the_settings_its_file_gives(recipe: Path, data: Path, tmp_path: Path) -> None:
    given = read_yaml_overrides(recipe)
    size = max(64, MODELS.get(given["model"]).min_image_size)  # small and fast, as far as the model allows
    smaller = {"progressive_size": size // 2} if given.get("progressive_size") else {}
    flags = dict(data=str(data), out=str(tmp_path / "run"), epochs=1, image_size=size, batch_size=8, device="cpu",
                 time_budget=1.0, **smaller)
    cfg = build_config(recipe, flags)
    from_file = {key: value for key, value in given.items() if key not in flags}
    assert from_file and {key: getattr(cfg, key) for key in from_file} == from_file
    result = train(cfg, progress=False, log=quiet)
    assert result.epochs_done == 1
    expected = cfg.to_dict()  # what the run resolved: the file and flags, then the optimizer's defaults
    for key in ("lr", "momentum", "weight_decay"):
        if expected[key] is None:
            expected[key] = get_optimizer_spec(cfg.optim).defaults.get(key)
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert saved == expected
    assert load_checkpoint(result.run_dir / "best.pt")["config"] == saved


def test_pretrained_weights_load_from_a_file_and_never_download(tmp_path: Path, monkeypatch) -> None:
    source = build_model("resnet18", 1000, 64)
    weights = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), weights)
    target = build_model("resnet18", 2, 64)
    loaded, missed = load_pretrained(target, "resnet18", str(weights))
    assert loaded == len(target.state_dict()) - 2 and missed == []  # all but the 1000-class head
    assert torch.equal(target.conv1.weight, source.conv1.weight)
    state = source.state_dict()
    state["conv1.weight"] = state["conv1.weight"][:, :1]  # weights for grey photos: one input channel
    del state["layer1.0.bn1.running_mean"]
    torch.save(state, weights)
    fresh = build_model("resnet18", 2, 64)
    loaded, missed = load_pretrained(fresh, "resnet18", str(weights))
    assert loaded == len(fresh.state_dict()) - 4
    assert missed == ["conv1.weight (file 64x1x7x7, model 64x3x7x7)", "layer1.0.bn1.running_mean (not in the file)"]
    with pytest.raises(CatsdogsError, match=r"--pretrained .* is a folder: give the weights file itself"):
        load_pretrained(target, "resnet18", str(tmp_path))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    with pytest.raises(CatsdogsError, match="pretrained weights not found at .*resnet18-.*pth"):
        load_pretrained(target, "resnet18", "cache")
    with pytest.raises(UsageError, match="cnn3 has no pretrained weights"):
        load_pretrained(build_model("cnn3", 2, 96), "cnn3", "cache")


@pytest.mark.parametrize("classes", [1000, 2])
def test_the_pretrained_line_says_whether_the_head_starts_fresh(data: Path, tmp_path: Path, classes: int) -> None:
    weights = tmp_path / "weights.pth"
    torch.save(build_model("mobilenet_v3_small", classes, 64).state_dict(), weights)
    lines: list[str] = []
    cfg = build_config(None, dict(data=str(data), out=str(tmp_path / "run"), optim="adam", model="mobilenet_v3_small",
                                  pretrained=str(weights), image_size=64, epochs=1, batch_size=8, device="cpu"))
    train(cfg, progress=False, log=lines.append)
    (line,) = [line for line in lines if line.startswith("loaded ")]
    total = len(build_model("mobilenet_v3_small", 2, 64).state_dict())
    if classes == 1000:  # torchvision's ImageNet head does not fit two classes
        assert line == f"loaded {total - 2} pretrained tensors into mobilenet_v3_small (its 2-class head starts fresh)"
    else:  # a two-class model's weights: all of them, head included
        assert line == f"loaded {total} pretrained tensors into mobilenet_v3_small"


def test_missing_pretrained_weights_are_told_before_the_cache_is_built(data: Path, tmp_path: Path,
                                                                         monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))
    cfg = build_config(None, dict(data=str(data), out=str(tmp_path / "run"), optim="adam", model="resnet18",
                                  pretrained="cache", image_size=72, device="cpu"))
    with pytest.raises(CatsdogsError, match="pretrained weights not found"):
        train(cfg, progress=False, log=quiet)
    assert not list(data.glob(".cache/*72*")) and not (tmp_path / "run").exists()
