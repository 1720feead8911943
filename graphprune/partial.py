"""The one-call entry point for models that do not trace whole: prune chosen submodules only.

A detector's heads hold data-dependent control flow (box filtering, NMS) that ``torch.export``
cannot follow, while its backbone traces. ``shrink(model, ratio, submodules=("backbone",))`` runs
the model once to record the arguments each named submodule receives, prunes each submodule on
those inputs as a model of its own (its outputs are outputs, so their widths stay and the rest of
the model still fits), and checks the whole model still runs.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any

from torch import nn

from .config import ShrinkConfig
from .errors import ConfigError, SurgeryError
from .options import checked
from .actions import Plan
from .inputs import Call, Inputs, default_inputs, normalize_inputs, output_shapes, run_model
from .report import Report, count_macs
from .plan import count_params
from .schedule.rounds import STRIDE
from .validate import fingerprint
from .trace import _eval_mode, aliases_of
from .untraceable import submodule_inputs
from .surgery.tensors import copy_model


def shrink_submodules(model: nn.Module, ratio: float, submodules: Any, *, example_inputs: Any = None,
                      inplace: bool = False, return_report: bool = False, calibration: Any = None,
                      scorer: Any = None, loss_fn: Any = None, **options: Any) -> Any:
    """``shrink`` each submodule in ``submodules`` (FQNs) by ``ratio`` of its own parameters.

    >>> import torch, graphprune
    >>> m = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> m = torch.nn.Sequential(m, torch.nn.Linear(2, 2))
    >>> small = graphprune.shrink(m, 0.3, submodules=("0",), example_inputs=torch.randn(3, 4), tolerance=0.2)
    >>> small[0][0].out_features < 8, small(torch.randn(3, 4)).shape
    (True, torch.Size([3, 2]))
    """
    from .api import shrink

    names = _names(model, submodules)
    if calibration is not None:
        raise ConfigError("calibration= with submodules= is not supported: the calibration batches are the "
                          "whole model's inputs; prune with a data-free scorer, or call shrink on the "
                          "submodule with batches of its own inputs")
    config = checked(model, ShrinkConfig(ratio=ratio, **options))  # validate once, before anything runs
    if config.recalibrate_bn:
        raise ConfigError("recalibrate_bn=True with submodules= is not supported (it reads calibration data, "
                          "which submodules= does not take); call graphprune.recalibrate_bn_(small, batches) "
                          "on the pruned model instead")
    options = {**options, "ignore": config.ignore}
    inputs = default_inputs(model) if example_inputs is None else normalize_inputs(example_inputs)
    target = model if inplace else copy_model(model)
    with _eval_mode(target):
        seen = submodule_inputs(target, inputs)
    missing = [n for n in names if n not in seen]
    if missing:
        raise ConfigError(f"submodules={missing[0]!r} is not called by the model's forward on these inputs; "
                          f"name modules the forward runs")
    saved = {n: _state(target.get_submodule(n)) for n in names} if inplace else {}
    before = (count_params(model), count_macs(model, inputs), fingerprint(model)) if return_report else None
    reports: list[tuple[str, Report]] = []
    try:
        for n in names:
            sub = target.get_submodule(n)
            _, rep = shrink(sub, ratio, example_inputs=Call(*seen[n]), inplace=True, return_report=True,
                            scorer=scorer, **_relative(options, n, sub, target))
            reports.append((n, rep))
        with _eval_mode(target):
            shapes = output_shapes(run_model(target, inputs))
    except BaseException as err:  # Ctrl-C too: no submodule is left pruned while another is not
        for n, state in saved.items():
            _restore(target.get_submodule(n), state)
        if isinstance(err, SurgeryError) or not isinstance(err, Exception) or not reports or len(reports) < len(names):
            raise
        raise SurgeryError(f"the model no longer runs after pruning {', '.join(names)} "
                           f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                           f"the model was {'restored' if inplace else 'left as it was'}") from err
    if not return_report:
        return target
    return target, dataclasses.replace(_merged(target, inputs, before, reports),
                                       plan=_merged_plan(target, before, shapes, reports))


def _names(model: nn.Module, submodules: Any) -> tuple[str, ...]:
    names = (submodules,) if isinstance(submodules, str) else tuple(submodules)
    if not names:
        raise ConfigError("submodules= is empty; name the submodules to prune, e.g. submodules=('backbone',)")
    for n in names:
        if not isinstance(n, str) or not n:
            raise ConfigError(f"submodules= takes module FQNs (not the root), got {n!r}")
        try:
            model.get_submodule(n)
        except AttributeError:
            children = ", ".join(name for name, _ in model.named_children())
            raise ConfigError(f"submodules={n!r} is not a submodule of {type(model).__name__} "
                              f"(its children: {children})") from None
    nested = [(a, b) for a in names for b in names if a != b and b.startswith(a + ".")]
    if nested:
        raise ConfigError(f"submodules={nested[0][1]!r} lies inside {nested[0][0]!r}; name each part once")
    return names


def _relative(options: dict[str, Any], fqn: str, sub: nn.Module, model: nn.Module) -> dict[str, Any]:
    """Options for one submodule: ``ignore=`` entries (already checked against the whole model)
    that are inside it, FQNs losing its prefix; class names only where it holds such a module;
    and its modules whose tensors are tied to a module outside it (slicing them would leave that
    module's other tensors behind, and release the tie it holds)."""
    classes = {type(m).__qualname__ for m in sub.modules()}
    mine = [i[len(fqn) + 1:] if isinstance(i, str) and i.startswith(fqn + ".") else i for i in options.get("ignore", ())
            if (isinstance(i, str) and i.startswith(fqn + ".")) or i in classes]
    return {**options, "ignore": (*mine, *_tied_outside(model, fqn))}


def _tied_outside(model: nn.Module, fqn: str) -> list[str]:
    """Modules of submodule ``fqn`` (relative names) holding a tensor that a module outside it holds too."""
    owners = [[n.rpartition(".")[0] for n in names] for names in aliases_of(model).values()]
    inside = lambda path: path == fqn or path.startswith(fqn + ".")
    found = sorted({p[len(fqn) + 1:] for paths in owners if not all(map(inside, paths))
                    for p in paths if inside(p) and p != fqn})
    for name in found:
        warnings.warn(f"graphprune: {fqn}.{name} holds a tensor tied to a module outside {fqn!r}; left unpruned")
    return found


def _state(module: nn.Module) -> list[tuple[nn.Module, dict[str, Any]]]:
    """What surgery replaces in each module of a subtree. In-place surgery also releases a sliced
    tensor's memory (``old.data = empty``), so each tensor's data is held too, to be put back."""
    return [(m, {"class": type(m), "_parameters": dict(m._parameters), "_buffers": dict(m._buffers),
                 "data": [(t, t.data) for t in [*m._parameters.values(), *m._buffers.values()] if t is not None],
                 "attrs": {k: v for k, v in m.__dict__.items() if not k.startswith("_")}})
            for m in module.modules()]


def _restore(module: nn.Module, state: list[tuple[nn.Module, dict[str, Any]]]) -> None:
    for m, saved in state:
        m.__class__ = saved["class"]
        m._parameters.clear()
        m._parameters.update(saved["_parameters"])
        m._buffers.clear()
        m._buffers.update(saved["_buffers"])
        m.__dict__.update(saved["attrs"])
        for t, data in saved["data"]:
            t.data = data


def _merged_plan(model: nn.Module, before: tuple, shapes: list, reports: list[tuple[str, Report]]) -> Plan:
    """One plan for the whole model: each submodule's plan restated from the root (``Plan.under``),
    its group ids kept apart as the rounds of ``steps=`` keep theirs; it re-applies to a fresh
    model with ``apply_plan_`` (which cannot trace the whole model to check the units again: each
    submodule's plan was checked against its own groups when it was made)."""
    plans = [(n, r.plan.under(n)) for n, r in reports]
    removed = {k * STRIDE + g: u for k, (_, p) in enumerate(plans) for g, u in p.removed.items()}
    coupled = {k * STRIDE + g: m for k, (_, p) in enumerate(plans) for g, m in p.coupled.items()}
    first = plans[0][1]
    return Plan(actions=tuple(a for _, p in plans for a in p.actions), removed=removed,
                config={**first.config, "submodules": [n for n, _ in plans]}, params_before=before[0],
                params_after=count_params(model), output_shapes=[list(s) for s in shapes], fingerprint=before[2],
                model_class=type(model).__qualname__, coupled=coupled,
                removed_blocks={k: v for _, p in plans for k, v in p.removed_blocks.items()})


def _merged(model: nn.Module, inputs: Inputs, before: tuple, reports: list[tuple[str, Report]]) -> Report:
    """One report for the whole model: its numbers, and each submodule's lines under its FQN."""
    lines = lambda attr: tuple(f"{n}: {line}" for n, r in reports for line in getattr(r, attr))
    first = reports[0][1]
    return Report(params_before=before[0], params_after=count_params(model), macs_before=before[1],
                  macs_after=count_macs(model, inputs), pruned=lines("pruned"), frozen=lines("frozen"),
                  unsupported=lines("unsupported"), rule_errors=lines("rule_errors"), left_out=lines("left_out"),
                  criterion=first.criterion, scope=first.scope, compensate=first.compensate,
                  notes=lines("notes") + tuple(f"pruned only {', '.join(n for n, _ in reports)}; the rest is "
                                               f"left as it was" for _ in [0]))
