"""Stage 4, scores: one importance value per unit of every group, normalised to compare globally."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .errors import ConfigError
from .groups import Group, Groups
from .registry import Registry

Scorer = Callable[[Group, dict[str, torch.Tensor]], np.ndarray]
SCORERS = Registry("scorer")


def register_scorer(name: str, override: bool = False) -> Callable[[Scorer], Scorer]:
    """Register ``fn(group, tensors) -> array of shape (group.width,)`` under ``name``.

    >>> @register_scorer("ones", override=True)
    ... def ones(group, tensors): return np.ones(group.width)
    >>> "ones" in list_scorers()
    True
    """
    return SCORERS.register(name, override=override)


def list_scorers() -> list[str]:
    """Names accepted by ``scorer=``."""
    return SCORERS.names()


def _unit_norms(group: Group, tensors: dict[str, torch.Tensor], p: int) -> np.ndarray:
    """Sum over every member of the |w|^p mass of each unit's slices (buffers excluded)."""
    total = np.zeros(group.width)
    for m in group.members:
        t = tensors.get(m.fqn)
        if t is None or not t.is_floating_point():
            continue
        flat = t.detach().float().abs().pow(p).movedim(m.dim, 0).reshape(t.shape[m.dim], -1).sum(1)
        total += flat.cpu().numpy()[m.indices].sum(1)
    return total


@register_scorer("l2")
def l2(group: Group, tensors: dict[str, torch.Tensor]) -> np.ndarray:
    """Group L2 magnitude: sqrt of the summed squares of all member slices of a unit."""
    return np.sqrt(_unit_norms(group, tensors, 2))


@register_scorer("l1")
def l1(group: Group, tensors: dict[str, torch.Tensor]) -> np.ndarray:
    """Group L1 magnitude."""
    return _unit_norms(group, tensors, 1)


@register_scorer("random")
def random(group: Group, tensors: dict[str, torch.Tensor]) -> np.ndarray:
    """Uniform random scores, seeded by the group id so plans are reproducible (a baseline)."""
    return np.random.default_rng(group.id).random(group.width)


def score(model: nn.Module, groups: Groups, scorer: str | Scorer = "l2") -> dict[int, np.ndarray]:
    """Normalised scores for every prunable group: each group's scores divided by their mean.

    >>> import timm
    >>> from graphprune.groups import find_groups
    >>> m = timm.create_model("resnet18")
    >>> s = score(m, find_groups(m))
    >>> round(float(next(iter(s.values())).mean()), 6)
    1.0
    """
    fn = resolve_scorer(scorer)
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    out = {}
    for g in groups.prunable:
        raw = np.asarray(fn(g, tensors), dtype=np.float64)
        if raw.shape != (g.width,):
            raise ConfigError(f"scorer {scorer!r} returned shape {raw.shape} for group {g.id} "
                              f"({g.module}); it must return one score per unit, shape ({g.width},)")
        mean = raw.mean()
        out[g.id] = raw / mean if mean > 0 else np.ones_like(raw)
    return out


def resolve_scorer(scorer: Any) -> Scorer:
    if callable(scorer):
        return scorer
    if isinstance(scorer, str) and scorer in SCORERS:
        return SCORERS[scorer]
    raise ConfigError(f"scorer={scorer!r} is not a registered name or a callable; "
                      f"choose one of {list_scorers()} or pass fn(group, tensors) -> scores")
