"""Criteria from what the consumers of a unit read on calibration data: structured Wanda (input
norm times weight norm) and FLAP's fluctuation (input variance times squared weight norm)."""
from __future__ import annotations

from typing import Callable

import numpy as np

from ..calibrate import InputStats, consumer_of
from ..scores import ScoreContext, register_scorer
from . import member_mass, per_unit


def _consumers(ctx: ScoreContext, term: Callable[[InputStats, np.ndarray], np.ndarray]) -> np.ndarray | None:
    """Sum over the unit's consuming modules that ran of ``term(input stats, squared column norms)``."""
    def vector(m):
        where = consumer_of(ctx.model, m)
        seen = ctx.stats.inputs.get(where[0]) if where else None
        if seen is None or seen.sum.shape[0] != ctx.tensors[m.fqn].shape[m.dim]:
            return None
        return term(seen, member_mass(ctx, m, 2))
    return per_unit(ctx.group, vector)


@register_scorer("activation", needs=("inputs",))
def activation(ctx: ScoreContext) -> np.ndarray | None:
    """Structured Wanda: for each input channel j of every consumer, ||X_j|| * ||W[:, j]||, the size
    of what removing j takes from that consumer's output. A unit that is always zero scores 0."""
    return _consumers(ctx, lambda s, w2: s.norm * np.sqrt(w2))


@register_scorer("fluctuation", needs=("inputs",))
def fluctuation(ctx: ScoreContext) -> np.ndarray | None:
    """FLAP: Var(X_j) * ||W[:, j]||^2. The mean part of a removed channel can be put back as a bias
    (``compensate="mean"``), so only its fluctuation is lost; a constant channel scores 0."""
    return _consumers(ctx, lambda s, w2: s.var * s.count * w2)
