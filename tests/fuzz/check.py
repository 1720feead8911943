"""The property every random model must have: pruning is exact, or the structure is frozen with a
reason; a model that prunes but computes something else (silently wrong) is the one failure."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

import torch

import graphprune
from graphprune.inputs import run_model
from graphprune.testing import oracle_groups, zero_and_prune

from .generator import random_model

EXACT, FROZEN, LOUD, WRONG = "exact", "frozen", "loud", "wrong"


@dataclass(frozen=True)
class Outcome:
    seed: int
    recipe: str
    result: str  # EXACT, FROZEN (nothing the oracle can check; every group says why), LOUD, WRONG
    detail: str = ""


def _tensors(out) -> list[torch.Tensor]:
    return [out] if isinstance(out, torch.Tensor) else [t for t in out if isinstance(t, torch.Tensor)]


def frozen_reason(groups: graphprune.Groups) -> str:
    """Why no group is checkable, as a category to count: the most common reason the groups are
    frozen (its words before the first node or colon), or what keeps the prunable ones out."""
    if groups.prunable:
        inexact = all(g.inexact is not None for g in groups.prunable)
        return "prunable groups are inexact" if inexact else "prunable groups have no consumer to zero"
    reasons = [re.split(r" \(node|: |;", g.frozen)[0] for g in groups if g.frozen and g.width > 1]
    return f"frozen: {Counter(reasons).most_common(1)[0][0]}" if reasons else "no group wider than one unit"


def check(seed: int, tol: float = 1e-4, family: str = "mixed") -> Outcome:
    """Zero 30% of the units of every checkable group, prune them, compare every output."""
    model, inputs, recipe = random_model(seed, family)
    try:
        groups = graphprune.find_groups(model, inputs)
    except graphprune.GraphPruneError as err:
        return Outcome(seed, recipe, LOUD, f"{type(err).__name__}: {str(err)[:300]}")
    silent = [g for g in groups if not g.prunable and g.frozen is None and g.width > 1]
    if silent:  # a group that is neither prunable nor frozen must not exist
        return Outcome(seed, recipe, WRONG, f"group {silent[0].id} neither prunable nor frozen")
    if not oracle_groups(groups):
        return Outcome(seed, recipe, FROZEN, frozen_reason(groups))
    try:
        zeroed, pruned, used = zero_and_prune(model, groups, fraction=0.3, seed=seed)
    except graphprune.GraphPruneError as err:
        return Outcome(seed, recipe, LOUD, f"{type(err).__name__}: {str(err)[:300]}")
    want, got = _tensors(run_model(zeroed, groups.traced.inputs)), _tensors(run_model(pruned, groups.traced.inputs))
    for w, g in zip(want, got):
        scale = float(w.abs().max().clamp_min(1e-6))
        if w.shape != g.shape or float((w - g).abs().max()) > tol * scale:
            diff = float((w - g).abs().max()) / scale if w.shape == g.shape else float("inf")
            return Outcome(seed, recipe, WRONG, f"output differs by {diff:.3g} of its scale after pruning {used} groups")
    return Outcome(seed, recipe, EXACT, f"{used} groups")
