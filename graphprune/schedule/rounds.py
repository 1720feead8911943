"""Schedules, one round: from the model as it is now, remove what takes it to a cumulative fraction
of the ORIGINAL model's parameters (or MACs), re-tracing, re-calibrating and re-scoring first."""
from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

from ..calibrate import Stats
from ..compensate import Compensation
from ..config import ShrinkConfig
from ..drift import Reference
from ..errors import PlanError
from ..groups import Groups, find_groups
from ..inputs import Inputs, default_inputs, normalize_inputs
from ..plan import Plan, count_params
from ..recalibrate import batch_norm_after_
from ..report import count_macs
from ..scores import Scores, score
from ..trace import _eval_mode, trace


@dataclass(frozen=True)
class Round:
    """Where one round left the model: fractions of the original's parameters and MACs removed."""

    step: int
    params_ratio: float
    macs_ratio: float
    plan: Plan | None = dataclasses.field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class Baseline:
    """The original model's size and the inputs every round traces and counts with."""

    params: int
    macs: int
    inputs: Inputs  # normalised, for counting
    example: Any = None  # as the user gave them (None: derived for timm and HF models), for tracing

    def fractions(self, model: nn.Module) -> tuple[float, float]:
        return 1 - count_params(model) / self.params, 1 - self.macs_of(model) / max(self.macs, 1)

    def macs_of(self, model: nn.Module) -> int:
        return count_macs(model, self.inputs)  # its forward runs in eval mode (run_model, export_program)


@dataclass(frozen=True, eq=False)
class Done:
    """What a round ran, for the report: its plan, groups, scores, statistics and compensation."""

    plan: Plan
    groups: Groups
    scores: Scores
    stats: Stats | None
    compensation: Compensation | None
    bn_note: str | None = None  # the report's note on BatchNorm statistics after the round
    checked: str | None = None  # the report's note on what the value check proved


def baseline(model: nn.Module, example_inputs: Any) -> Baseline:
    inputs = default_inputs(model) if example_inputs is None else normalize_inputs(example_inputs)
    base = Baseline(count_params(model), 0, inputs, example_inputs)
    return dataclasses.replace(base, macs=base.macs_of(model))


def goal(ratio: float, step: int, steps: int) -> float:
    """Cumulative fraction of the original reached after ``step`` of ``steps`` rounds (linear).

    >>> [goal(0.5, k, 5) for k in (1, 5)]
    [0.1, 0.5]
    """
    return ratio * step / steps


def prune_round_(model: nn.Module, base: Baseline, config: ShrinkConfig, step: int, scorer: Any,
                 batches: Any, loss_fn: Callable | None, reference: Reference | None = None) -> Done | None:
    """Prune ``model`` in place to round ``step``'s goal; None when it is there already. Surgery
    restores the model if this round fails. Intermediate rounds may land half a round from their
    goal (coarse units such as heads); one that cannot is skipped with a warning (the next round
    catches up); the last one is held to ``config.tolerance``."""
    from ..api import _calibration, _plan_and_apply_  # api imports this module for steps > 1

    current = count_params(model) if config.target == "params" else base.macs_of(model)
    original = base.params if config.target == "params" else base.macs
    local = 1 - (1 - goal(config.ratio, step, config.steps)) * original / current
    if local <= 0:
        return None
    slack = config.tolerance if step == config.steps else max(config.tolerance, config.ratio / config.steps / 2)
    cfg = dataclasses.replace(config, ratio=local, tolerance=min(1.0, slack * original / current), steps=1)
    with _eval_mode(model):  # a model mid-training: BatchNorm must not learn from the checks' forwards
        traced = trace(model, base.example)
        groups = find_groups(traced, strict=cfg.strict, read_source=cfg.read_source)
        stats = _calibration(model, groups, cfg, scorer, batches, loss_fn, reference=reference)
        scores = score(model, groups, scorer or cfg.scorer, stats, seed=cfg.seed)
        try:
            plan, comp, checked = _plan_and_apply_(model, model, groups, cfg, scores, traced.inputs, stats)
        except PlanError as err:  # raised before any surgery: the model is as it was
            if step == config.steps:
                raise
            warnings.warn(f"graphprune: round {step} of {config.steps} skipped: {err}; the next round catches up")
            return None
        # the next round scores (and the user gets) a model whose statistics fit what it now computes
        bn_note = batch_norm_after_(model, cfg, batches)
    return Done(plan, groups, scores, stats, comp, bn_note, checked)


def notes_of(d: Done) -> list[str]:
    """What a report says about one round: criterion fallbacks, compensation notes, BatchNorm, and
    what the value check proved."""
    by_id = {g.id: g for g in d.groups}
    notes = [f"{d.scores.criterion} cannot judge {by_id[i].module or '<root>'}; ranked by l2 there"
             for i in d.scores.fallback]
    return notes + list(d.compensation.notes if d.compensation else ()) + [n for n in (d.bn_note, d.checked) if n]


def compose(model: nn.Module, plans: list[Plan]) -> Plan:
    """One plan that takes the ORIGINAL ``model`` where the rounds took it: kept indices composed
    round after round, attributes and config fields as the last round set them. It re-applies the
    structure (``apply_plan_`` on a fresh model); compensated values are not part of any plan."""
    tensors = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    canonical: dict[int, str] = {}
    name_of = {n: canonical.setdefault(id(t), n) for n, t in tensors}  # tied names -> the first name
    shapes = {n: tuple(t.shape) for n, t in tensors}
    keep: dict[str, dict[int, list[int]]] = {}
    attrs: dict[str, dict[str, Any]] = {}
    model_config: dict[str, Any] = {}
    for plan in plans:
        for fqn, dims in plan.keep.items():
            if fqn not in name_of:
                continue  # a bias compensation added in an earlier round: not in the original
            mine = keep.setdefault(name_of[fqn], {})
            for d, ix in dims.items():
                before = mine.get(d, range(shapes[fqn][d]))
                mine[d] = [before[i] for i in ix]
        for fqn, values in plan.attrs.items():
            attrs.setdefault(fqn, {}).update(values)
        model_config.update(plan.model_config)
    removed, coupled = _rounds_groups(plans, name_of)
    first, last = plans[0], plans[-1]
    return last.with_parts(keep=dict(sorted(keep.items())), attrs=attrs, model_config=model_config,
                           removed=removed, coupled=coupled, params_before=first.params_before,
                           output_shapes=first.output_shapes, fingerprint=first.fingerprint,
                           model_class=first.model_class)


def _rounds_groups(plans: list[Plan], name_of: dict[str, str]) -> tuple[dict, dict]:
    """Every round's removed groups under ids of their own (round ``r``'s group ``g`` is
    ``r * STRIDE + g``), so ``apply_plan_`` checks the composed widths against all of them."""
    removed: dict[int, list[int]] = {}
    coupled: dict[int, list[list[Any]]] = {}
    for r, plan in enumerate(plans):
        for gid, units in plan.removed.items():
            members = [[name_of.get(f, f), where, per] for f, where, per in plan.coupled.get(gid, [])]
            if members:
                removed[r * STRIDE + gid], coupled[r * STRIDE + gid] = list(units), members
    return removed, coupled


STRIDE = 1_000_000  # larger than any group id a model has


def restore_(model: nn.Module, saved: nn.Module) -> None:
    """Put ``saved`` (a deep copy taken before the rounds) back into ``model``'s own module objects,
    so a failed later round leaves no model pruned by only some of the rounds."""
    live = dict(model.named_modules(remove_duplicate=False))
    for name, old in saved.named_modules(remove_duplicate=False):
        mod = live[name]
        children = mod._modules
        mod.__dict__.clear()
        mod.__dict__.update(old.__dict__)
        mod._modules = children
