"""Schedules, iterative one-shot: ``shrink(..., steps=N)`` removes the budget in N rounds, each
re-tracing the pruned model and re-scoring (re-calibrating when data is given) before it cuts."""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

from torch import nn

from ..config import ShrinkConfig
from ..drift import Reference, reference_to
from ..inputs import reusable
from ..report import Report, make_report
from .rounds import Done, Round, baseline, compose, notes_of, prune_round_, restore_
from ..surgery.tensors import copy_model


def shrink_steps(model: nn.Module, config: ShrinkConfig, *, example_inputs: Any = None, inplace: bool = False,
                 return_report: bool = False, scorer: Any = None, calibration: Iterable[Any] | None = None,
                 loss_fn: Callable | None = None) -> Any:
    """``shrink`` for ``config.steps > 1``: round k takes the model to ``ratio * k / steps`` of the
    ORIGINAL parameters (or MACs). The report's ``rounds`` hold where each round left the model and
    its ``plan`` composes the rounds' plans, so ``apply_plan_`` re-applies the structure to a fresh
    model. With ``inplace=True`` a failing round puts the whole model back as it was.

    >>> import torch, graphprune
    >>> mlp = torch.nn.Sequential(torch.nn.Linear(8, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    >>> small, report = graphprune.shrink(mlp, 0.4, steps=2, example_inputs=torch.randn(2, 8), return_report=True)
    >>> [round(r.params_ratio, 1) for r in report.rounds], small[0].out_features
    ([0.2, 0.4], 38)
    """
    user_ignore = config.ignore
    saved = copy_model(model) if inplace else None  # for the rollback, and the report's "before"
    target = model if inplace else copy_model(model)
    base = baseline(model, example_inputs)
    batches = reusable(calibration, config.max_batches)
    rounds: list[Round] = []
    done: list[Done] = []
    try:
        for step in range(1, config.steps + 1):
            this = prune_round_(target, base, config, step, scorer, batches, loss_fn,
                                _reference(saved if saved is not None else model, target, done, batches, config))
            if this is not None:
                done.append(this)
                # later rounds keep leaving out what an earlier one found breaks when pruned
                config = dataclasses.replace(config, ignore=tuple(this.plan.config.get("ignore", config.ignore)))
            rounds.append(Round(step, *base.fractions(target), this.plan if this else None))
    except BaseException:  # Ctrl-C between rounds too: the user's model goes back as it was
        if saved is not None:
            restore_(model, saved)
        raise
    if not return_report:
        return target
    return target, _report(saved if saved is not None else model, target, config, done, rounds, user_ignore)


def _reference(original: nn.Module, target: nn.Module, done: list[Done], batches: Any,
               config: ShrinkConfig) -> Reference | None:
    """After a first round with data, later rounds calibrate against the original model (unless
    ``round_reference="current"``): data-aware criteria then judge units by the error against its
    outputs, and what earlier rounds moved is not taken as the truth."""
    if not done or batches is None or config.round_reference != "original":
        return None
    return reference_to(original, target, compose(original, [d.plan for d in done]).keep)


def _report(before: nn.Module, after: nn.Module, config: ShrinkConfig, done: list[Done], rounds: list[Round],
            user_ignore: tuple[str, ...]) -> Report:
    last = done[-1]
    asked = {"ratio": config.ratio, "tolerance": config.tolerance, "steps": config.steps}
    plan = dataclasses.replace(compose(before, [d.plan for d in done]), config={**last.plan.config, **asked})
    report = make_report(before, after, plan, last.groups, scores=last.scores, stats=last.stats,
                         compensation=last.compensation)
    pruned = tuple(f"round {k}: {line}" for k, d in enumerate(done, 1) for line in _pruned_lines(d))
    notes = tuple(dict.fromkeys(n for d in done for n in notes_of(d)))
    left_out = tuple(i for i in plan.config.get("ignore", ()) if i not in user_ignore)
    return dataclasses.replace(report, pruned=pruned, notes=notes, rounds=tuple(rounds), left_out=left_out,
                               calibration_batches=sum(d.stats.batches for d in done if d.stats),
                               calibration_seconds=sum(d.stats.seconds for d in done if d.stats))


def _pruned_lines(d: Done) -> list[str]:
    by_id = {g.id: g for g in d.groups}
    return [f"{by_id[i].module or '<root>'}: {by_id[i].width} -> {by_id[i].width - len(u)} {by_id[i].unit}s"
            for i, u in sorted(d.plan.removed.items())]
