"""Stage 4, scores: one importance value per unit of every prunable group, from a named criterion.

A criterion is ``fn(ctx) -> array of shape (group.width,)`` registered by name with the statistics
it needs (``needs=("inputs",)``, see ``graphprune.calibrate``); the calibration stage collects them,
the criterion only reads ``ctx``. The older form ``fn(group, tensors)`` still works. A criterion may
return None for a group it cannot judge (no norm over its channels, no consumer ran): that group is
scored by ``l2`` instead, scaled to the judged groups' typical score, and listed in ``Scores.fallback``.
"""
from __future__ import annotations

import inspect
import warnings
from collections import ChainMap
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import nn

from . import config
from .calibrate import Stats
from .errors import CalibrationError, ConfigError
from .groups import Group, Groups
from .registry import Registry

SCORERS = Registry("scorer")
NORMALIZE = tuple(n for n in config.NORMALIZE if n != "auto")  # the plan resolves "auto"


@dataclass(frozen=True, eq=False)
class ScoreContext:
    """What a criterion may read for one group: the model's tensors and the calibration stats."""

    group: Group
    tensors: Mapping[str, torch.Tensor]  # parameters and buffers by FQN
    params: frozenset[str]  # which of them are parameters
    model: nn.Module
    stats: Stats | None = None
    seed: int = 0
    # per score() call: the dims groups need per tensor, and a cache of per-dim reductions, so a
    # tensor read from a checkpoint is read once for all its dims (``criteria.member_mass``)
    dims: Mapping[str, tuple[int, ...]] = field(default_factory=dict)
    memo: dict = field(default_factory=dict, repr=False)


@dataclass(frozen=True, eq=False)
class Scores:
    """Raw per-unit scores by group id; ``normalised`` makes groups comparable for a global ranking."""

    criterion: str
    raw: Mapping[int, np.ndarray]
    fallback: tuple[int, ...] = ()  # groups the criterion could not judge: l2, at the judged groups' scale
    needs: tuple[str, ...] = ()  # the calibration statistics the criterion read (empty: weights only)

    def normalised(self, how: str = "mean") -> dict[int, np.ndarray]:
        """Each group's scores divided by their mean, max or sum ("none": as they are).

        >>> Scores("x", {0: np.array([1.0, 3.0])}).normalised("max")[0].tolist()
        [0.3333333333333333, 1.0]
        """
        if how not in NORMALIZE:
            raise ConfigError(f"normalize={how!r} is not one of {NORMALIZE}")
        out = {}
        for gid, raw in self.raw.items():
            scale = {"mean": raw.mean(), "max": raw.max(), "sum": raw.sum(), "none": 1.0}[how]
            out[gid] = raw / scale if scale > 0 else np.ones_like(raw)
        return out


def register_scorer(name: str, needs: tuple[str, ...] = (), override: bool = False, drift: bool = False,
                    compensate: str | None = None) -> Callable:
    """Register ``fn(ctx) -> scores`` (or the older ``fn(group, tensors)``) under ``name``; ``needs``
    names the statistics ``graphprune.calibrate`` must collect for it; ``drift``: it reads what
    calibration against a reference measures (``InputStats.drift``, ``Stats.taylor_drift``), so
    iterative rounds run the original model beside the pruned one for it (and only for such);
    ``compensate``: the compensation its scores take for granted (shrink warns without it).

    >>> @register_scorer("ones", override=True)
    ... def ones(ctx): return np.ones(ctx.group.width)
    >>> "ones" in list_scorers()
    True
    """
    return SCORERS.register(name, override=override, needs=tuple(needs), drift=drift, compensate=compensate)


def list_scorers() -> list[str]:
    """Names accepted by ``scorer=``."""
    from . import criteria  # noqa: F401 - registers the built-in criteria

    return SCORERS.names()


def needs_of(scorer: Any) -> tuple[str, ...]:
    """The statistics a criterion reads (empty for data-free ones).

    >>> needs_of("activation"), needs_of("l2")
    (('inputs',), ())
    """
    return tuple(getattr(resolve_scorer(scorer), "needs", ()))


def reads_drift(scorer: Any) -> bool:
    """Whether a criterion judges units against a reference model when calibration measured one.

    >>> reads_drift("activation"), reads_drift("hessian")
    (True, False)
    """
    return bool(getattr(resolve_scorer(scorer), "drift", False))


def warn_uncompensated(scorer: Any, compensate: str | None) -> None:
    """Warn where a criterion's scores take for granted a compensation that will not be made.

    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as seen:
    ...     warnings.simplefilter("always")
    ...     warn_uncompensated("obs", None)
    >>> "compensate='lstsq'" in str(seen[0].message)
    True
    """
    want = getattr(resolve_scorer(scorer), "compensate", None)
    if want and compensate != want:
        warnings.warn(f"graphprune: scorer={_name(scorer)!r} ranks units by what is lost after compensate={want!r}, "
                      f"but compensate={compensate!r}: the kept weights are not refit and the pruned model loses "
                      f"more than the scores say; pass compensate={want!r}")


def score(model: nn.Module, groups: Groups, scorer: Any = "l2", stats: Stats | None = None,
          seed: int = 0, tensors: Mapping[str, torch.Tensor] | None = None) -> Scores:
    """Raw scores of every prunable group under ``scorer`` (a registered name or a callable).

    ``tensors`` (FQN -> tensor) replaces the model's own values, e.g. ``graphprune.checkpoint_tensors(folder)``
    for a model built on the meta device: weight criteria then read the checkpoint tensor by tensor.

    >>> import timm
    >>> from graphprune.groups import find_groups
    >>> m = timm.create_model("resnet18")
    >>> s = score(m, find_groups(m))
    >>> s.criterion, round(float(next(iter(s.normalised().values())).mean()), 6)
    ('l2', 1.0)
    """
    fn = resolve_scorer(scorer)
    missing = [n for n in getattr(fn, "needs", ()) if stats is None or n not in stats.needs]
    if missing:
        raise CalibrationError(f"scorer={_name(scorer)!r} reads calibration statistics {missing}; pass "
                               f"calibration= (an iterable of input batches) to shrink, or stats=graphprune."
                               f"calibrate(model, groups, batches, needs={missing}) to score")
    params = dict(model.named_parameters())
    own = {**params, **dict(model.named_buffers())}
    tensors = MappingProxyType(own) if tensors is None else ChainMap(tensors, own)
    dims: dict[str, set[int]] = {}
    for g in groups.prunable:
        for m in g.members:
            dims.setdefault(m.fqn, set()).add(m.dim)
    dims = MappingProxyType({f: tuple(sorted(d)) for f, d in dims.items()})
    raw, fallback, call, memo = {}, [], _caller(fn), {}
    for g in groups.prunable:
        ctx = ScoreContext(g, tensors, frozenset(params), model, stats, seed, dims, memo)
        values = call(ctx)
        if values is None:
            values, _ = SCORERS["l2"](ctx), fallback.append(g.id)
        raw[g.id] = _checked(values, g, scorer, tensors)
    raw = _on_judged_scale(raw, fallback)
    return Scores(_name(scorer), MappingProxyType(raw), tuple(fallback), tuple(getattr(fn, "needs", ())))


def _on_judged_scale(raw: dict[int, np.ndarray], fallback: list[int]) -> dict[int, np.ndarray]:
    """Scale the l2 scores of groups the criterion could not judge to the median group mean of the
    judged ones. A weight norm means nothing next to an activation norm or a loss change: ranked
    globally as it is, such a group (MoE experts behind a grouped matmul, channels a bare parameter
    reads) would go first or never. Now it ranks like a typical group, and its own l2 order still
    picks which of its units go.

    >>> _on_judged_scale({0: np.array([1.0, 3.0]), 1: np.array([10.0, 30.0])}, [1])[1].tolist()
    [1.0, 3.0]
    """
    judged = [float(v.mean()) for i, v in raw.items() if i not in fallback]
    if not fallback or not judged:
        return raw
    target = float(np.median(judged))
    return {i: v * (target / v.mean()) if i in fallback and v.mean() > 0 else v for i, v in raw.items()}


def _caller(fn: Callable) -> Callable[[ScoreContext], Any]:
    """``fn(ctx)``, or the older ``fn(group, tensors)`` for a criterion with two required arguments."""
    try:
        positional = [p for p in inspect.signature(fn).parameters.values()
                      if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty]
    except (TypeError, ValueError):
        positional = []
    return (lambda ctx: fn(ctx.group, ctx.tensors)) if len(positional) >= 2 else fn


def _checked(values: Any, g: Group, scorer: Any, tensors: Mapping[str, torch.Tensor]) -> np.ndarray:
    try:
        raw = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:  # a string, a list of tensors with grad, a dict...
        raise ConfigError(f"scorer {_name(scorer)!r} returned {type(values).__name__} {str(values)[:40]!r} for group "
                          f"{g.id} ({g.module}), not numbers; it must return one score per unit, shape "
                          f"({g.width},)") from err
    if raw.shape != (g.width,):
        raise ConfigError(f"scorer {_name(scorer)!r} returned shape {raw.shape} for group {g.id} "
                          f"({g.module}); it must return one score per unit, shape ({g.width},)")
    if not np.isfinite(raw).all():
        if getattr(resolve_scorer(scorer), "needs", ()):  # read from data: the batches are the likely cause
            raise CalibrationError(f"scorer {_name(scorer)!r} returned non-finite scores for group {g.id} "
                                   f"({g.module}): the calibration statistics hold NaN or inf; check that every "
                                   f"batch is finite (torch.isfinite(x).all()) and that the model does not "
                                   f"overflow on them (float16)")
        real = [m.fqn for m in g.members if m.fqn in tensors and tensors[m.fqn].device.type != "meta"]
        bad = [f for f in real if not torch.isfinite(tensors[f]).all()]
        cause = (f": the model's own values hold NaN or inf in {', '.join(dict.fromkeys(bad))}; load finite weights "
                 f"(a diverged checkpoint, or a half-precision overflow)") if bad else ""
        raise ConfigError(f"scorer {_name(scorer)!r} returned non-finite scores for group {g.id} ({g.module}){cause}")
    return raw


def _name(scorer: Any) -> str:
    return scorer if isinstance(scorer, str) else getattr(scorer, "__qualname__", repr(scorer))


def resolve_scorer(scorer: Any) -> Callable:
    from . import criteria  # noqa: F401 - registers the built-in criteria

    return SCORERS.resolve(scorer, "scorer", "fn(ctx) -> scores")
