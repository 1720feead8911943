"""Criteria from gradients on calibration data: first-order Taylor (Molchanov et al.) and the
second-order OBD estimate with a diagonal Fisher in place of the Hessian."""
from __future__ import annotations

import numpy as np

from ..scores import ScoreContext, register_scorer
from . import per_unit


@register_scorer("taylor", needs=("grads",), drift=True)
def taylor(ctx: ScoreContext) -> np.ndarray:
    """Mean over batches of |sum of w * dL/dw| over a unit's slices: the first-order change of the
    loss when the whole unit is removed. A unit whose gradient is zero scores 0. Calibrated against
    a reference model with the random-projection loss (iterative rounds), the change of the squared
    distance to the reference's output instead, in the same units."""
    t = np.asarray(ctx.stats.taylor[ctx.group.id])
    d = ctx.stats.taylor_drift.get(ctx.group.id)
    if d is None:
        return t
    # against a reference: removing unit u moves ||e||^2 by ||J w_u||^2 - 2 e.J w_u, and for a
    # Gaussian projection E|r.J w_u| = sqrt(2/pi) ||J w_u||, so in the same units as t:
    return np.sqrt(np.maximum(t ** 2 - 4 / np.pi * np.asarray(d), 0.0))


@register_scorer("hessian", needs=("grads",))
def hessian(ctx: ScoreContext) -> np.ndarray | None:
    """OBD: sum over a unit's weights of 1/2 h w^2, with h the diagonal Fisher E[g^2], i.e. the mean
    over batches of 1/2 (g w)^2."""
    units = per_unit(ctx.group, lambda m: ctx.stats.fisher.get((m.fqn, m.dim)))
    return None if units is None else 0.5 * units
