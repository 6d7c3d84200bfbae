"""The optimizer registry: each entry is a small record with its torch class and its defaults."""

from __future__ import annotations

import inspect
import sys
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from typing import Any, Callable, Iterable, Mapping

import torch

from catsdogs.errors import UsageError
from catsdogs.registry import Registry
from catsdogs.training.tricks import bn_bias_ids

ENTRY_POINT_GROUP = "catsdogs.optimizers"


@dataclass(frozen=True)
class OptimizerSpec:
    """A registered optimizer: the class, what it is, its default hyperparameters and batch size."""

    name: str
    cls: type[torch.optim.Optimizer]
    description: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    batch_size: int = 100

    def describe_defaults(self) -> str:
        items = [f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}"
                 for key, value in self.defaults.items()]
        return ", ".join([*items, f"batch_size={self.batch_size}"])


OPTIMIZERS: Registry[OptimizerSpec] = Registry("optimizer")


def register_optimizer(name: str, description: str, defaults: Mapping[str, Any] | None = None,
                       batch_size: int = 100) -> Callable[[type], type]:
    """Decorator on an optimizer class: `@register_optimizer("lion", "...", {"lr": 1e-4})`."""

    def decorate(cls: type) -> type:
        OPTIMIZERS.add(name, OptimizerSpec(name, cls, description, dict(defaults or {}), batch_size))
        return cls

    return decorate


def list_optimizers() -> list[str]:
    return OPTIMIZERS.names()


def get_optimizer_spec(name: str) -> OptimizerSpec:
    return OPTIMIZERS.get(name)


def build_optimizer(name: str, params: Iterable[torch.nn.Parameter] | Iterable[dict],
                    **overrides: Any) -> torch.optim.Optimizer:
    """Build optimizer `name` with its defaults, overridden by every non-None keyword."""
    spec = OPTIMIZERS.get(name)
    kwargs = {**spec.defaults, **{k: v for k, v in overrides.items() if v is not None}}
    accepted = inspect.signature(spec.cls.__init__).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    for key in kwargs:
        if key not in accepted and not takes_any:
            raise UsageError(f"optimizer {name} does not take {key} (it takes: "
                             f"{', '.join(k for k in accepted if k not in ('self', 'params'))})")
    return spec.cls(params, **kwargs)


register_optimizer("vanilla-sgd", "SGD on one sample per step, no momentum (the tutorial's vanilla SGD)",
                   {"lr": 0.001, "momentum": 0.0}, batch_size=1)(torch.optim.SGD)
register_optimizer("minibatch-sgd", "SGD on mini-batches, no momentum",
                   {"lr": 0.01, "momentum": 0.0}, batch_size=100)(torch.optim.SGD)
register_optimizer("momentum", "SGD on mini-batches with momentum 0.9",
                   {"lr": 0.01, "momentum": 0.9}, batch_size=100)(torch.optim.SGD)
register_optimizer("adam", "Adam on mini-batches", {"lr": 0.001}, batch_size=100)(torch.optim.Adam)
register_optimizer("sgd-nesterov", "SGD with Nesterov momentum 0.9 (for batch-norm models and one-cycle)",
                   {"lr": 0.1, "momentum": 0.9, "nesterov": True}, batch_size=64)(torch.optim.SGD)
register_optimizer("adamw", "AdamW: Adam with decoupled weight decay",
                   {"lr": 0.001, "weight_decay": 0.05}, batch_size=64)(torch.optim.AdamW)


def parameter_groups(model: torch.nn.Module, weight_decay: float | None, head: str | None = None,
                     body_lr_scale: float = 1.0, bn_bias_lr_scale: float = 1.0) -> list[dict[str, Any]]:
    """Weight decay for weights of convolutions and linear layers only, not biases or norm scales.

    Decaying a bias or a batch-norm scale only fights the normalisation; this is the common
    practice of timm and the torchvision references. With a `body_lr_scale` other than 1, the
    parameters outside module `head` get groups of their own, after the head's, marked with
    `lr_scale`: the training loop gives them that fraction of the learning rate. With a
    `bn_bias_lr_scale` other than 1, the batch-norm biases of each part get a group of their own
    too, last, their `lr_scale` multiplied by it (airbench's scaled biases).
    """
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if head is None or body_lr_scale == 1.0:
        parts = [(1.0, [p for _, p in named])]
    else:
        in_head = [name == head or name.startswith(f"{head}.") for name, _ in named]
        parts = [(1.0, [p for (_, p), h in zip(named, in_head) if h]),
                 (body_lr_scale, [p for (_, p), h in zip(named, in_head) if not h])]
    if bn_bias_lr_scale != 1.0:
        biases = bn_bias_ids(model)
        parts = [(scale, [p for p in params if id(p) not in biases]) for scale, params in parts] + \
                [(scale * bn_bias_lr_scale, [p for p in params if id(p) in biases]) for scale, params in parts]
    groups: list[dict[str, Any]] = []
    for scale, params in parts:
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        marks = {} if scale == 1.0 else {"lr_scale": scale}
        if not weight_decay:
            groups.append({"params": decay + no_decay, **marks})
        else:
            groups += [{"params": decay, "weight_decay": weight_decay, **marks},
                       {"params": no_decay, "weight_decay": 0.0, **marks}]
    return groups

_plugins_loaded = False


def load_optimizer_plugins() -> list[str]:
    """Import every `catsdogs.optimizers` entry point once; return warnings for broken ones."""
    global _plugins_loaded
    if _plugins_loaded:
        return []
    _plugins_loaded = True
    problems = []
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        try:
            loaded = entry.load()
            if callable(loaded) and not isinstance(loaded, type):
                loaded()  # an entry point may name a function that registers its optimizers
        except Exception as exc:  # a broken plugin must not take the whole tool down
            problems.append(f"optimizer plugin {entry.name!r} ({entry.value}) failed to load: {exc}")
    for line in problems:
        print(f"warning: {line}", file=sys.stderr)
    return problems
