"""The model registry and the tutorial's three-layer CNN (`cnn3`), returning logits."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
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


def _conv_bn(cin: int, cout: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True)]


class BNCNN(nn.Module):
    """A plain batch-norm CNN built for images/s per accuracy point on CPUs.

    A stride-2 stem, then stages of `depth` 3x3 conv + BN + ReLU layers, each stage halving the
    resolution on its first layer and doubling the width; global average pooling and a linear
    head. No branches or depthwise convolutions: dense 3x3 convolutions are what oneDNN runs
    closest to the machine's matmul rate.
    """

    def __init__(self, num_classes: int, widths: tuple[int, ...] = (24, 48, 96, 192), depth: int = 2,
                 dropout: float = 0.1) -> None:
        super().__init__()
        layers = _conv_bn(3, widths[0], 2)
        for cin, cout in zip(widths[:-1], widths[1:]):
            layers += _conv_bn(cin, cout, 2)
            for _ in range(depth - 1):
                layers += _conv_bn(cout, cout, 1)
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout),
                                  nn.Linear(widths[-1], num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@register_model("bncnn-s", "batch-norm CNN, widths 24-192, 2 convs per stage (656k params): cpu-fast", 32)
def build_bncnn_s(num_classes: int, image_size: int) -> nn.Module:
    return BNCNN(num_classes, (24, 48, 96, 192), depth=2)


@register_model("bncnn-m", "batch-norm CNN, widths 32-256, 3 convs per stage: cpu-best", 32)
def build_bncnn_m(num_classes: int, image_size: int) -> nn.Module:
    return BNCNN(num_classes, (32, 64, 128, 256), depth=3)


@register_model("resnet18", "torchvision ResNet-18, from scratch unless --pretrained", 64)
def build_resnet18(num_classes: int, image_size: int) -> nn.Module:
    from torchvision.models import resnet18

    return resnet18(weights=None, num_classes=num_classes)


@register_model("mobilenet_v3_small", "torchvision MobileNetV3-Small, from scratch unless --pretrained", 64)
def build_mobilenet_v3_small(num_classes: int, image_size: int) -> nn.Module:
    from torchvision.models import mobilenet_v3_small

    return mobilenet_v3_small(weights=None, num_classes=num_classes)


@register_model("efficientnet_b0", "torchvision EfficientNet-B0, from scratch unless --pretrained", 64)
def build_efficientnet_b0(num_classes: int, image_size: int) -> nn.Module:
    from torchvision.models import efficientnet_b0

    return efficientnet_b0(weights=None, num_classes=num_classes)


@register_model("convnext_tiny", "torchvision ConvNeXt-Tiny, from scratch unless --pretrained", 64)
def build_convnext_tiny(num_classes: int, image_size: int) -> nn.Module:
    from torchvision.models import convnext_tiny

    return convnext_tiny(weights=None, num_classes=num_classes)


# Torchvision weights each model can start from, by the file name torchvision caches them under.
PRETRAINED = {"resnet18": "ResNet18_Weights", "mobilenet_v3_small": "MobileNet_V3_Small_Weights",
              "efficientnet_b0": "EfficientNet_B0_Weights", "convnext_tiny": "ConvNeXt_Tiny_Weights"}


def pretrained_file(name: str) -> Path:
    """Where torchvision's cache keeps the ImageNet weights of model `name` (it may be absent)."""
    import torchvision.models as tvm

    if name not in PRETRAINED:
        raise UsageError(f"model {name} has no pretrained weights; --pretrained works with "
                         f"{', '.join(sorted(PRETRAINED))}")
    weights = getattr(tvm, PRETRAINED[name]).DEFAULT
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def head_name(model: nn.Module) -> str:
    """The model's head: its last linear layer, the one sized by the number of classes (fine-tuning trains
    it alone first; pretrained weights leave it fresh when their class count differs)."""
    return next(name for name, module in reversed(list(model.named_modules())) if isinstance(module, nn.Linear))


def load_pretrained(model: nn.Module, name: str, source: str) -> tuple[int, list[str]]:
    """Load ImageNet weights from `source` into `model`: a file, "cache" (torchvision's cache, never
    downloading) or "imagenet" (the cache, downloading the file first when it is not there).

    Layers whose shapes differ (the 1000-class head) keep their fresh weights.
    Returns how many tensors were loaded, and what was left at random besides the head (each
    `NAME (file SHAPE, model SHAPE)`, or `NAME (not in the file)`).
    """
    from catsdogs.errors import CatsdogsError

    if source == "imagenet":
        from catsdogs.training.pretrained import imagenet_weights

        path = imagenet_weights(name)
    else:
        path = pretrained_file(name) if source == "cache" else Path(source)
    if path.is_dir():
        raise CatsdogsError(f"--pretrained {path} is a folder: give the weights file itself (a .pth or .pt)")
    if not path.is_file():
        raise CatsdogsError(f"pretrained weights not found at {path}; download the torchvision weights of {name} "
                            "on a machine with internet and pass the file with --pretrained PATH")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raise CatsdogsError(f"{path} is not a readable weights file") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    own = model.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    if len(fitting) < len(own) // 2:
        raise CatsdogsError(f"{path} does not hold {name} weights ({len(fitting)} of {len(own)} tensors fit)")
    model.load_state_dict(fitting, strict=False)
    head = head_name(model)

    def shape(tensor: torch.Tensor) -> str:
        return "x".join(str(n) for n in tensor.shape)

    missed = [f"{key} (file {shape(state[key])}, model {shape(own[key])})" if key in state
              else f"{key} (not in the file)" for key in own if key not in fitting and not key.startswith(f"{head}.")]
    return len(fitting), missed


def count_flops(model: nn.Module, image_size: int) -> float:
    """Forward FLOPs of one image, counted by torch.utils.flop_counter (a multiply-add is 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    # On the meta device: shapes only, no memory for activations (or weights), however large the image.
    probe = model if all(p.is_meta for p in model.parameters()) else copy.deepcopy(model).to("meta")
    was_training = probe.training
    probe.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        probe(torch.zeros(1, 3, image_size, image_size, device="meta"))
    probe.train(was_training)
    return float(counter.get_total_flops())
