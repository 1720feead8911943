"""Criteria from what the consumers of a unit read on calibration data: structured Wanda (input
norm times weight norm) and FLAP's fluctuation (input variance times squared weight norm).

Where calibration measured drift from a reference model (iterative rounds, ``graphprune.drift``),
both score what removing a channel does to the consumer's squared error against the reference
output instead of to its output: a channel whose part is already wrong costs less, or nothing.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..moments import InputStats, consumer_of
from ..drift import rows_of
from ..scores import ScoreContext, register_scorer
from . import member_mass, per_unit


Term = Callable[[InputStats, np.ndarray, "np.ndarray | None"], np.ndarray]


def _consumers(ctx: ScoreContext, term: Term) -> np.ndarray | None:
    """Sum over the unit's consuming modules that ran of ``term(input stats, squared column norms,
    per channel W[:, j] . drift[:, j] and W[:, j] . drift_sum, or None without drift)``."""
    def vector(m):
        where = consumer_of(ctx.model, m)
        seen = ctx.stats.inputs.get(where[0]) if where else None
        if seen is None or seen.sum.shape[0] != ctx.tensors[m.fqn].shape[m.dim]:
            return None
        return term(seen, member_mass(ctx, m, 2), _drift_dots(ctx, m, seen))
    return per_unit(ctx.group, vector)


def _drift_dots(ctx: ScoreContext, m, seen: InputStats) -> tuple[np.ndarray, np.ndarray] | None:
    """Per input channel j: (W[:, j] . drift[:, j], W[:, j] . drift_sum); None without drift or
    where the weight is no (out, in) matrix of the consumer (a spatial kernel)."""
    if seen.drift is None:
        return None
    cols = rows_of(ctx.tensors[m.fqn], m.dim).numpy()  # (out, in) for a consumer's weight
    if cols.shape != seen.drift.shape:
        return None
    return (cols * seen.drift).sum(0), cols.T @ seen.drift_sum


@register_scorer("activation", needs=("inputs",), drift=True)
def activation(ctx: ScoreContext) -> np.ndarray | None:
    """Structured Wanda: for each input channel j of every consumer, ||X_j|| * ||W[:, j]||, the size
    of what removing j takes from that consumer's output. A unit that is always zero scores 0."""
    def term(s: InputStats, w2: np.ndarray, dots) -> np.ndarray:
        return s.norm * np.sqrt(w2) if dots is None else np.sqrt(np.maximum(s.sumsq * w2 - 2 * dots[0], 0.0))
    return _consumers(ctx, term)


@register_scorer("fluctuation", needs=("inputs",), drift=True)
def fluctuation(ctx: ScoreContext) -> np.ndarray | None:
    """FLAP: Var(X_j) * ||W[:, j]||^2. The mean part of a removed channel can be put back as a bias
    (``compensate="mean"``), so only its fluctuation is lost; a constant channel scores 0."""
    def term(s: InputStats, w2: np.ndarray, dots) -> np.ndarray:
        lost = s.var * s.count * w2
        return lost if dots is None else np.maximum(lost - 2 * (dots[0] - s.mean * dots[1]), 0.0)
    return _consumers(ctx, term)
