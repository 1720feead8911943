"""Stage 4 plug-ins, criteria: one module per family, each criterion registered by name.

``magnitude`` (l1, l2, random, bn_scale) reads weights only; ``gradient`` (taylor, hessian) and
``activation`` (activation, fluctuation) read what ``graphprune.calibrate`` measured.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from ..errors import ConfigError
from ..groups import Group, Member

if TYPE_CHECKING:
    from ..scores import ScoreContext


CHUNK = 1 << 24  # elements converted at a time for half-precision tensors


def dim_mass(t: torch.Tensor, dim: int, p: float) -> np.ndarray:
    """Sum of |t|^p over every dim but ``dim``: one value per index along it.

    Reduced by ``torch.linalg.vector_norm`` where the tensor lives, with no full-size temporary:
    float32/64 tensors in their own dtype, half-precision ones a slice at a time in float32 (their
    own accumulators would round every partial sum).

    >>> dim_mass(torch.tensor([[1., -2.], [3., 4.]]), 1, 1).tolist()
    [4.0, 6.0]
    """
    t = t.detach()
    other = [d for d in range(t.dim()) if d != dim]
    if not other:
        return t.abs().double().pow(p).cpu().numpy()
    if t.dtype in (torch.float32, torch.float64):
        norms = torch.linalg.vector_norm(t, ord=p, dim=other)
    else:
        step = max(1, CHUNK // max(1, t.numel() // max(t.shape[dim], 1)))
        norms = torch.cat([torch.linalg.vector_norm(t.narrow(dim, i, min(step, t.shape[dim] - i)), ord=p, dim=other,
                                                    dtype=torch.float32) for i in range(0, t.shape[dim], step)])
    return norms.double().cpu().numpy() ** p


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


from . import activation, gradient, magnitude  # noqa: E402,F401 - register the criteria
