"""Block criteria: one score per removable block (``graphprune.find_blocks``); the plan removes the
lowest first. Data-aware: ``angular`` (ShortGPT's block influence, 1 - cos between a block's input
and output) and ``bypass`` (what skipping the block alone costs the loss or the output); data-free:
``branch_norm`` (the size of what the block's branches end in, the weights that write into the
residual stream).
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

import torch
from torch import nn

from ..blocks import Block, Blocks
from ..calibrate import Stats
from ..errors import CalibrationError
from ..registry import Registry

BLOCK_SCORERS = Registry("block scorer")


@dataclass(frozen=True, eq=False)
class BlockContext:
    """What a block criterion may read: the block, the model's tensors and the calibration stats."""

    block: Block
    tensors: Mapping[str, torch.Tensor]
    model: nn.Module
    stats: Stats | None = None


@dataclass(frozen=True, eq=False)
class BlockScores:
    """One score per block FQN, from ``criterion``."""

    criterion: str
    raw: Mapping[str, float]
    needs: tuple[str, ...] = ()


def register_block_scorer(name: str, needs: tuple[str, ...] = (), override: bool = False) -> Callable:
    """Register ``fn(ctx: BlockContext) -> float`` under ``name``; ``needs`` names what calibration collects.

    >>> @register_block_scorer("first_wins", override=True)
    ... def first_wins(ctx): return -float(ctx.block.index)
    >>> "first_wins" in list_block_scorers()
    True
    """
    return BLOCK_SCORERS.register(name, override=override, needs=tuple(needs))


def list_block_scorers() -> list[str]:
    """Names accepted by ``block_scorer=``."""
    return BLOCK_SCORERS.names()


def block_needs(scorer: Any) -> tuple[str, ...]:
    return tuple(getattr(_resolve(scorer), "needs", ()))


def score_blocks(model: nn.Module, blocks: Blocks, scorer: Any = "branch_norm", stats: Stats | None = None) -> BlockScores:
    """A score for every block under ``scorer`` (a registered name or a callable)."""
    fn = _resolve(scorer)
    missing = [n for n in getattr(fn, "needs", ()) if stats is None or n not in stats.needs]
    if missing:
        raise CalibrationError(f"block_scorer={scorer!r} reads calibration statistics {missing}; pass calibration= "
                               f"(input batches) to shrink, or block_scorer='branch_norm' without data")
    tensors = MappingProxyType(dict(model.named_parameters()))
    raw = {b.fqn: float(fn(BlockContext(b, tensors, model, stats))) for b in blocks}
    name = scorer if isinstance(scorer, str) else getattr(scorer, "__qualname__", repr(scorer))
    return BlockScores(name, MappingProxyType(raw), tuple(getattr(fn, "needs", ())))


def _resolve(scorer: Any) -> Callable:
    return BLOCK_SCORERS.resolve(scorer, "block_scorer", "fn(ctx) -> float")


@register_block_scorer("branch_norm")
def branch_norm(ctx: BlockContext) -> float:
    """The L2 norm of the parameters each branch ends in (an output projection, a last norm's scale):
    a branch that writes little into the residual stream matters little. Data-free."""
    return float(sum(ctx.tensors[f].detach().double().pow(2).sum() for f in ctx.block.branches) ** 0.5)


@register_block_scorer("angular", needs=("blocks",))
def angular(ctx: BlockContext) -> float:
    """ShortGPT's block influence: mean over samples of 1 - cos(input, output)."""
    return ctx.stats.block_turn[ctx.block.fqn]


@register_block_scorer("bypass", needs=("bypass",))
def bypass(ctx: BlockContext) -> float:
    """What skipping this block alone costs: the loss increase, or the relative squared output change."""
    return ctx.stats.block_cost[ctx.block.fqn]
