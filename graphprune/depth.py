"""Stage 5 for depth: which removable blocks go, for a count (``layers=N``) or a share of the budget.

Blocks are ranked by their criterion (lowest first) and removed whole, so a ratio can only be met
in steps of one block: a ratio between two steps raises ``PlanError`` naming both.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from .blocks import Block, Blocks
from .errors import PlanError


@dataclass(frozen=True)
class DepthChoice:
    """The blocks to remove, their scores and the fraction of the model's size they carry."""

    blocks: tuple[Block, ...]
    scores: tuple[float, ...]
    fraction: float


def block_costs(model: nn.Module, blocks: Blocks, weight: dict[str, float] | None = None) -> dict[str, float]:
    """What each block carries: its parameters' sizes, or their ``weight`` (MACs per parameter FQN)."""
    params = dict(model.named_parameters())
    size = (lambda f: weight.get(f, 0.0)) if weight is not None else (lambda f: float(params[f].numel()))
    return {b.fqn: sum(size(f) for f in b.params if f in params) for b in blocks}


def choose_blocks(blocks: Blocks, scores: dict[str, float], costs: dict[str, float], total: float, *,
                  count: int | None = None, share: float | None = None, tolerance: float = 0.01,
                  exact: bool = False) -> DepthChoice:
    """The ``count`` lowest-scoring blocks, or as many as carry ``share`` of ``total`` (within
    ``tolerance`` when ``exact``, otherwise the most that stay at or under it).

    >>> from graphprune.blocks import Block, Blocks
    >>> bs = Blocks(tuple(Block(f"b{i}", "", i, (), ()) for i in range(4)), {}, None)
    >>> c = choose_blocks(bs, {"b0": 3.0, "b1": 1.0, "b2": 2.0, "b3": 4.0}, dict.fromkeys(["b0", "b1", "b2", "b3"], 10.0),
    ...                   100.0, share=0.2, exact=True)
    >>> [b.fqn for b in c.blocks], c.fraction
    (['b1', 'b2'], 0.2)
    """
    ranked = sorted(blocks, key=lambda b: (scores[b.fqn], b.fqn))
    if count is not None:
        if count > len(ranked):
            raise PlanError(f"layers={count} but only {len(ranked)} blocks are removable here (the most that can "
                            f"go); find_blocks(model) lists them and why the others stay")
        return _choice(ranked[:count], scores, costs, total)
    fractions = [0.0]
    for b in ranked:
        fractions.append(fractions[-1] + costs[b.fqn] / total)
    k = max(i for i, f in enumerate(fractions) if f <= share + (tolerance if exact else 1e-12))
    if exact and abs(fractions[k] - share) > tolerance:
        if len(ranked) == 0:
            raise PlanError("no block of this model is removable (find_blocks(model) says why); prune widths instead")
        above = fractions[k + 1] if k + 1 < len(fractions) else None
        raise PlanError(f"ratio={share:.4g} cannot be met by removing whole blocks: the nearest reachable ratios are "
                        f"{fractions[k]:.4f}" + (f" and {above:.4f}" if above is not None else " (every removable "
                        f"block)") + "; ask for one of those, pass layers=N, or add a width kind to prune=")
    return _choice(ranked[:k], scores, costs, total)


def _choice(chosen: list[Block], scores: dict[str, float], costs: dict[str, float], total: float) -> DepthChoice:
    return DepthChoice(tuple(chosen), tuple(scores[b.fqn] for b in chosen),
                       sum(costs[b.fqn] for b in chosen) / total if total else 0.0)


def plan_with_depth(model: nn.Module, groups: Any, config: Any, scores: Any, stats: Any = None,
                    blocks: Blocks | None = None, block_scores: Any = None) -> Any:
    """A plan removing whole blocks (``config.layers`` of them, or their share of ``config.ratio``)
    and, for the width kinds also in ``config.prune``, the rest of the ratio in widths."""
    import dataclasses

    from .blocks import blocks_from_trace
    from .criteria.blocks import score_blocks
    from .allocate import size_weights
    from .plan import plan_from_units, widths_plan
    from .surgery.blocks import layer_fields, removal_actions

    counted = layer_fields(model)
    blocks = blocks or blocks_from_trace(groups.traced, frozenset(counted))
    usable = _eligible(model, blocks, config, counted)
    block_scores = block_scores or score_blocks(model, usable, resolve_block_scorer(config, stats), stats)
    sizes = size_weights(model, groups, config.target)
    choice = _choose(usable, blocks, block_scores.raw, block_costs(model, usable, sizes[0]), sizes[1], config)
    gone = frozenset(f for b in choice.blocks for f in b.params)
    kinds = tuple(k for k in config.prune if k != "layers")
    if kinds and choice.fraction < config.ratio - config.tolerance:
        plan = widths_plan(model, groups, dataclasses.replace(config, prune=kinds, layers=None), scores, gone, sizes)
    else:
        plan = plan_from_units(model, [], config.to_dict(), groups)
    return plan.with_parts(structure=removal_actions(model, [b.fqn for b in choice.blocks], counted),
                           removed_blocks={b.fqn: s for b, s in zip(choice.blocks, choice.scores)},
                           params_after=params_after(model, plan.keep, gone),
                           config={**plan.config, "prune": list(config.prune), "layers": config.layers,
                                   "block_scorer": block_scores.criterion})


def resolve_block_scorer(config: Any, stats: Any) -> Any:
    """``"auto"``: the angular criterion where calibration measured the blocks, else ``branch_norm``."""
    if config.block_scorer != "auto":
        return config.block_scorer
    return "angular" if stats is not None and stats.block_turn else "branch_norm"


def _eligible(model: nn.Module, blocks: Blocks, config: Any, counted: dict[str, str]) -> Blocks:
    """Blocks not ignored, and with ``uniform`` on an HF model only whole layers its config counts."""
    from .plan import ignored_module

    hf = hasattr(getattr(model, "config", None), "to_dict")
    keep = tuple(b for b in blocks if not any(ignored_module(model, f.rpartition(".")[0], config.ignore)
                                              for f in (*b.params, f"{b.fqn}.")) and
                 not (config.uniform and hf and b.stack not in counted))
    return Blocks(keep, blocks.rejected, blocks.traced)


def _choose(usable: Blocks, found: Blocks, scores: dict[str, float], costs: dict[str, float], total: float,
            config: Any) -> DepthChoice:
    kinds = [k for k in config.prune if k != "layers"]
    if not usable.blocks and (config.layers or not kinds):
        why = "; ".join(f"{f}: {r}" for f, r in list(found.rejected.items())[:3])
        raise PlanError(f"no block of this model is removable{' (' + why + ')' if why else ''}; "
                        f"find_blocks(model) lists them. Prune widths instead (prune=('heads', 'mlp', 'hidden'))")
    if config.layers is not None:
        choice = choose_blocks(usable, scores, costs, total, count=config.layers)
        if kinds and choice.fraction > config.ratio + config.tolerance:
            raise PlanError(f"layers={config.layers} alone removes {choice.fraction:.4f} of the model, more than "
                            f"ratio={config.ratio}; ask for fewer layers or a larger ratio")
        return choice
    if not kinds:
        return choose_blocks(usable, scores, costs, total, share=config.ratio, tolerance=config.tolerance, exact=True)
    return choose_blocks(usable, scores, costs, total, share=config.ratio / 2)


def params_after(model: nn.Module, keep: dict[str, dict[int, list[int]]], gone: frozenset[str]) -> int:
    """Parameters left once ``keep`` is applied and the tensors in ``gone`` are removed."""
    total = 0
    for fqn, p in model.named_parameters():
        if fqn not in gone:
            shape = list(p.shape)
            for d, ix in keep.get(fqn, {}).items():
                shape[d] = len(ix)
            total += math.prod(shape)
    return total
