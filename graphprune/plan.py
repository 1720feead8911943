"""Stage 5, plan: pick which units of which groups (and which whole blocks) to remove so the
target ratio is met (how many units each group loses: ``allocate``; which ones: the scores).

The ``Plan`` it returns (``graphprune.actions``) is self-contained: typed actions (kept indices per
tensor, width attributes, config fields, removed modules), so it serialises to JSON and re-applies
to a fresh copy of the model without tracing again.
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np
from torch import nn

from .actions import PLAN_VERSION, REMAKE, Plan  # noqa: F401 - the plan value lives with its actions
from . import widths
from .allocate import Cost, emptied, search, tie_shared
from .attrs import get_attr
from .config import ShrinkConfig
from .errors import PlanError
from .groups import Group, Groups
from .options import checked
from .scores import Scores, score
from .validate import fingerprint


def count_params(model: nn.Module) -> int:
    """Parameters counted once each (tied weights once)."""
    return sum(p.numel() for p in model.parameters())


def make_plan(model: nn.Module, groups: Groups, config: ShrinkConfig, scorer: Any = None,
              scores: Scores | None = None, stats: Any = None, blocks: Any = None, block_scores: Any = None) -> Plan:
    """Rank every prunable unit (globally, or within its group with ``scope="local"``) and remove
    the least important ones until ``config.ratio``. ``scores`` (from ``graphprune.score``) are used
    as given; otherwise ``scorer`` (default ``config.scorer``) scores, reading ``stats`` if it needs data.
    With "layers" in ``config.prune``, whole blocks go too (``graphprune.depth``): ``blocks`` and
    ``block_scores`` default to ``find_blocks`` and ``config.block_scorer``.

    >>> import timm
    >>> from graphprune.groups import find_groups
    >>> m = timm.create_model("resnet18")
    >>> plan = make_plan(m, find_groups(m), ShrinkConfig(ratio=0.3))
    >>> abs(plan.ratio - 0.3) <= 0.01
    True
    """
    config = checked(model, config)
    if scores is None:
        scores = score(model, groups, scorer or config.scorer, stats, seed=config.seed)
    config = resolve_scope(config, scores)
    hf = getattr(model, "config", None)
    if "hidden" in config.prune and hasattr(hf, "to_dict") and widths.head_dim_follows_hidden(hf):
        warnings.warn(f"graphprune: {type(hf).__name__} derives head_dim from hidden_size, so the hidden size "
                      f"stays; pruning heads and MLP widths only")
        config = dataclasses.replace(config, prune=tuple(k for k in config.prune if k != "hidden") or ("mlp",))
    if "layers" in config.prune:
        from .depth import plan_with_depth
        return plan_with_depth(model, groups, config, scores, stats, blocks, block_scores)
    return widths_plan(model, groups, config, scores)


def widths_plan(model: nn.Module, groups: Groups, config: ShrinkConfig, scores: Scores,
                gone: frozenset[str] = frozenset(), sizes: Any = None) -> Plan:
    """The width part of a plan (every kind but "layers"); ``gone`` and ``sizes``: see ``_plan_kinds``."""
    if config.uniform and hasattr(getattr(model, "config", None), "to_dict"):
        plan = _describable_plan(model, groups, config, scores, gone, sizes)
    else:
        plan = _plan_kinds(model, groups, config, scores, gone=gone, sizes=sizes)
    # judged on the plan returned, not on candidates the uniform planner tries and drops
    _warn_thin(emptied(groups, plan.removed, config))
    return plan


def resolve_scope(config: ShrinkConfig, scores: Scores) -> ShrinkConfig:
    """``"auto"`` scope and normalisation: global and unnormalised for data-aware criteria, local
    (with mean-normalised scores, which only matter in blocks) for weight-only ones. The plan
    records what ran.

    >>> c = resolve_scope(ShrinkConfig(ratio=0.1), Scores("l2", {}))
    >>> c.scope, c.normalize
    ('local', 'mean')
    """
    aware = bool(scores.needs)
    if config.scope == "auto":
        config = dataclasses.replace(config, scope="global" if aware else "local")
    if config.normalize == "auto":
        config = dataclasses.replace(config, normalize="none" if aware else "mean")
    return config


def _plan_kinds(model: nn.Module, groups: Groups, config: ShrinkConfig, all_scores: Scores, allow: Any = None,
                gone: frozenset[str] = frozenset(), sizes: Any = None) -> Plan:
    """Width plan over the groups of the kinds in ``config.prune``. ``gone``: parameters of blocks
    removed whole; groups living only in them are left alone, and the ratio counts them as removed."""
    live = [g for g in groups.prunable if kind(g) in config.prune and not _ignored(model, g, config.ignore)
            and (allow is None or allow(g)) and not _inside(g, gone)]
    live, shared = tie_shared(model, live, groups.groups)
    normalised = all_scores.normalised(config.normalize)
    missing = [g.id for g in live if g.id not in normalised]
    if missing:
        raise PlanError(f"scores= has no scores for groups {missing[:5]}; score the same groups the plan uses "
                        f"(graphprune.score(model, groups, ...))")
    scores = {g.id: normalised[g.id] for g in live}
    cost = Cost(model, live, groups, config.target, gone, sizes)
    removed = search(live, scores, cost, config, shared)
    return _build(model, live, scores, removed, config, groups)


def _warn_thin(thin: list[tuple[Group, int]]) -> None:
    if thin:
        g, kept = thin[0]
        warnings.warn(f"graphprune: the global ranking left {len(thin)} group(s) with only the units they must "
                      f"keep, such as {g.module or '<root>'!r} ({kept} of {g.width} {g.unit}s); a layer that thin "
                      f"usually carries most of the error: cap removal per group with max_fraction= (e.g. 0.9), "
                      f"or use scope='local'")


def _inside(g: Group, gone: frozenset[str]) -> bool:
    """Every tensor of ``g`` belongs to removed blocks (never true when nothing is removed: a group of
    root-level parameters alone is still live)."""
    return bool(gone) and all(m.fqn in gone for m in g.members)


def _describable_plan(model: nn.Module, groups: Groups, config: ShrinkConfig, scores: Scores,
                      gone: frozenset[str] = frozenset(), sizes: Any = None) -> Plan:
    """A uniform plan whose widths the model's own config can describe, so stock ``from_pretrained``
    rebuilds it. Kinds the config cannot express (BERT derives the head size from hidden_size //
    heads, so neither may change alone) are left out, hidden size first, with a warning."""
    from .hub import config_mismatches

    why: list[str] = []
    tried: set[tuple[str, ...]] = set()
    for drop in ((), ("hidden",), ("heads",), ("hidden", "heads")):
        kinds = tuple(k for k in config.prune if k not in drop)
        if not kinds or kinds in tried:
            continue
        tried.add(kinds)
        try:
            # a width no config field counts (BERT's pooler, a classifier's dense layer) must stay
            plan = _plan_kinds(model, groups, dataclasses.replace(config, prune=kinds), scores,
                               allow=lambda g: widths.describes(model.config, kind(g), g.width), gone=gone,
                               sizes=sizes)
        except PlanError as err:
            why.append(f"prune={kinds}: {err}")
            continue
        wrong = config_mismatches(model, plan)
        if not wrong:
            if drop:
                warnings.warn(f"graphprune: {type(model.config).__name__} cannot describe uniform pruning of "
                              f"{' and '.join(drop)} ({why[0]}); pruned {kinds} only")
            return plan
        why.append(f"prune={kinds}: {wrong[0]}")
    raise PlanError(f"no uniform plan fits {type(model.config).__name__}: {'; '.join(why)}. Use per-layer "
                    f"widths (uniform=False) and graphprune.from_pretrained, or another ratio")


def kind(g: Group) -> str:
    """'heads' (attention heads), 'hidden' (a width a layer/RMS norm normalises over: the residual
    stream of a transformer) or 'mlp' (every other channel or neuron group, conv channels included),
    as the coupling rules marked it (``Group.kind``).

    >>> from graphprune.groups import Group
    >>> kind(Group(id=0, width=4, unit="head", members=(), kind="heads"))
    'heads'
    """
    return g.kind


def _ignored(model: nn.Module, g: Group, ignore: tuple[str, ...]) -> bool:
    return bool(ignore) and any(ignored_module(model, m.fqn.rpartition(".")[0], ignore) for m in g.members)


def ignored_module(model: nn.Module, fqn: str, ignore: tuple[str, ...]) -> bool:
    """``fqn`` or a module above it is named in ``ignore`` (by FQN or class name)."""
    if not ignore:
        return False
    if any(fqn == i or fqn.startswith(i + ".") for i in ignore):
        return True
    path = fqn.split(".") if fqn else []
    return any(type(model.get_submodule(".".join(path[:k]))).__qualname__ in ignore for k in range(len(path) + 1))



def _build(model: nn.Module, live: list[Group], scores: dict[int, np.ndarray], counts: list[int],
           config: ShrinkConfig, groups: Groups) -> Plan:
    chosen = [(g, sorted(np.argsort(scores[g.id], kind="stable")[:r].tolist())) for g, r in zip(live, counts) if r]
    return plan_from_units(model, chosen, config.to_dict(), groups)


def plan_from_units(model: nn.Module, chosen: list[tuple[Group, list[int]]], config: dict[str, Any],
                    groups: Groups) -> Plan:
    """The plan that removes the given units of the given groups (kept indices, attribute values)."""
    params = dict(model.named_parameters())
    tensors = {**params, **dict(model.named_buffers())}
    drop: dict[str, dict[int, list[np.ndarray]]] = {}
    attr_drop: dict[tuple[str, str], int] = {}
    for g, units in chosen:
        for m in g.members:
            drop.setdefault(m.fqn, {}).setdefault(m.dim, []).append(m.indices[units].ravel())
        for a in g.attrs:
            attr_drop[(a.fqn, a.attr)] = attr_drop.get((a.fqn, a.attr), 0) + a.indices[units].size
    keep = {f: {d: _kept(tensors[f].shape[d], parts) for d, parts in sorted(dims.items())}
            for f, dims in sorted(drop.items())}
    attrs: dict[str, dict[str, Any]] = {}
    for (fqn, attr), n in sorted(attr_drop.items()):
        old = get_attr(model.get_submodule(fqn), attr)
        attrs.setdefault(fqn, {})[attr] = (old[0] - n,) if isinstance(old, tuple) else old - n
    counts = {g.id: len(u) for g, u in chosen}
    for fqn, values in widths.module_updates(model, list(groups), counts, kind, attrs).items():
        attrs.setdefault(fqn, {}).update(values)
    model_config = widths.config_updates(getattr(model, "config", None), list(groups), counts, kind)
    before = count_params(model)
    after = before - sum(_lost(params[f], dims) for f, dims in keep.items() if f in params)
    return Plan.build(keep=keep, attrs=attrs, model_config=model_config, removed={g.id: u for g, u in chosen},
                      config=config, params_before=before, params_after=int(after),
                      output_shapes=[list(s) for s in groups.traced.output_shapes],
                      fingerprint=fingerprint(model), model_class=type(model).__qualname__,
                      coupled={g.id: coupled_members(g) for g, _ in chosen})


def coupled_members(g: Group) -> list[list[Any]]:
    """What ``apply_plan_`` checks a plan's indices against: each member with its indices per unit."""
    return ([[m.fqn, m.dim, int(m.indices.shape[1])] for m in g.members]
            + [[a.fqn, a.attr, int(a.indices.shape[1])] for a in g.attrs])


def _kept(size: int, dropped: list[np.ndarray]) -> list[int]:
    """Indices in ``range(size)`` that none of ``dropped`` names, ascending."""
    mask = np.ones(size, dtype=bool)
    mask[np.concatenate(dropped)] = False
    return np.flatnonzero(mask).tolist()


def _lost(t: Any, dims: dict[int, list[int]]) -> int:
    shape = list(t.shape)
    for d, ix in dims.items():
        shape[d] = len(ix)
    return t.numel() - math.prod(shape)
