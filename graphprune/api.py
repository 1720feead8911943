"""The one-call entry point: trace -> coupling -> groups -> scores -> plan -> surgery -> report."""
from __future__ import annotations

import copy
import dataclasses
import warnings
from typing import Any

from torch import nn

from .config import ShrinkConfig
from .groups import find_groups
from .errors import PlanError, SurgeryError
from .plan import Plan, make_plan
from .report import Report, make_report
from .surgery import apply_plan_
from .trace import trace


def shrink(model: nn.Module, ratio: float, *, example_inputs: Any = None, inplace: bool = False,
           return_report: bool = False, scorer: Any = None, **options: Any) -> Any:
    """Remove ``ratio`` of ``model``'s parameters (or MACs with ``target="macs"``) by structural pruning.

    Returns a model of the same class (a pruned deep copy unless ``inplace=True``), or
    ``(model, report)`` with ``return_report=True``. Options are those of ``ShrinkConfig``.

    >>> import timm, graphprune
    >>> small = graphprune.shrink(timm.create_model("resnet18"), 0.5)
    >>> type(small).__name__
    'ResNet'
    """
    config = ShrinkConfig(ratio=ratio, scorer=scorer if isinstance(scorer, str) else "l2", **options)
    traced = trace(model, example_inputs)
    groups = find_groups(traced, strict=config.strict)
    target = model if inplace else copy.deepcopy(model)
    original = copy.deepcopy(model) if inplace and return_report else model
    plan = _plan_and_apply_(target, model, groups, config, scorer, traced.inputs)
    if not return_report:
        return target
    left_out = tuple(i for i in plan.config.get("ignore", ()) if i not in config.ignore)
    report: Report = make_report(original, target, plan, groups, left_out)
    return target, report


MAX_RETRIES = 16


def _plan_and_apply_(target: nn.Module, model: nn.Module, groups: Any, config: ShrinkConfig, scorer: Any,
                     inputs: Any) -> Plan:
    """Plan and prune; if the pruned forward breaks inside a module (its code derives a width from a
    constant or another tensor's shape, invisible in the traced graph), leave every module of that
    type unpruned and plan again. Surgery restores the model on each failure, so nothing half-done stays."""
    left_out: list[str] = []
    for _ in range(MAX_RETRIES):
        plan = _make_plan_noting(model, groups, config, scorer, left_out)
        try:
            apply_plan_(target, plan, inputs)
            return plan
        except SurgeryError as err:
            culprits = _same_type(model, getattr(err, "module", None))
            if not culprits or set(culprits) <= set(config.ignore):
                raise
            warnings.warn(f"graphprune: {err}; leaving {len(culprits)} module(s) like {culprits[0]!r} unpruned")
            left_out.append(type(model.get_submodule(culprits[0])).__qualname__)
            config = dataclasses.replace(config, ignore=(*config.ignore, *culprits))
    raise SurgeryError(f"the pruned forward still fails after leaving {MAX_RETRIES} module types unpruned")


def _make_plan_noting(model: nn.Module, groups: Any, config: ShrinkConfig, scorer: Any, left_out: list[str]) -> Plan:
    try:
        return make_plan(model, groups, config, scorer=scorer)
    except PlanError as err:
        if not left_out:
            raise
        raise PlanError(f"{err} [after leaving {', '.join(left_out)} unpruned: their forward breaks "
                        f"when pruned]") from err


def _same_type(model: nn.Module, fqn: str | None) -> list[str]:
    """Modules sharing the failing module's code: same type, or just itself for torch.nn built-ins."""
    if not fqn:
        return []  # the root's own forward: ignoring it would leave nothing to prune
    kind = type(model.get_submodule(fqn))
    if kind.__module__.startswith("torch.nn."):
        return [fqn]
    return [name for name, mod in model.named_modules() if type(mod) is kind]
