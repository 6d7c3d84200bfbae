"""Tests for catsdogs.training.models: the registry and the tutorial's cnn3, which returns logits."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import catsdogs.training.models as models
from catsdogs.errors import UsageError
from catsdogs.training.models import CNN3, MODELS, build_model, count_parameters, list_models, register_model


@pytest.fixture
def registered_names(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names a test registers. The test registers into a copy of the registry, dropped afterwards."""
    monkeypatch.setattr(models, "MODELS", copy.deepcopy(models.MODELS))
    return []


def linear_layers(model: nn.Module) -> list[nn.Linear]:
    return [m for m in model.modules() if isinstance(m, nn.Linear)]


def test_cnn3_is_registered() -> None:
    assert "cnn3" in list_models()
    assert list_models() == sorted(list_models())


def test_cnn3_at_224_flattens_3x3x128_into_a_10_unit_layer() -> None:
    model = build_model("cnn3", 2, 224)
    first, last = linear_layers(model)
    assert (first.in_features, first.out_features) == (3 * 3 * 128, 10)
    assert (last.in_features, last.out_features) == (10, 2)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (32, (3, 3), (2, 2)), (64, (3, 3), (2, 2)), (128, (3, 3), (2, 2))]


def test_cnn3_parameter_count_at_224() -> None:
    # conv 896 + 18496 + 73856, dense 1152*10+10 = 11530, head 10*2+2 = 22
    assert count_parameters(build_model("cnn3", 2, 224)) == 104_800


@pytest.mark.parametrize("size", [96, 128, 150, 224])
def test_cnn3_takes_any_size_from_96(size: int) -> None:
    torch.manual_seed(0)
    model = build_model("cnn3", 2, size).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 3, size, size))
    assert out.shape == (3, 2)
    assert out.dtype == torch.float32


def test_cnn3_has_one_output_per_class() -> None:
    model = build_model("cnn3", 5, 96).eval()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 96, 96)).shape == (2, 5)


def test_cnn3_returns_raw_logits_without_sigmoid_or_softmax() -> None:
    model = build_model("cnn3", 2, 96).eval()
    head = linear_layers(model)[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([-2.0, 3.0]))
        out = model(torch.randn(4, 3, 96, 96))
    # The head's bias passes straight through: a sigmoid would give 0.12/0.95, a softmax 0.007/0.993.
    assert torch.equal(out, torch.tensor([[-2.0, 3.0]] * 4))
    assert not any(isinstance(m, (nn.Sigmoid, nn.Softmax, nn.LogSoftmax)) for m in model.modules())


@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_returns_one_logit_per_class(name: str) -> None:
    size = max(MODELS.get(name).min_image_size, 64)
    torch.manual_seed(0)
    model = build_model(name, 3, size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, size, size))
    assert out.shape == (2, 3) and torch.isfinite(out).all()


def test_cnn3_refuses_95_naming_the_minimum_96() -> None:
    with pytest.raises(UsageError) as info:
        build_model("cnn3", 2, 95)
    assert "96" in str(info.value) and "95" in str(info.value)


def test_a_classifier_needs_two_classes() -> None:
    with pytest.raises(UsageError, match="at least 2 classes, got 1"):
        build_model("cnn3", 1, 96)


def test_unknown_model_lists_the_choices() -> None:
    with pytest.raises(UsageError, match="unknown model 'resnet9'; choose one of: .*cnn3"):
        build_model("resnet9", 2, 224)


def test_registering_a_model_makes_it_buildable(registered_names: list[str]) -> None:
    registered_names.append("tiny-test-net")

    @register_model("tiny-test-net", "a linear layer for tests", min_image_size=8)
    def build_tiny(num_classes: int, image_size: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * image_size * image_size, num_classes))

    assert "tiny-test-net" in list_models()
    model = build_model("tiny-test-net", 3, 8)
    assert model(torch.zeros(1, 3, 8, 8)).shape == (1, 3)
    with pytest.raises(UsageError, match="at least 8, got 7"):
        build_model("tiny-test-net", 3, 7)


def test_a_duplicate_model_name_raises() -> None:
    before = MODELS.get("cnn3")
    with pytest.raises(ValueError, match="model 'cnn3' is already registered"):
        register_model("cnn3", "an impostor")(lambda num_classes, image_size: nn.Identity())
    assert MODELS.get("cnn3") is before


def test_cnn3_is_the_cnn3_class() -> None:
    assert isinstance(build_model("cnn3", 2, 96), CNN3)
