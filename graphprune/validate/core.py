"""Plan checks, the frame: the registry every kind of change registers its check in, the model
fingerprint, and ``check_plan``, which runs the format and fingerprint checks and then every
registered one."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from ..errors import PlanError
from ..registry import Registry

PLAN_CHECKS = Registry("plan check")


def plan_check(kind: str) -> Callable:
    """Register ``fn(target)`` checking one kind of change a plan holds (raise ``PlanError``)."""
    return PLAN_CHECKS.register(kind)


def fingerprint(model: nn.Module) -> str:
    """A short hash of every parameter and buffer name with its shape: equal for two builds of one
    architecture and configuration, different once either is pruned (dtype and device do not count).

    >>> fingerprint(nn.Linear(2, 3)) == fingerprint(nn.Linear(2, 3)), fingerprint(nn.Linear(2, 4)) == fingerprint(nn.Linear(2, 3))
    (True, False)
    """
    named = [(n, list(t.shape)) for n, t in named_tensors(model).items()]
    return hashlib.sha256(json.dumps(sorted(named)).encode()).hexdigest()[:16]


def named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters(remove_duplicate=False)), **dict(model.named_buffers(remove_duplicate=False))}


@dataclass(frozen=True, eq=False)
class Target:
    """What a check reads: the model, its tensors by every name, and the plan."""

    model: nn.Module
    tensors: dict[str, torch.Tensor]
    plan: Any


def check_plan(model: nn.Module, plan: Any) -> None:
    """Raise ``PlanError`` unless ``plan`` (a ``Plan``) can be applied to ``model`` as it is now.

    >>> from graphprune.plan import Plan
    >>> check_plan(nn.Linear(2, 2), Plan((), {}, {}, 6, 6, fingerprint="0" * 16))
    Traceback (most recent call last):
    graphprune.errors.PlanError: the plan was made for another model ...
    """
    from ..plan import PLAN_VERSION, REMAKE, Plan
    from ..trace import check_module

    check_module(model)
    if not isinstance(plan, Plan):
        how = {str: "Plan.from_json(path)", dict: "Plan.from_dict(data)"}.get(type(plan), "Plan.from_json(path)")
        raise PlanError(f"plan= must be a graphprune Plan, got {type(plan).__name__} {str(plan)[:60]!r}; read a "
                        f"saved one with graphprune.{how}, or take one from make_plan or from shrink's report "
                        f"(report.plan)")
    if plan.version != PLAN_VERSION:
        raise PlanError(f"the plan is plan format version {plan.version!r}; this graphprune applies format "
                        f"{PLAN_VERSION} only. {REMAKE}")
    target = Target(model, named_tensors(model), plan)
    _check_fingerprint(target)
    for kind in PLAN_CHECKS:
        PLAN_CHECKS[kind](target)


def _check_fingerprint(t: Target) -> None:
    have = fingerprint(t.model)
    if t.plan.fingerprint == have:
        return
    if not t.plan.fingerprint:
        raise PlanError("the plan has no fingerprint of the model it was made for, so it cannot be checked; "
                        "make it with graphprune.make_plan")
    made_for = f"{t.plan.model_class or 'a model'} with {t.plan.params_before:,} parameters"
    n = sum(p.numel() for p in t.model.parameters())
    raise PlanError(f"the plan was made for another model ({made_for}, fingerprint {t.plan.fingerprint}); this "
                    f"{type(t.model).__qualname__} has {n:,} parameters (fingerprint {have}){_first_misfit(t)}. "
                    f"Apply a plan to an unpruned model of the architecture and configuration it was made for")


def _first_misfit(t: Target) -> str:
    for fqn, dims in t.plan.keep.items():
        if fqn not in t.tensors:
            return f": it prunes {fqn!r}, which this model does not have"
        for d, ix in dims.items():
            if d < t.tensors[fqn].dim() and ix and max(ix) >= t.tensors[fqn].shape[d]:
                return (f": it keeps index {max(ix)} of {fqn}:{d}, which has size {t.tensors[fqn].shape[d]} here "
                        f"(a different, or already pruned, model)")
    return ""
