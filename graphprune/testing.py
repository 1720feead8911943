"""Test oracle: zero what a plan removes, prune it, and check the model computes the same thing.

Zeroing the slices of every *consuming* parameter ('in' role, e.g. the next layer's input columns)
removes a unit's contribution whatever its value; pruning that unit must then leave the output
unchanged. Groups marked inexact (normalised over by a norm, softmax or mean) are skipped: removing
their channels legitimately changes statistics.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .groups import Group, Groups, find_groups
from .inputs import first_tensor, normalize_inputs, run_model
from .plan import plan_from_units
from .surgery import apply_plan_


@dataclass(frozen=True)
class OracleResult:
    """How many groups were checked and the largest output difference relative to the output scale."""

    groups_checked: int
    units_removed: int
    max_rel_diff: float


def oracle_groups(groups: Groups) -> list[Group]:
    """Groups the oracle can check: prunable, exact, and with a consuming parameter to zero."""
    return [g for g in groups.prunable if g.inexact is None and any("in" in m.roles for m in g.members)]


def assert_prune_matches(model: nn.Module, example_inputs: Any = None, fraction: float = 0.3, seed: int = 0,
                         tol: float = 1e-4, groups: Groups | None = None) -> OracleResult:
    """Remove ``fraction`` of the units of every checkable group after zeroing their contribution;
    assert the pruned model's outputs equal the zeroed original's within ``tol`` of the output scale.

    >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> assert_prune_matches(m, torch.randn(3, 4)).groups_checked
    1
    """
    model = copy.deepcopy(model).eval()
    groups = groups or find_groups(model, example_inputs)
    chosen = _choose(oracle_groups(groups), fraction, seed)
    if not chosen:
        raise AssertionError("no group of this model can be checked by the oracle (all frozen or inexact)")
    _zero_(model, chosen)
    inputs = groups.traced.inputs if example_inputs is None else normalize_inputs(example_inputs)
    expected = first_tensor(run_model(model, inputs))
    pruned = apply_plan_(copy.deepcopy(model), plan_from_units(model, chosen, {"oracle": True}, groups), inputs)
    got = first_tensor(run_model(pruned, inputs))
    scale = expected.abs().max().clamp_min(1e-12)
    rel = float((got - expected).abs().max() / scale)
    assert rel <= tol, f"pruned output differs by {rel:.3g} of the output scale (> {tol}) after removing zeroed units"
    return OracleResult(len(chosen), sum(len(u) for _, u in chosen), rel)


def _choose(groups: list[Group], fraction: float, seed: int) -> list[tuple[Group, list[int]]]:
    rng = np.random.default_rng(seed)
    out = []
    for g in groups:
        n = min(max(1, int(g.width * fraction)), g.width - 1)
        out.append((g, sorted(rng.choice(g.width, size=n, replace=False).tolist())))
    return out


@torch.no_grad()
def _zero_(model: nn.Module, chosen: list[tuple[Group, list[int]]]) -> None:
    tensors = dict(model.named_parameters())
    for g, units in chosen:
        for m in g.members:
            if "in" in m.roles and m.fqn in tensors:
                idx = torch.as_tensor(m.indices[units].ravel(), device=tensors[m.fqn].device)
                tensors[m.fqn].index_fill_(m.dim, idx, 0.0)
