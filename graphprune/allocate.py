"""Stage 5 helper, allocation: how many units each group loses so the model reaches the ratio.

``Cost`` prices removal counts exactly (parameters, or estimated MACs, of the model that would
remain); ``search`` finds the smallest prefix of the global ranking (or, with ``scope="local"``,
of every group's quantiles) that reaches the target, within ``min_keep``, ``round_to``,
``max_fraction`` and shared-attribute ties. ``plan.make_plan`` turns the counts into a ``Plan``.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Iterable, Mapping, Sequence

import networkx as nx
import numpy as np
from torch import nn

from .attrs import owner_key, shared_attr
from .config import ShrinkConfig
from .errors import PlanError
from .groups import Group, Groups


def size_weights(model: nn.Module, groups: Groups, target: str) -> tuple[dict[str, float], float]:
    """What each parameter counts for (its size, or the MACs of the module it weighs) and the total."""
    if target == "macs":
        from .report import macs_by_param
        return macs_by_param(model, groups.traced.inputs)
    return ({f: float(p.numel()) for f, p in model.named_parameters()},
            float(sum(p.numel() for p in model.parameters())))


class Cost:
    """Exact size of the model (parameters, or estimated MACs) for per-group removal counts."""

    def __init__(self, model: nn.Module, live: list[Group], groups: Groups, target: str,
                 gone: frozenset[str] = frozenset(), sizes: tuple[dict[str, float], float] | None = None):
        params = dict(model.named_parameters())
        self.shapes = {f: list(p.shape) for f, p in params.items()}
        weight, self.total = sizes or size_weights(model, groups, target)
        self.terms = [[(m.fqn, m.dim, m.indices.shape[1]) for m in g.members if m.fqn in params] for g in live]
        self.touched = sorted({f for t in self.terms for f, _, _ in t})
        # tensors of removed blocks (``gone``) count as removed whole, however their dims are sliced
        self.fixed = self.total - sum(weight.get(f, 0.0) for f in set(self.touched) | gone)
        self.weight = {f: 0.0 if f in gone else w for f, w in weight.items()}

    def size(self, counts: list[int]) -> float:
        dims = {f: list(self.shapes[f]) for f in self.touched}
        for terms, r in zip(self.terms, counts):
            for f, d, k in terms:
                dims[f][d] -= r * k
        return self.fixed + sum(self.weight.get(f, 0.0) * math.prod(dims[f]) / math.prod(self.shapes[f])
                                for f in self.touched)

    def unit_cost(self, i: int) -> float:
        return sum(self.weight.get(f, 0.0) * k / self.shapes[f][d] for f, d, k in self.terms[i]) or 1e-12


def _shared_attrs(model: nn.Module, groups: list[Group]) -> list[set[tuple[int, str]]]:
    """Per group, the attributes it binds on an object other than its module: a config that every
    layer reads (Phi-3 cuts its fused qkv at ``config.num_attention_heads * head_dim``)."""
    return [{owner_key(model, a.fqn, a.attr) for a in g.attrs if shared_attr(a.attr)} for g in groups]


def tie_shared(model: nn.Module, live: list[Group], every: tuple[Group, ...]) -> tuple[list[Group], list[set]]:
    """Groups binding one shared attribute must keep one width (``_blocks`` gives them one count).
    A group is left out when a group that is not pruned (frozen, ignored, another kind) binds the
    same attribute, or one of another width does: no count would fit both."""
    shared = _shared_attrs(model, live)
    ids = {id(g) for g in live}
    held = set().union(*_shared_attrs(model, [g for g in every if id(g) not in ids]))
    widths_of: dict[Any, set[int]] = {}
    for g, keys in zip(live, shared):
        for k in keys:
            widths_of.setdefault(k, set()).add(g.width)
    ok = [i for i, keys in enumerate(shared) if not keys & held and all(len(widths_of[k]) == 1 for k in keys)]
    if len(ok) < len(live):
        dropped = next(g for i, g in enumerate(live) if i not in ok)
        warnings.warn(f"graphprune: {len(live) - len(ok)} group(s) such as {dropped.module!r} bind an attribute "
                      f"shared with groups that cannot take the same width; they stay unpruned")
    return [live[i] for i in ok], [shared[i] for i in ok]


def _blocks(live: list[Group], uniform: bool, shared: list[set] | None = None) -> list[list[int]]:
    """Groups pruned by one shared count. With ``uniform`` the groups of one kind and width (what a
    config field such as ``intermediate_size`` or ``num_attention_heads`` counts, in every layer and
    in encoder and decoder alike) form one block, so a standard config can describe the result.
    Groups binding one shared attribute (``_shared_attrs``) always form one block."""
    uf = nx.utils.UnionFind(range(len(live)))
    first: dict[tuple, int] = {}  # the first group with each key; every later one joins its block
    for i, g in enumerate(live):
        keys = [("attr", k) for k in (shared[i] if shared else ())]
        for key in keys + ([("width", g.kind, g.unit, g.width)] if uniform else []):
            uf.union(first.setdefault(key, i), i)
    return sorted((sorted(b) for b in uf.to_sets()), key=lambda b: b[0])


def search(live: list[Group], scores: dict[int, np.ndarray], cost: Cost, config: ShrinkConfig,
            shared: list[set] | None = None) -> list[int]:
    """Smallest global prefix of units (by score per unit of cost) that reaches the ratio."""
    if config.ratio == 0 or not live:
        if config.ratio > 0:
            raise PlanError(f"nothing in the model can be pruned (all groups frozen or ignored); "
                            f"largest reachable ratio is 0.0, asked for {config.ratio}")
        return [0] * len(live)
    blocks = _blocks(live, config.uniform, shared)
    unit_costs = np.array([sum(cost.unit_cost(i) for i in b) for b in blocks])
    rel = (unit_costs / np.median(unit_costs)) ** config.cost_power
    keys = np.concatenate([_keys(np.mean([np.sort(scores[live[i].id]) for i in b], axis=0), config) / rel[j]
                           for j, b in enumerate(blocks)])
    owner = np.concatenate([np.full(live[b[0]].width, j) for j, b in enumerate(blocks)])
    order = owner[np.argsort(keys, kind="stable")]
    expand = lambda per_block: _per_group(per_block, blocks, live, config)
    counts_at = lambda k: expand(np.bincount(order[:k], minlength=len(blocks)).tolist())
    frac = lambda k: 1 - cost.size(counts_at(k)) / cost.total
    best = frac(len(order))
    if best < config.ratio - config.tolerance:
        raise PlanError(f"ratio={config.ratio} is not reachable: the largest reachable ratio is "
                        f"{best:.4f} (the rest is frozen, ignored or kept by min_keep/round_to); "
                        f"see find_groups(model) for the frozen groups and why")
    lo, hi = 0, len(order)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (mid + 1, hi) if frac(mid) < config.ratio else (lo, mid)
    k = min((lo, max(lo - 1, 0)), key=lambda j: abs(frac(j) - config.ratio))
    if abs(frac(k) - config.ratio) <= config.tolerance:
        return counts_at(k)
    start = max(lo - 1, 0)
    topped = _top_up(np.bincount(order[:start], minlength=len(blocks)).tolist(), order[start:], expand, cost, config)
    if topped is not None:
        return topped
    raise PlanError(f"ratio={config.ratio:.4g} cannot be met within +-{config.tolerance:.4g}: the units are "
                    f"coarse here and the nearest reachable ratios are {frac(start):.4f} and "
                    f"{frac(lo):.4f}; ask for one of those or pass a larger tolerance=")


def _keys(sorted_scores: np.ndarray, config: ShrinkConfig) -> np.ndarray:
    """Ranking keys of one block's units, lowest first. Global: the normalised scores themselves.
    Local: each unit's quantile within its block, so a prefix of the merged ranking removes the same
    fraction of every group (and the scores only decide which units of a group go).

    >>> _keys(np.array([0.1, 5.0]), ShrinkConfig(ratio=0.1, scope="local")).tolist()
    [0.25, 0.75]
    """
    if config.scope == "local":
        return (np.arange(len(sorted_scores)) + 0.5) / len(sorted_scores)
    return sorted_scores


def _per_group(per_block: list[int], blocks: list[list[int]], live: list[Group], config: ShrinkConfig) -> list[int]:
    counts = [0] * len(live)
    for c, b in zip(per_block, blocks):
        for i in b:
            counts[i] = _capped(int(c), live[i], config)
    return counts


def _top_up(per_block: list[int], rest: np.ndarray, expand, cost: Cost, config: ShrinkConfig) -> list[int] | None:
    """From a prefix just short of the target, add the next units in rank order that do not
    overshoot it: a coarse unit (a head) can make the prefix jump past the tolerance while fine
    units (MLP neurons) further down the ranking would land inside it."""
    for j in rest.tolist():
        trial = per_block.copy()
        trial[j] += 1
        removed = 1 - cost.size(expand(trial)) / cost.total
        if removed <= config.ratio + config.tolerance:
            per_block = trial
            if removed >= config.ratio - config.tolerance:
                return expand(per_block)
    return None


THIN_FROM = 8  # narrower groups (a few heads) reach their floor by design: only wider ones are reported


def emptied(groups: Iterable[Group], removed: Mapping[int, Sequence[int]],
            config: ShrinkConfig) -> list[tuple[Group, int]]:
    """(group, units kept) for the groups a global plan (``removed``: group id -> units) took down
    to the least they may keep (``min_keep``, ``round_to``), widest first: a layer left that thin
    usually carries most of the pruned model's error (layer collapse). Not reported when
    ``max_fraction`` already caps removal.

    >>> from graphprune.groups import Group
    >>> g, cfg = Group(id=0, width=64, unit="channel", members=()), ShrinkConfig(ratio=0.5, scope="global")
    >>> [(h.width, kept) for h, kept in emptied([g], {0: range(63)}, cfg)], emptied([g], {0: range(40)}, cfg)
    ([(64, 1)], [])
    """
    if config.scope != "global" or config.max_fraction < 1:
        return []
    thin = [(g, g.width - len(removed[g.id])) for g in groups
            if g.width >= THIN_FROM and g.id in removed and len(removed[g.id]) == _capped(g.width, g, config)]
    return sorted(thin, key=lambda t: -t[0].width)


def _capped(count: int, g: Group, config: ShrinkConfig) -> int:
    keep = max(g.width - count, config.min_keep, g.width - math.floor(config.max_fraction * g.width + 1e-9))
    step = math.lcm(config.round_to, g.align)
    if step > 1:
        # a multiple of the step, or the whole group: a group narrower than the step stays whole
        keep = g.width if g.width < step else min(g.width, math.ceil(keep / step) * step)
    return max(g.width - keep, 0)

