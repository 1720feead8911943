"""Data-free criteria: weight magnitude (parameters only, never BN running statistics), the scale
of the norm over a channel (network slimming), and a seeded random baseline."""
from __future__ import annotations

import numpy as np
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from ..scores import ScoreContext, register_scorer
from . import member_mass, per_unit

NORMS = (_NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)


def _magnitude(ctx: ScoreContext, p: float) -> np.ndarray:
    units = per_unit(ctx.group, lambda m: member_mass(ctx, m, p) if m.fqn in ctx.params else None)
    return np.zeros(ctx.group.width) if units is None else units


@register_scorer("l2")
def l2(ctx: ScoreContext) -> np.ndarray:
    """Group L2 magnitude: sqrt of the summed squares of every parameter slice of a unit.

    A conv + BN channel whose parameters are all zero scores exactly 0 (buffers do not count).
    """
    return np.sqrt(_magnitude(ctx, 2))


@register_scorer("l1")
def l1(ctx: ScoreContext) -> np.ndarray:
    """Group L1 magnitude over parameter slices."""
    return _magnitude(ctx, 1)


@register_scorer("random")
def random(ctx: ScoreContext) -> np.ndarray:
    """Uniform random scores from ``seed`` and the group id, so plans are reproducible (a baseline)."""
    return np.random.default_rng((ctx.seed, ctx.group.id)).random(ctx.group.width)


@register_scorer("bn_scale")
def bn_scale(ctx: ScoreContext) -> np.ndarray | None:
    """|gamma| of the normalisation over each channel (Liu et al., network slimming); summed when
    several norms see the unit. None (l2 fallback) where no affine norm normalises the group."""
    def gamma(m):
        owner, _, leaf = m.fqn.rpartition(".")
        if leaf != "weight" or m.fqn not in ctx.params:
            return None
        return member_mass(ctx, m, 1) if isinstance(ctx.model.get_submodule(owner), NORMS) else None
    return per_unit(ctx.group, gamma)
