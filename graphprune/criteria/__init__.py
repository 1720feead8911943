"""Stage 4 plug-ins, criteria: one module per family, each criterion registered by name.

``magnitude`` (l1, l2, random, bn_scale) reads weights only; ``gradient`` (taylor, hessian) and
``activation`` (activation, fluctuation) read what ``graphprune.calibrate`` measured.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..groups import Group, Member


def dim_mass(t: torch.Tensor, dim: int, p: float) -> np.ndarray:
    """Sum of |t|^p over every dim but ``dim``: one value per index along it.

    >>> dim_mass(torch.tensor([[1., -2.], [3., 4.]]), 1, 1).tolist()
    [4.0, 6.0]
    """
    a = t.detach().double().abs().pow(p)
    other = [d for d in range(a.dim()) if d != dim]
    return (a.sum(other) if other else a).cpu().numpy()


def per_unit(group: Group, vector: Callable[[Member], np.ndarray | None]) -> np.ndarray | None:
    """Sum over members of ``vector(member)`` at each unit's positions; None if no member has one."""
    total, seen = np.zeros(group.width), False
    for m in group.members:
        v = vector(m)
        if v is not None:
            total += np.asarray(v)[m.indices].sum(1)
            seen = True
    return total if seen else None


from . import activation, blocks, gradient, magnitude  # noqa: E402,F401 - register the criteria
