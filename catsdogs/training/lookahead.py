"""Lookahead (Zhang et al., 2019): fast weights from any optimizer, pulled back to slow ones every k steps."""

from __future__ import annotations

from typing import Any, Callable

import torch


class Lookahead(torch.optim.Optimizer):
    """Wraps an optimizer. Every `steps` of its steps, the slow weights move `alpha` of the way to the
    fast weights (the model's), and the fast weights start again from there. The slow weights start
    as the model's weights before the first step.

    It shares the inner optimizer's parameter groups, so a schedule that sets their learning rates
    and a gradient scaler see one set of groups. Its state_dict is the inner optimizer's with a
    "lookahead" entry (the slow weights and the step count): what a checkpoint saves, so that a
    resumed run continues exactly.
    """

    def __init__(self, inner: torch.optim.Optimizer, steps: int, alpha: float = 0.5) -> None:
        if steps < 1:
            raise ValueError(f"lookahead steps must be at least 1, got {steps}")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"lookahead alpha must be above 0 and at most 1, got {alpha}")
        # No Optimizer.__init__: the groups, their defaults and the per-parameter state are the inner one's.
        self.inner, self.steps, self.alpha = inner, steps, alpha
        self.count = 0
        self.slow: list[torch.Tensor] | None = None

    @property
    def param_groups(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return self.inner.param_groups

    @property
    def defaults(self) -> dict[str, Any]:  # type: ignore[override]
        return self.inner.defaults

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.inner.state

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.inner.param_groups for p in group["params"]]

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> Any:  # type: ignore[override]
        if self.slow is None:
            self.slow = [p.detach().clone() for p in self._params()]
        loss = self.inner.step(closure)
        self.count += 1
        if self.count % self.steps == 0:
            fast = self._params()
            torch._foreach_lerp_(self.slow, fast, self.alpha)  # slow += alpha x (fast - slow)
            torch._foreach_copy_(fast, self.slow)
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.inner.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        state = self.inner.state_dict()
        slow = None if self.slow is None else [s.clone() for s in self.slow]
        state["lookahead"] = {"steps": self.steps, "alpha": self.alpha, "count": self.count, "slow": slow}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        state = dict(state_dict)
        saved = state.pop("lookahead", None)
        self.inner.load_state_dict(state)
        if saved is None:  # an optimizer saved without Lookahead: its weights become the slow ones at the next step
            self.count, self.slow = 0, None
            return
        self.count = int(saved["count"])
        params = self._params()
        self.slow = None if saved["slow"] is None else [
            s.to(device=p.device, dtype=p.dtype) for s, p in zip(saved["slow"], params)]

    def __repr__(self) -> str:
        return f"Lookahead(steps={self.steps}, alpha={self.alpha}, {self.inner!r})"
