"""Stage 4 plug-ins, criteria: one module per family, each criterion registered by name.

``magnitude`` (l1, l2, random, bn_scale) reads weights only; ``gradient`` (taylor, hessian),
``activation`` (activation, fluctuation) and ``refit`` (obs) read what ``graphprune.calibrate`` measured.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from ..errors import ConfigError
from ..groups import Group, Member

if TYPE_CHECKING:
    from ..scores import ScoreContext


CHUNK = 1 << 18  # elements reduced at a time: bounds every temporary, and stays in cache


def dim_mass(t: torch.Tensor, dim: int, p: float) -> np.ndarray:
    """Sum of |t|^p over every dim but ``dim``: one value per index along it.

    Reduced where the tensor lives, a block of leading rows at a time (temporaries stay below
    ``CHUNK`` elements whatever the tensor's size): ``torch.linalg.vector_norm`` along the
    contiguous trailing dims, then a sum over the leading ones, in float32 for half-precision
    tensors (their own accumulators would round every partial sum) and float64 across blocks.

    >>> dim_mass(torch.tensor([[1., -2.], [3., 4.]]), 1, 1).tolist()
    [4.0, 6.0]
    """
    t = t.detach()
    n = t.shape[dim] if t.dim() else 1
    lead, trail = math.prod(t.shape[:dim]), math.prod(t.shape[dim + 1:])
    t3 = t.reshape(lead, n, trail)
    total = torch.zeros(n, dtype=torch.float64, device=t.device)
    rows = max(1, CHUNK // max(1, n * trail))
    for i in range(0, lead, rows):
        block = t3[i:i + rows]
        block = block if block.dtype in (torch.float32, torch.float64) else block.float()
        per = torch.linalg.vector_norm(block, ord=p, dim=2) if trail > 1 else block[..., 0].abs()
        total += per.pow(p).sum(0)
    return total.cpu().numpy()


def member_mass(ctx: "ScoreContext", m: Member, p: float) -> np.ndarray:
    """``dim_mass`` of a member's tensor along its dim. The tensor is read once per score() call:
    its other dims that groups need are reduced at the same time (a checkpoint tensor read from
    disk is not read again for the group of its other dim)."""
    key = (m.fqn, m.dim, p)
    if key not in ctx.memo:
        t = ctx.tensors[m.fqn]
        if t.is_meta:
            raise ConfigError(f"{m.fqn} is on the meta device, so its values cannot be scored; pass the "
                              f"weights with score(..., tensors=graphprune.checkpoint_tensors(folder)), or a "
                              f"criterion that reads no weights (scorer='random')")
        for d in sorted({*ctx.dims.get(m.fqn, ()), m.dim}):
            ctx.memo[(m.fqn, d, p)] = dim_mass(t, d, p)
    return ctx.memo[key]


def per_unit(group: Group, vector: Callable[[Member], np.ndarray | None]) -> np.ndarray | None:
    """Sum over members of ``vector(member)`` at each unit's positions; None if no member has one."""
    total, seen = np.zeros(group.width), False
    for m in group.members:
        v = vector(m)
        if v is not None:
            total += np.asarray(v)[m.indices].sum(1)
            seen = True
    return total if seen else None


from . import activation, blocks, gradient, magnitude, refit  # noqa: E402,F401 - register the criteria
