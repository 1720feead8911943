"""Masks, patterns: turn per-weight scores into a keep-mask, unstructured (per layer, per output row,
or one ranking across layers) or N:M (at most N of every M consecutive inputs kept)."""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from ..errors import ConfigError
from .layout import Layout


@dataclass(frozen=True)
class Pattern:
    """``n``:``m`` keeps at most n of every m consecutive inputs; unstructured has n = m = 0."""

    n: int = 0
    m: int = 0

    @property
    def structured(self) -> bool:
        return self.m > 0

    @property
    def ratio(self) -> float:
        return 1 - self.n / self.m if self.m else 0.0

    def __str__(self) -> str:
        return f"{self.n}:{self.m}" if self.m else "unstructured"


def parse_pattern(pattern: str) -> Pattern:
    """``"unstructured"`` or ``"N:M"`` with 0 < N < M.

    >>> parse_pattern("2:4"), parse_pattern("unstructured").structured
    (Pattern(n=2, m=4), False)
    """
    if pattern == "unstructured":
        return Pattern()
    found = re.fullmatch(r"\s*(\d+)\s*:\s*(\d+)\s*", pattern) if isinstance(pattern, str) else None
    if found is None or not 0 < int(found.group(1)) < int(found.group(2)):
        raise ConfigError(f"pattern={pattern!r} is neither 'unstructured' nor 'N:M' with 0 < N < M "
                          f"(e.g. '2:4', which sparse tensor cores run)")
    return Pattern(int(found.group(1)), int(found.group(2)))


def count(ratio: float, size: int) -> int:
    """How many of ``size`` weights go at ``ratio``: the nearest whole number (halves round up).

    >>> count(0.5, 5), count(0.3, 10)
    (3, 3)
    """
    return min(size, math.floor(ratio * size + 0.5))


def _lowest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep-mask of a 2-d (rows, cols) score tensor without the k lowest of every row (stable: ties
    go to the earlier index, so masks are reproducible)."""
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k:
        keep.scatter_(1, torch.argsort(scores, dim=1, stable=True)[:, :k], False)
    return keep


def unstructured(scores: torch.Tensor, ratio: float, layout: Layout | None, per_row: bool) -> torch.Tensor:
    """Drop ``count(ratio, ...)`` of the lowest scores of the layer, or of every output row."""
    if not per_row or layout is None:
        return _lowest(scores.reshape(1, -1), count(ratio, scores.numel())).reshape(scores.shape)
    rows = scores.movedim(layout.out_axis, 0)
    keep = _lowest(rows.reshape(rows.shape[0], -1), count(ratio, rows[0].numel()))
    return keep.reshape(rows.shape).movedim(0, layout.out_axis)


def n_m(scores: torch.Tensor, pattern: Pattern, layout: Layout) -> torch.Tensor:
    """Keep the n highest of every m consecutive weights along the input axis."""
    moved = scores.movedim(layout.in_axis, -1)
    keep = _lowest(moved.reshape(-1, pattern.m), pattern.m - pattern.n)
    return keep.reshape(moved.shape).movedim(-1, layout.in_axis)


def global_masks(scores: list[torch.Tensor], ratio: float) -> list[torch.Tensor]:
    """One ranking over every layer's scores: the lowest ``count(ratio, total)`` go, wherever they are."""
    flat = torch.cat([s.reshape(-1).double().cpu() for s in scores])
    keep = _lowest(flat[None], count(ratio, flat.numel()))[0]
    return [k.reshape(s.shape).to(s.device) for k, s in zip(keep.split([s.numel() for s in scores]), scores)]
