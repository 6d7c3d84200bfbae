"""The model registry and the tutorial's three-layer CNN (`cnn3`), returning logits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from catsdogs.errors import UsageError
from catsdogs.registry import Registry

ModelBuilder = Callable[[int, int], nn.Module]


@dataclass(frozen=True)
class ModelSpec:
    """A registered architecture: `build(num_classes, image_size)` returns an nn.Module."""

    name: str
    build: ModelBuilder
    description: str
    min_image_size: int


MODELS: Registry[ModelSpec] = Registry("model")


def register_model(name: str, description: str, min_image_size: int = 32) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator: register `builder(num_classes, image_size) -> nn.Module` under `name`."""

    def decorate(builder: ModelBuilder) -> ModelBuilder:
        MODELS.add(name, ModelSpec(name, builder, description, min_image_size))
        return builder

    return decorate


def list_models() -> list[str]:
    return MODELS.names()


def build_model(name: str, num_classes: int, image_size: int) -> nn.Module:
    """Build a registered model, refusing image sizes it cannot take."""
    spec = MODELS.get(name)
    if image_size < spec.min_image_size:
        raise UsageError(f"model {name} needs an image size of at least {spec.min_image_size}, got {image_size}")
    if num_classes < 2:
        raise UsageError(f"a classifier needs at least 2 classes, got {num_classes}")
    return spec.build(num_classes, image_size)


class CNN3(nn.Module):
    """The tutorial's network: three strided conv + ReLU + max-pool blocks, then a 10-unit head."""

    def __init__(self, num_classes: int, image_size: int, widths: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = 3
        for width in widths:
            layers += [nn.Conv2d(channels, width, kernel_size=3, stride=2), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            flat = self.features(torch.zeros(1, 3, image_size, image_size)).numel()
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(flat, 10),
            nn.ReLU(inplace=True),
            nn.Dropout(0.5),
            nn.Linear(10, num_classes),  # logits: the loss is cross-entropy, so no sigmoid here
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@register_model("cnn3", "the tutorial's 3-block CNN (32-64-128 channels, 10-unit head)", min_image_size=96)
def build_cnn3(num_classes: int, image_size: int) -> nn.Module:
    return CNN3(num_classes, image_size)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
