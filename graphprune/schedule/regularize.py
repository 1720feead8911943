"""Schedules, sparsity penalties to add to the training loss so unimportant groups shrink before
they are cut: group lasso (the L2 norm of every unit's parameter slices, summed) and, for network
slimming, the L1 norm of the norm layers' scales over prunable channels."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import ShrinkConfig
from ..criteria.magnitude import NORMS
from ..groups import Group, Groups
from ..plan import _ignored, kind

KINDS = ("group_lasso", "bn_l1")


@dataclass(frozen=True, eq=False)
class Term:
    """One member of a prunable group: parameter FQN, dim, and the unit each index belongs to."""

    fqn: str
    dim: int
    index: torch.Tensor  # (width, per-unit positions) flattened to positions
    unit: torch.Tensor  # unit of each position
    width: int
    group: int


def live_groups(model: nn.Module, groups: Groups, config: ShrinkConfig) -> list[Group]:
    """The groups a plan would consider: prunable, of a kind in ``prune=``, not ignored."""
    return [g for g in groups.prunable if kind(g) in config.prune and not _ignored(model, g, config.ignore)]


def terms(model: nn.Module, groups: list[Group], how: str) -> list[Term]:
    params = dict(model.named_parameters())
    out = []
    for g in groups:
        for m in g.members:
            owner = m.fqn.rpartition(".")[0]
            if m.fqn not in params or (how == "bn_l1" and not (
                    m.fqn.endswith(".weight") and isinstance(model.get_submodule(owner), NORMS))):
                continue
            unit = torch.arange(g.width).repeat_interleave(m.indices.shape[1])
            # groups hold read-only index arrays (frozen values); the tensor gets its own copy
            out.append(Term(m.fqn, m.dim, torch.tensor(m.indices.reshape(-1)), unit, g.width, g.id))
    return out


def penalty(model: nn.Module, terms_: list[Term], how: str) -> torch.Tensor:
    """Group lasso: sum over units of sqrt(sum of squares of the unit's slices); bn_l1: sum of |gamma|."""
    params = dict(model.named_parameters())
    device = next(iter(params.values())).device if params else torch.device("cpu")
    total = torch.zeros((), device=device)
    per_group: dict[int, torch.Tensor] = {}
    for t in terms_:
        p = params[t.fqn]
        other = [d for d in range(p.dim()) if d != t.dim]
        mass = (p.abs() if how == "bn_l1" else p.square())
        mass = mass.sum(other) if other else mass
        units = torch.zeros(t.width, device=p.device, dtype=p.dtype).index_add(
            0, t.unit.to(p.device), mass.index_select(0, t.index.to(p.device)))
        per_group[t.group] = per_group.get(t.group, 0) + units
    for units in per_group.values():
        total = total + (units.sum() if how == "bn_l1" else (units + 1e-12).sqrt().sum())
    return total
