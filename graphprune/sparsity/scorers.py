"""Masks, criteria: one score per weight (higher is kept), registered by name with the calibration
statistics they read. ``magnitude`` needs nothing; ``wanda`` reads each layer's input norms from
``graphprune.calibrate`` and, as in the paper, compares weights within each output row."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..moments import InputStats
from ..errors import ConfigError
from ..registry import Registry
from .layout import Layout

MASK_SCORERS = Registry("mask scorer")


@dataclass(frozen=True, eq=False)
class MaskContext:
    """What a weight criterion may read for one layer: its effective (masked) weight, detached."""

    fqn: str
    module: nn.Module
    weight: torch.Tensor
    layout: Layout
    inputs: InputStats | None = None  # moments of what the layer read, when the criterion needs them
    seed: int = 0


def register_mask_scorer(name: str, needs: tuple[str, ...] = (), per_row: bool = False,
                         override: bool = False) -> Callable:
    """Register ``fn(ctx: MaskContext) -> tensor shaped like ctx.weight``. ``per_row``: with
    ``scope="layer"`` the weights are ranked within each output row rather than the whole layer.

    >>> @register_mask_scorer("abs_cubed", override=True)
    ... def abs_cubed(ctx): return ctx.weight.abs() ** 3
    >>> "abs_cubed" in list_mask_scorers()
    True
    """
    def deco(fn: Callable) -> Callable:
        fn.needs, fn.per_row = tuple(needs), per_row  # type: ignore[attr-defined]
        return MASK_SCORERS.register(name, override=override)(fn)
    return deco


def list_mask_scorers() -> list[str]:
    """Names accepted by ``sparsify_(scorer=...)``."""
    return MASK_SCORERS.names()


def resolve_mask_scorer(scorer: str | Callable) -> Callable:
    return MASK_SCORERS.resolve(scorer, "scorer", "fn(ctx) -> scores shaped like ctx.weight")


@register_mask_scorer("magnitude")
def magnitude(ctx: MaskContext) -> torch.Tensor:
    """|W|, ranked over the whole layer (Han et al. 2015)."""
    return ctx.weight.abs()


@register_mask_scorer("random")
def random(ctx: MaskContext) -> torch.Tensor:
    """Uniform scores from ``seed`` and the layer's name (a baseline, reproducible)."""
    rng = np.random.default_rng([ctx.seed, *ctx.fqn.encode()])
    return torch.from_numpy(rng.random(tuple(ctx.weight.shape))).to(ctx.weight.device)


@register_mask_scorer("wanda", needs=("inputs",), per_row=True)
def wanda(ctx: MaskContext) -> torch.Tensor:
    """|W_ij| * ||X_j||, the input norm over every calibration token (Sun et al. 2023), compared per
    output row. A layer no calibration batch reached cannot be judged: an error names it."""
    if ctx.inputs is None:
        raise ConfigError(f"wanda has no input statistics for {ctx.fqn!r}: no calibration batch ran through "
                          f"it; pass calibration= batches that reach it, or ignore= it")
    norm = torch.from_numpy(ctx.inputs.norm).to(ctx.weight.device, ctx.weight.dtype)
    return ctx.weight.abs() * input_norm_like(ctx.weight, ctx.layout, norm)


def input_norm_like(weight: torch.Tensor, layout: Layout, norm: torch.Tensor) -> torch.Tensor:
    """``norm`` (one value per input channel) placed at every weight that reads that channel."""
    shape = [1] * weight.dim()
    width = weight.shape[layout.in_axis]
    if norm.numel() == width:
        shape[layout.in_axis] = width
        return norm.reshape(shape)
    if norm.numel() != width * layout.groups:
        raise ConfigError(f"input statistics have {norm.numel()} channels but the weight reads {width} "
                          f"(x{layout.groups} groups); calibrate the model the masks go on")
    out = weight.shape[layout.out_axis]
    group = torch.arange(out, device=weight.device) // (out // layout.groups)
    per_row = norm.reshape(layout.groups, width)[group]  # (out, width)
    shape[layout.out_axis], shape[layout.in_axis] = out, width
    order = sorted((layout.out_axis, layout.in_axis))
    return (per_row if order[0] == layout.out_axis else per_row.T).reshape(shape)
