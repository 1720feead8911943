"""The one-call entry point: trace -> coupling -> groups -> scores -> plan -> surgery -> report."""
from __future__ import annotations

import copy
from typing import Any

from torch import nn

from .config import ShrinkConfig
from .groups import find_groups
from .plan import make_plan
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
    plan = make_plan(model, groups, config, scorer=scorer)
    target = model if inplace else copy.deepcopy(model)
    original = copy.deepcopy(model) if inplace and return_report else model
    apply_plan_(target, plan, traced.inputs)
    if not return_report:
        return target
    report: Report = make_report(original, target, plan, groups)
    return target, report
