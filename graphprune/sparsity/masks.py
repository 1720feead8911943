"""Masks, the stage: score every maskable weight, turn the scores into keep-masks of the asked
pattern, and attach them with ``torch.nn.utils.parametrize`` (so training keeps the zeros);
``make_dense_`` bakes them into plain weights. A sibling of the structural pipeline: no groups."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..calibrate import Stats, calibrate
from ..config import check_flags
from ..errors import CalibrationError, ConfigError, SparsityError
from ..options import resolve_ignore
from ..trace import check_module
from . import pattern as patterns
from .config import SparsityConfig
from .layers import Candidate, choose_layers
from .pattern import Pattern
from .scorers import MaskContext, resolve_mask_scorer


class Mask(nn.Module):
    """A parametrization ``weight -> weight * mask`` with the mask as a boolean buffer."""

    def __init__(self, mask: torch.Tensor, pattern: str):
        super().__init__()
        self.register_buffer("mask", mask.to(torch.bool))
        self.pattern = pattern

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask

    def extra_repr(self) -> str:
        return f"pattern={self.pattern}, sparsity={1 - self.mask.float().mean().item():.3f}"


@dataclass(frozen=True)
class MaskedLayer:
    fqn: str
    shape: tuple[int, ...]
    sparsity: float  # fraction of the weight the mask zeroes


@dataclass(frozen=True)
class SparsityReport:
    """What ``sparsify_`` masked, and which layers it left dense and why."""

    pattern: str
    scorer: str
    scope: str
    masked: tuple[MaskedLayer, ...]
    dense: tuple[tuple[str, str], ...]  # (module FQN, why it stays dense)
    calibration_batches: int = 0

    @property
    def sparsity(self) -> float:
        """Zeroed fraction of the masked weights, all layers together."""
        sizes = [torch.Size(m.shape).numel() for m in self.masked]
        return sum(m.sparsity * n for m, n in zip(self.masked, sizes)) / max(sum(sizes), 1)

    def __str__(self) -> str:
        lines = [f"{self.pattern} masks ({self.scorer}, scope {self.scope}) on {len(self.masked)} layers: "
                 f"{self.sparsity:.1%} of their weights are zero"]
        lines += [f"  masked: {m.fqn} {list(m.shape)} {m.sparsity:.1%}" for m in self.masked[:8]]
        if len(self.masked) > 8:
            lines.append(f"  ... {len(self.masked) - 8} more masked layers")
        lines += [f"  dense: {fqn} ({why})" for fqn, why in self.dense[:12]]
        if len(self.dense) > 12:
            lines.append(f"  ... {len(self.dense) - 12} more dense layers (report.dense)")
        return "\n".join(lines)


def sparsify_(model: nn.Module, ratio: float | None = None, *, calibration: Iterable[Any] | None = None,
              example_inputs: Any = None, return_report: bool = False, **options: Any) -> Any:
    """Mask ``ratio`` of every maskable layer's weights (Linear, convs, GPT-2's Conv1D) in place.

    Options are ``SparsityConfig``'s: ``pattern`` "unstructured" or "N:M" (at most N of every M
    consecutive inputs stay; ``ratio`` is then ``1 - N/M`` or None), ``scorer`` "magnitude",
    "wanda" (reads ``calibration=`` batches) or any of ``list_mask_scorers()``, ``scope`` "layer"
    (every layer, or with Wanda every output row, loses the same fraction) or "global", ``ignore``,
    ``head``. Embeddings, norms, the output head (unless ``head=True``), tied weights and ``ignore=``
    stay dense and are listed in the report. Calling it again re-scores and grows the masks: weights
    masked before stay zero, and a ratio below the sparsity a layer already has is refused.
    ``example_inputs`` (else the first calibration batch) runs the model once to find its output
    head. Returns ``model``, or ``(model, SparsityReport)`` with ``return_report=True``.

    >>> m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    >>> _, report = sparsify_(m, pattern="2:4", head=True, return_report=True)
    >>> [layer.sparsity for layer in report.masked], bool((m[0].weight == 0).sum() == 64)
    ([0.5, 0.5], True)
    """
    check_module(model)
    check_flags(return_report=return_report)
    config = SparsityConfig(ratio=ratio, **options)
    resolve_ignore(model, config.ignore)  # a typo in ignore= is an error, as in shrink, not a dense layer missed
    pat, fn = config.parsed, resolve_mask_scorer(config.scorer)
    chosen, dense = choose_layers(model, config.ignore, config.head, _first_batch(calibration, example_inputs))
    if not chosen:
        raise SparsityError(f"no layer of {type(model).__qualname__} can be masked: "
                            f"{'; '.join(f'{f} ({w})' for f, w in dense[:5]) or 'it has no weights'}")
    if pat.structured:
        _check_widths(chosen, pat)
    stats = _stats(model, chosen, fn, config.scorer, calibration, config.max_batches)
    masks = _masks(chosen, fn, stats, pat, config)
    for cand, mask in zip(chosen, masks):  # every mask was computed before the first one is attached
        _attach_(cand, mask, str(pat))
    report = SparsityReport(str(pat), _name(config.scorer), config.scope, tuple(
        MaskedLayer(c.fqn, tuple(mask.shape), 1 - mask.float().mean().item()) for c, mask in zip(chosen, masks)),
        tuple(dense), stats.batches if stats else 0)
    return (model, report) if return_report else model


def _check_widths(chosen: list[Candidate], pat: Pattern) -> None:
    wrong = [c for c in chosen if c.weight.shape[c.layout.in_axis] % pat.m]
    if wrong:
        listed = ", ".join(f"{c.fqn} ({c.weight.shape[c.layout.in_axis]} inputs)" for c in wrong[:6])
        names = [c.fqn for c in wrong]
        raise SparsityError(f"pattern '{pat}' needs every layer's input width to be a multiple of {pat.m}; "
                            f"{len(wrong)} layer(s) are not: {listed}. Leave them dense with ignore="
                            f"{names[:20]!r}{' (and the rest)' if len(names) > 20 else ''}, choose M dividing their "
                            f"widths, or (after graphprune.shrink) shrink with round_to={pat.m} or a multiple")


def _first_batch(calibration: Any, example_inputs: Any) -> Any:
    if example_inputs is not None:
        return example_inputs
    if isinstance(calibration, (list, tuple)) and calibration:
        return calibration[0]
    return None  # a one-shot iterator is not consumed here: it is read once, by calibrate


def _stats(model: nn.Module, chosen: list[Candidate], fn: Callable, scorer: Any, batches: Any,
           max_batches: int | None) -> Stats | None:
    needs = tuple(getattr(fn, "needs", ()))
    if not needs:
        return None
    if batches is None:
        raise CalibrationError(f"scorer={_name(scorer)!r} reads calibration statistics {list(needs)}; pass "
                               f"calibration= (an iterable of input batches, e.g. 128 samples of your data)")
    modules = {c.fqn: c.layout.input_dim for c in chosen}
    return calibrate(model, None, batches, needs=needs, max_batches=max_batches, modules=modules)


@torch.no_grad()
def _masks(chosen: list[Candidate], fn: Callable, stats: Stats | None, pat: Pattern,
           config: SparsityConfig) -> list[torch.Tensor]:
    scores = []
    for c in chosen:
        ctx = MaskContext(c.fqn, c.module, c.weight, c.layout, stats.inputs.get(c.fqn) if stats else None,
                          config.seed)
        s = torch.as_tensor(fn(ctx))
        if s.shape != c.weight.shape or not torch.isfinite(s).all():
            raise ConfigError(f"scorer {_name(fn)!r} gave {tuple(s.shape)} (or non-finite values) for {c.fqn!r}; "
                              f"it must return finite scores shaped like the weight, {tuple(c.weight.shape)}")
        old = _old_mask(c.module)  # masked before: those weights are zero now and stay gone
        scores.append(s if old is None else s.masked_fill(~old, float("-inf")))
    if pat.structured:
        masks = [patterns.n_m(s, pat, c.layout) for s, c in zip(scores, chosen)]
    elif config.scope == "global":
        masks = patterns.global_masks(scores, config.ratio)
    else:
        per_row = bool(getattr(fn, "per_row", False))
        masks = [patterns.unstructured(s, config.ratio, c.layout, per_row) for s, c in zip(scores, chosen)]
    return [_grown(c, mask, pat, config.ratio) for c, mask in zip(chosen, masks)]


def _old_mask(module: nn.Module) -> torch.Tensor | None:
    return module.parametrizations.weight[0].mask if is_masked(module) else None


def _grown(cand: Candidate, mask: torch.Tensor, pat: Pattern, ratio: float | None) -> torch.Tensor:
    """A new mask on a layer masked before keeps only weights the old one kept: the others were
    zeroed in the stored weight. An N:M pattern may keep a zero in a group that has too few others
    (still at most N non-zeros); a ratio below what is already zero cannot be met, and is refused."""
    old = _old_mask(cand.module)
    if old is None:
        return mask
    lost = mask.bool() & ~old
    if lost.any() and not pat.structured:
        raise SparsityError(f"{cand.fqn!r} is masked already with {1 - old.float().mean().item():.1%} of its weights "
                            f"zero, more than ratio={ratio} asks for; masked weights are zeroed for good, so a "
                            f"mask can only grow: pass ratio >= the current sparsity, or sparsify a copy of the "
                            f"model taken before the first call")
    return mask.bool() & old


def _attach_(cand: Candidate, mask: torch.Tensor, pattern: str) -> None:
    mod = cand.module
    if is_masked(mod):
        mod.parametrizations.weight[0].mask = mask.to(torch.bool)
        mod.parametrizations.weight[0].pattern = pattern
        return
    with torch.no_grad():
        mod.weight.mul_(mask)  # the stored weight holds the zeros too: what make_dense_ bakes is the same
    parametrize.register_parametrization(mod, "weight", Mask(mask, pattern))


def is_masked(module: nn.Module) -> bool:
    """Whether ``module.weight`` carries a graphprune mask (and nothing else).

    >>> is_masked(nn.Linear(2, 2))
    False
    """
    chain = getattr(getattr(module, "parametrizations", None), "weight", None)
    return chain is not None and len(chain) == 1 and isinstance(chain[0], Mask)


def masked_layers(model: nn.Module) -> list[str]:
    """FQNs of the layers holding a graphprune mask."""
    return [fqn for fqn, mod in model.named_modules() if is_masked(mod)]


def check_no_masks(model: nn.Module) -> None:
    """Structural pruning runs on plain weights: slicing a parametrized one would leave its module's
    size attributes (``in_features``) behind, hide it from the data-aware criteria, and shift the
    groups of M inputs an N:M pattern is defined on. Structure first, then masks.

    >>> check_no_masks(nn.Linear(2, 2))
    """
    layers = masked_layers(model)
    if layers:
        raise ConfigError(f"{len(layers)} layer(s) such as {layers[0]!r} carry weight masks; prune the structure "
                          f"first and mask afterwards (for N:M, shrink with round_to=M, then sparsify_), or call "
                          f"graphprune.make_dense_(model) first so the zeros stay as plain weights")


def make_dense_(model: nn.Module) -> nn.Module:
    """Bake every graphprune mask into its weight and remove the parametrization; returns ``model``.
    The weight stays the same ``nn.Parameter`` object, so an optimizer holding it goes on working.

    >>> m = sparsify_(nn.Sequential(nn.Linear(4, 4)), 0.5, head=True)
    >>> type(make_dense_(m)[0].weight).__name__, int((m[0].weight == 0).sum())
    ('Parameter', 8)
    """
    check_module(model)
    for _, mod in sorted(model.named_modules()):
        if is_masked(mod):
            parametrize.remove_parametrizations(mod, "weight", leave_parametrized=True)
    return model


def _name(scorer: Any) -> str:
    return scorer if isinstance(scorer, str) else getattr(scorer, "__qualname__", repr(scorer))
