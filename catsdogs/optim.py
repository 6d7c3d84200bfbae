"""Compatibility alias: the optimizer registry now lives in `catsdogs.training.optim`.

Plugins written against the README's `from catsdogs.optim import register_optimizer` keep
working: every name here is the same object as in `catsdogs.training.optim` (one registry).
New code imports from `catsdogs.training.optim`.
"""

from catsdogs.training.optim import (ENTRY_POINT_GROUP, OPTIMIZERS, OptimizerSpec, build_optimizer,  # noqa: F401
                                     get_optimizer_spec, list_optimizers, load_optimizer_plugins, parameter_groups,
                                     register_optimizer)
