"""Test oracle: zero what a plan removes, prune it, and check the model computes the same thing.

Zeroing the slices of every *consuming* parameter ('in' role, e.g. the next layer's input columns)
removes a unit's contribution whatever its value; pruning that unit must then leave the output
unchanged. Groups marked inexact (normalised over by a norm, softmax or mean) are skipped: removing
their channels legitimately changes statistics.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .groups import Group, Groups, find_groups
from .inputs import first_tensor, run_model
from .plan import plan_from_units
from .surgery import apply_plan_
from .surgery.tensors import copy_model
from .surgery.verify import max_difference


@dataclass(frozen=True)
class OracleResult:
    """How many groups were checked and the largest output difference relative to the output scale."""

    groups_checked: int
    params_removed: int
    max_rel_diff: float


def oracle_groups(groups: Groups) -> list[Group]:
    """Groups the oracle can check: prunable, exact, and with a consuming parameter to zero."""
    return [g for g in groups.prunable if g.inexact is None and any("in" in m.roles for m in g.members)]


def zero_and_prune(model: nn.Module, groups: Groups, fraction: float = 0.3, seed: int = 0,
                   kinds: tuple[str, ...] | None = None) -> tuple[nn.Module, nn.Module, int]:
    """(zeroed copy, pruned copy of the zeroed one, groups used): both must compute the same thing.

    ``kinds`` restricts the groups to some of 'heads', 'mlp' (see ``graphprune.plan.kind``).
    """
    from .plan import kind

    usable = [g for g in oracle_groups(groups) if kinds is None or kind(g) in kinds]
    chosen = _choose(usable, fraction, seed)
    if not chosen:
        raise AssertionError("no group of this model can be checked by the oracle (all frozen or inexact)")
    zeroed = copy_model(model).eval()
    _zero_(zeroed, chosen)
    plan = plan_from_units(zeroed, chosen, {"oracle": True}, groups)
    return zeroed, apply_plan_(copy_model(zeroed), plan, groups.traced.inputs), len(chosen)


def assert_prune_matches(model: nn.Module, example_inputs: Any = None, fraction: float = 0.3, seed: int = 0,
                         tol: float = 1e-4, groups: Groups | None = None,
                         kinds: tuple[str, ...] | None = None) -> OracleResult:
    """Remove ``fraction`` of the units of every checkable group after zeroing their contribution;
    assert the pruned model's outputs equal the zeroed original's within ``tol`` of the output scale.

    >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> assert_prune_matches(m, torch.randn(3, 4)).groups_checked
    1
    """
    model = copy_model(model).eval()
    groups = groups or find_groups(model, example_inputs)
    zeroed, pruned, used = zero_and_prune(model, groups, fraction, seed, kinds)
    inputs = groups.traced.inputs
    rel = max_difference(run_model(zeroed, inputs), run_model(pruned, inputs))
    assert rel <= tol, f"pruned output differs by {rel:.3g} of the output scale (> {tol}) after removing zeroed units"
    removed = sum(p.numel() for p in zeroed.parameters()) - sum(p.numel() for p in pruned.parameters())
    return OracleResult(used, removed, rel)


def _choose(groups: list[Group], fraction: float, seed: int) -> list[tuple[Group, list[int]]]:
    rng = np.random.default_rng(seed)
    out = []
    for g in groups:
        n = min(max(1, int(g.width * fraction)), g.width - 1)
        n -= (g.width - n) % g.align  # keep an aligned width (grouped matmul kernels need it)
        if n > 0:
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


def assert_block_removal_matches(model: nn.Module, example_inputs: Any = None, fqns: list[str] | None = None,
                                 tol: float = 1e-4, inexact: bool = False) -> int:
    """Zero what each block's branches end in (so every branch adds 0), remove the blocks, and assert
    the model computes what the zeroed one did; returns how many blocks were removed. ``fqns``
    defaults to every block ``find_blocks`` proves removable exactly; ``inexact=True`` adds the
    post-norm ones, for models where that norm leaves its input as it is (an identity-affine norm
    reading a normalised input, as in a freshly initialised BERT).

    >>> class Res(nn.Module):
    ...     def __init__(self): super().__init__(); self.fc = nn.Linear(4, 4)
    ...     def forward(self, x): return x + self.fc(x)
    >>> assert_block_removal_matches(nn.Sequential(Res(), nn.Linear(4, 4), Res()), torch.randn(3, 4))
    2
    """
    from .blocks import find_blocks
    from .surgery.blocks import remove_blocks_

    model = copy_model(model).eval()
    blocks = find_blocks(model, example_inputs)
    chosen = [b for b in blocks if (fqns is None or b.fqn in fqns) and (inexact or b.inexact is None)]
    if not chosen:
        raise AssertionError(f"no removable block to check ({blocks.rejected or 'none found'})")
    params = dict(model.named_parameters())
    with torch.no_grad():
        for b in chosen:
            for f in b.branches:
                params[f].zero_()
    inputs = blocks.traced.inputs
    expected = first_tensor(run_model(model, inputs))
    remove_blocks_(model, [b.fqn for b in chosen])
    got = first_tensor(run_model(model, inputs))
    rel = float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-12))
    assert rel <= tol, f"removing blocks whose branches add zero changed the output by {rel:.3g} of its scale"
    return len(chosen)
