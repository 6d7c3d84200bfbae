"""Tests for catsdogs.training.optim: the built-in registry, training with every entry, user and plugin entries."""

from __future__ import annotations

import ast
import copy
from typing import Callable

import numpy as np
import pytest
import torch

import catsdogs.training.optim as optim
from catsdogs.data.transforms import eval_preset
from catsdogs.errors import UsageError
from catsdogs.training.models import build_model
from catsdogs.training.optim import (ENTRY_POINT_GROUP, build_optimizer, get_optimizer_spec, list_optimizers,
                                     load_optimizer_plugins, register_optimizer)

SIZE = 96  # cnn3's smallest input: the cheapest real training step
# The built-ins `catsdogs optimizers` documents: the tutorial's four, and two for batch-norm models.
BUILT_INS = ["adam", "adamw", "minibatch-sgd", "momentum", "sgd-nesterov", "vanilla-sgd"]


@pytest.fixture
def registered_names(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names a test registers. The test registers into a copy of the registry, dropped afterwards."""
    monkeypatch.setattr(optim, "OPTIMIZERS", copy.deepcopy(optim.OPTIMIZERS))
    return []


@pytest.fixture(scope="module")
def tiny_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Eight 96px images, reddish cats (label 0) and bluish dogs (label 1), normalised NCHW."""
    rng = np.random.default_rng(0)
    labels = np.array([0, 1] * 4)
    pixels = rng.integers(0, 60, (8, SIZE, SIZE, 3)).astype(np.uint8)
    pixels[labels == 0, ..., 0] += 150
    pixels[labels == 1, ..., 2] += 150
    return eval_preset(SIZE)(torch.from_numpy(pixels)), torch.from_numpy(labels)


def test_the_registry_holds_exactly_the_documented_built_ins() -> None:
    assert list_optimizers() == BUILT_INS


@pytest.mark.parametrize("name", list_optimizers())
def test_every_optimizer_is_built_with_its_own_defaults(name: str) -> None:
    spec = get_optimizer_spec(name)
    built = build_optimizer(name, [torch.nn.Parameter(torch.zeros(2))])
    assert type(built) is spec.cls
    group = built.param_groups[0]
    assert {key: group[key] for key in spec.defaults} == dict(spec.defaults)
    assert isinstance(spec.batch_size, int) and spec.batch_size >= 1


@pytest.mark.parametrize("name", list_optimizers())
def test_the_listing_of_defaults_reads_back_as_the_defaults(name: str) -> None:
    spec = get_optimizer_spec(name)
    listed = dict(item.split("=") for item in spec.describe_defaults().split(", "))
    assert int(listed.pop("batch_size")) == spec.batch_size
    assert {key: ast.literal_eval(value) for key, value in listed.items()} == pytest.approx(dict(spec.defaults),
                                                                                          rel=1e-5)


def test_the_tutorials_four_optimizers_are_what_their_names_say() -> None:
    """What the names mean, not their tuning: which update rule, how many images a step, which momentum."""
    vanilla, minibatch, momentum, adam = map(get_optimizer_spec, ("vanilla-sgd", "minibatch-sgd", "momentum", "adam"))
    assert vanilla.cls is minibatch.cls is momentum.cls is torch.optim.SGD and adam.cls is torch.optim.Adam
    assert vanilla.batch_size == 1 < minibatch.batch_size  # one image a step, against a mini-batch
    assert vanilla.defaults.get("momentum", 0) == 0 and minibatch.defaults.get("momentum", 0) == 0
    assert momentum.defaults["momentum"] > 0 and not momentum.defaults.get("nesterov", False)


def test_the_recipes_optimizers_are_nesterov_sgd_and_decoupled_adamw() -> None:
    nesterov, adamw = get_optimizer_spec("sgd-nesterov"), get_optimizer_spec("adamw")
    assert nesterov.cls is torch.optim.SGD and nesterov.defaults["nesterov"] and nesterov.defaults["momentum"] > 0
    assert adamw.cls is torch.optim.AdamW and adamw.defaults["weight_decay"] > 0


@pytest.mark.parametrize("name", list_optimizers())
def test_every_registered_optimizer_lowers_the_loss_of_cnn3(name: str, tiny_batch) -> None:
    images, labels = tiny_batch
    torch.manual_seed(0)
    model = build_model("cnn3", 2, SIZE)
    optimizer = build_optimizer(name, model.parameters())
    batch_size = min(get_optimizer_spec(name).batch_size, len(labels))
    loss_fn = torch.nn.CrossEntropyLoss()

    def eval_loss() -> float:
        model.eval()
        with torch.no_grad():
            return float(loss_fn(model(images), labels))

    before = eval_loss()
    model.train()
    for _ in range(3):
        for start in range(0, len(labels), batch_size):
            optimizer.zero_grad()
            loss_fn(model(images[start:start + batch_size]), labels[start:start + batch_size]).backward()
            optimizer.step()
    after = eval_loss()
    assert after < before - 1e-3, f"{name}: loss {before:.4f} -> {after:.4f}"


def test_overrides_replace_defaults_and_none_keeps_them() -> None:
    params = [torch.nn.Parameter(torch.zeros(2))]
    built = build_optimizer("momentum", params, lr=0.5, momentum=None, weight_decay=1e-4)
    group = built.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (
        0.5, get_optimizer_spec("momentum").defaults["momentum"], 1e-4)


def test_an_argument_the_class_does_not_take_is_named() -> None:
    with pytest.raises(UsageError, match=r"optimizer adam does not take momentum \(it takes: lr, betas"):
        build_optimizer("adam", [torch.nn.Parameter(torch.zeros(2))], momentum=0.9)


def test_unknown_optimizer_lists_the_choices() -> None:
    with pytest.raises(UsageError, match=f"unknown optimizer 'lion'; choose one of: {', '.join(BUILT_INS)}$"):
        build_optimizer("lion", [torch.nn.Parameter(torch.zeros(2))])


def test_a_user_registered_optimizer_works(registered_names: list[str]) -> None:
    registered_names.append("test-rmsprop")

    @register_optimizer("test-rmsprop", "RMSprop, registered by a test", {"lr": 0.02, "alpha": 0.9}, batch_size=16)
    class TestRMSprop(torch.optim.RMSprop):
        pass

    assert "test-rmsprop" in list_optimizers()
    spec = get_optimizer_spec("test-rmsprop")
    assert (spec.cls, spec.batch_size, spec.description) == (TestRMSprop, 16, "RMSprop, registered by a test")
    built = build_optimizer("test-rmsprop", [torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    assert isinstance(built, TestRMSprop)
    assert (built.param_groups[0]["lr"], built.param_groups[0]["alpha"]) == (0.1, 0.9)


def test_a_duplicate_optimizer_name_raises() -> None:
    before = get_optimizer_spec("adam")
    with pytest.raises(ValueError, match="optimizer 'adam' is already registered"):
        register_optimizer("adam", "an impostor")(torch.optim.SGD)
    assert get_optimizer_spec("adam") is before


class FakeEntryPoint:
    """Stands in for importlib.metadata.EntryPoint: `load()` runs the given function."""

    def __init__(self, name: str, load: Callable[[], object]) -> None:
        self.name, self.value, self._load = name, f"fake_plugin:{name}", load
        self.loads = 0

    def load(self) -> object:
        self.loads += 1
        return self._load()


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Install fake entry points for the optimizer group and forget earlier plugin loading."""

    def install(*entries: FakeEntryPoint) -> None:
        monkeypatch.setattr(optim, "entry_points",
                            lambda group: list(entries) if group == ENTRY_POINT_GROUP else [])

    monkeypatch.setattr(optim, "_plugins_loaded", False)
    return install


def test_a_plugin_function_registers_its_optimizer(plugins, registered_names: list[str]) -> None:
    registered_names.append("plugin-adagrad")

    def register_all() -> None:
        register_optimizer("plugin-adagrad", "Adagrad from a plugin", {"lr": 0.05})(torch.optim.Adagrad)

    entry = FakeEntryPoint("adagrad", lambda: register_all)  # the entry point names a function
    plugins(entry)
    assert load_optimizer_plugins() == []
    assert "plugin-adagrad" in list_optimizers()
    assert type(build_optimizer("plugin-adagrad", [torch.nn.Parameter(torch.zeros(2))])) is torch.optim.Adagrad
    # Loading happens once per process, not once per call.
    assert load_optimizer_plugins() == []
    assert entry.loads == 1


def test_a_plugin_class_registered_on_import_is_not_called(plugins, registered_names: list[str]) -> None:
    registered_names.append("plugin-adamw")

    def import_module() -> type:
        return register_optimizer("plugin-adamw", "AdamW from a plugin")(torch.optim.AdamW)

    plugins(FakeEntryPoint("adamw", import_module))  # the entry point names the decorated class
    assert load_optimizer_plugins() == []
    assert get_optimizer_spec("plugin-adamw").cls is torch.optim.AdamW


def test_a_broken_plugin_warns_and_the_others_still_load(plugins, registered_names: list[str], capsys) -> None:
    registered_names.append("plugin-asgd")

    def broken() -> object:
        raise ImportError("No module named 'lion_pytorch'")

    good = FakeEntryPoint("asgd", lambda: register_optimizer("plugin-asgd", "ASGD")(torch.optim.ASGD))
    plugins(FakeEntryPoint("lion", broken), good)
    problems = load_optimizer_plugins()
    assert len(problems) == 1
    assert "'lion'" in problems[0] and "No module named 'lion_pytorch'" in problems[0]
    assert f"warning: {problems[0]}" in capsys.readouterr().err
    assert "plugin-asgd" in list_optimizers()


def test_a_plugin_whose_function_raises_warns(plugins, capsys) -> None:
    def register_all() -> None:
        raise RuntimeError("needs torch 9")

    plugins(FakeEntryPoint("future", lambda: register_all))
    problems = load_optimizer_plugins()
    assert len(problems) == 1 and "needs torch 9" in problems[0]
    assert "needs torch 9" in capsys.readouterr().err
    assert list_optimizers() == BUILT_INS


def test_the_readme_import_path_still_registers_into_the_one_registry() -> None:
    """The README's plugin example imports `catsdogs.optim`, an alias of `catsdogs.training.optim`."""
    import catsdogs.optim as alias

    assert alias.register_optimizer is optim.register_optimizer and alias.OPTIMIZERS is optim.OPTIMIZERS
    assert alias.ENTRY_POINT_GROUP == "catsdogs.optimizers"
