"""Lookahead: the slow/fast weight arithmetic, shared parameter groups, exact resume, the config keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from catsdogs.errors import CatsdogsError
from catsdogs.training.checkpoint import load_checkpoint
from catsdogs.training.config import build_config
from catsdogs.training.lookahead import Lookahead
from catsdogs.training.train import train
from tests.helpers import RECIPE_SIZE, STEPS_PER_EPOCH, interrupt_after, quiet, recipe_config, split_fixture


data = split_fixture((20, 6, 6), size=RECIPE_SIZE)


def constant_gradient_steps(optimizer: torch.optim.Optimizer, weight: torch.Tensor, steps: int) -> torch.Tensor:
    """The weight after each step on the loss `weight.sum()` (gradient 1), one row a step."""
    seen = []
    for _ in range(steps):
        optimizer.zero_grad()
        weight.sum().backward()
        optimizer.step()
        seen.append(weight.detach().clone())
    return torch.stack(seen)


def test_every_k_steps_the_weights_go_back_alpha_of_the_way_from_the_slow_ones() -> None:
    weight = torch.zeros(1, requires_grad=True)
    optimizer = Lookahead(torch.optim.SGD([weight], lr=1.0), steps=2, alpha=0.5)
    # Fast steps of -1. After step 2 the slow weight (0) moves half way to -2: -1, where the fast one restarts.
    # After step 4: -1 + 0.5 x (-3 - -1) = -2.
    assert constant_gradient_steps(optimizer, weight, 5).flatten().tolist() == [-1.0, -1.0, -2.0, -2.0, -3.0]


def test_alpha_one_is_the_inner_optimizer_alone() -> None:
    plain, wrapped = torch.zeros(3, requires_grad=True), torch.zeros(3, requires_grad=True)
    inner = constant_gradient_steps(torch.optim.Adam([plain], lr=0.1), plain, 6)
    assert torch.equal(constant_gradient_steps(Lookahead(torch.optim.Adam([wrapped], lr=0.1), 3, alpha=1.0), wrapped, 6),
                       inner)


def test_the_groups_are_the_inner_optimizers() -> None:
    weight = torch.zeros(2, requires_grad=True)
    inner = torch.optim.SGD([weight], lr=0.1, momentum=0.9)
    optimizer = Lookahead(inner, steps=5)
    optimizer.param_groups[0]["lr"] = 0.02  # as the training loop's schedule sets it
    assert inner.param_groups[0]["lr"] == 0.02 and isinstance(optimizer, torch.optim.Optimizer)


def test_state_dict_carries_the_slow_weights_so_a_reload_continues_exactly() -> None:
    def fresh(weight: torch.Tensor) -> Lookahead:
        return Lookahead(torch.optim.SGD([weight], lr=0.5, momentum=0.9), steps=3, alpha=0.4)

    straight_weight = torch.zeros(1, requires_grad=True)
    straight = constant_gradient_steps(fresh(straight_weight), straight_weight, 8)
    first_weight = torch.zeros(1, requires_grad=True)
    first = fresh(first_weight)
    before = constant_gradient_steps(first, first_weight, 4)  # stops between two syncs
    saved = first.state_dict()
    assert saved["lookahead"]["count"] == 4 and len(saved["lookahead"]["slow"]) == 1
    second_weight = first_weight.detach().clone().requires_grad_(True)
    second = fresh(second_weight)
    second.load_state_dict(saved)
    after = constant_gradient_steps(second, second_weight, 4)
    assert torch.allclose(torch.cat([before, after]), straight, atol=1e-6)


def test_a_run_with_lookahead_resumed_mid_epoch_equals_a_straight_run(data: Path, tmp_path: Path,
                                                                      monkeypatch) -> None:
    tricks = dict(lookahead_steps=3, lookahead_alpha=0.5, ema=0.9)
    straight = train(recipe_config(data, tmp_path / "straight", **tricks), progress=False, log=quiet).run_dir
    plain = train(recipe_config(data, tmp_path / "plain", ema=0.9), progress=False, log=quiet).run_dir
    with monkeypatch.context() as patch:
        interrupt_after(patch, STEPS_PER_EPOCH + 4)  # one step past a sync
        broken = train(recipe_config(data, tmp_path / "broken", **tricks), progress=False, log=quiet)
    assert broken.status == "interrupted"
    train(None, resume=broken.run_dir, progress=False, log=quiet)
    first, second = load_checkpoint(straight / "last.pt"), load_checkpoint(broken.run_dir / "last.pt")
    for key in first["model"]:
        assert torch.equal(first["model"][key], second["model"][key]), key
    assert first["optimizer"]["lookahead"]["count"] == 4 * STEPS_PER_EPOCH
    other = load_checkpoint(plain / "last.pt")["model"]
    assert any(not torch.equal(first["model"][key], other[key]) for key in other)  # it changed the training


def test_lookahead_keys_are_checked() -> None:
    assert build_config(None, {"lookahead_steps": 0}).lookahead_steps == 0  # off, as for ema
    with pytest.raises(CatsdogsError, match="lookahead_steps must be at least 0"):
        build_config(None, {"lookahead_steps": -1})
    assert build_config(None, {"lookahead_steps": 5}).lookahead_alpha == 0.5
    with pytest.raises(CatsdogsError, match="lookahead_alpha must be at most 1"):
        build_config(None, {"lookahead_alpha": 1.5})
    with pytest.raises(CatsdogsError, match="lookahead_alpha must be above 0"):
        build_config(None, {"lookahead_alpha": 0})
