"""Masks, options: one frozen, validated, serialisable dataclass, like ``ShrinkConfig`` for shrink."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

from ..config import _ignore_names, check_flags, check_number, check_seed
from ..errors import ConfigError
from .pattern import Pattern, parse_pattern

SCOPES = ("layer", "global")


@dataclass(frozen=True)
class SparsityConfig:
    """What ``sparsify_`` masks and how.

    ``ratio``: fraction of every masked layer's weights to zero (N:M: ``1 - N/M`` or None).
    ``pattern``: "unstructured" or "N:M" (at most N of every M consecutive inputs kept).
    ``scorer``: a name from ``list_mask_scorers()`` or ``fn(ctx) -> scores``. ``scope``: "layer"
    (the same fraction of every layer; per output row for row-wise criteria such as Wanda) or
    "global" (one ranking over all masked weights). ``ignore``: module FQNs (prefix = subtree) or
    classes left dense. ``head``: mask the output head too. ``max_batches``: calibration batches
    read at most. ``seed``: for the random criterion.

    >>> SparsityConfig(pattern="2:4").ratio
    0.5
    """

    ratio: float | None = None
    pattern: str = "unstructured"
    scorer: str | Callable = "magnitude"
    scope: str = "layer"
    ignore: tuple[str, ...] = ()
    head: bool = False
    max_batches: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        pat = self.parsed
        check_flags(head=self.head)
        if self.scope not in SCOPES:
            raise ConfigError(f"scope={self.scope!r} is not one of {SCOPES}")
        if pat.structured:
            if self.ratio is not None and abs(self.ratio - pat.ratio) > 1e-9:
                raise ConfigError(f"ratio={self.ratio!r} does not match pattern={self.pattern!r}, which zeroes "
                                  f"{pat.ratio:g} of every layer; pass ratio={pat.ratio:g} or leave it out")
            if self.scope != "layer":
                raise ConfigError(f"scope={self.scope!r} has no meaning for pattern={self.pattern!r}: N:M picks "
                                  f"within every group of {pat.m} inputs; use scope='layer'")
            object.__setattr__(self, "ratio", pat.ratio)
        else:
            check_number("ratio", self.ratio)
            if not 0 <= self.ratio < 1:
                raise ConfigError(f"ratio={self.ratio!r} is outside [0, 1): it is the fraction of every masked "
                                  f"layer's weights to zero, e.g. ratio=0.5")
        if self.max_batches is not None and (not isinstance(self.max_batches, int) or self.max_batches < 1):
            raise ConfigError(f"max_batches={self.max_batches!r} must be an integer >= 1 or None")
        check_seed(self.seed)
        object.__setattr__(self, "ignore", _ignore_names(self.ignore))

    @property
    def parsed(self) -> Pattern:
        return parse_pattern(self.pattern)

    def to_dict(self) -> dict[str, Any]:
        data = {**asdict(self), "ignore": list(self.ignore)}
        if not isinstance(self.scorer, str):
            data["scorer"] = getattr(self.scorer, "__qualname__", repr(self.scorer))
        return data
