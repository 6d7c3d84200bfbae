"""An exponential moving average of a model's weights: the steadier model to validate and keep."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn


class ModelEMA:
    """Keeps `decay`-weighted running averages of every float tensor in a model's state.

    The effective decay starts low, min(decay, (1 + n) / (10 + n)) after n updates, so the
    average follows the fast early changes instead of clinging to the random initial weights
    (as in timm's ModelEmaV2 and TensorFlow's ExponentialMovingAverage with num_updates).
    """

    def __init__(self, model: nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema decay must be between 0 and 1, got {decay}")
        self.module = copy.deepcopy(model).eval()
        for parameter in self.module.parameters():
            parameter.requires_grad_(False)
        self.decay = decay
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        current = model.state_dict()
        averages, values = [], []
        for name, average in self.module.state_dict().items():
            value = current[name].detach()
            if average.dtype.is_floating_point:
                averages.append(average)
                values.append(value)
            else:
                average.copy_(value)  # counters such as BatchNorm's num_batches_tracked
        # One multi-tensor call instead of a lerp per tensor: fewer kernel launches and Python steps.
        torch._foreach_lerp_(averages, values, 1.0 - decay)

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates}

    def load_state_dict(self, state: dict[str, Any], weights: dict[str, torch.Tensor]) -> None:
        self.updates = int(state["updates"])
        self.module.load_state_dict(weights)
