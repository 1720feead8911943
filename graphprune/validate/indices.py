"""Plan checks, kept indices: every index in range, sorted and unique, and coupled tensors left
with matching widths."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import PlanError
from .core import Target, plan_check


@plan_check("keep")
def check_keep(t: Target) -> None:
    """Every kept index list names a tensor and dim of the model, is sorted, unique and in range,
    and leaves each dim the width its coupled groups say (so coupled tensors stay consistent)."""
    for fqn, dims in t.plan.keep.items():
        if fqn not in t.tensors:
            raise PlanError(f"plan field keep[{fqn!r}]: the model has no parameter or buffer {fqn!r}")
        for d, ix in dims.items():
            check_indices(ix, t.tensors[fqn], f"keep[{fqn!r}][{d}]", d)
    _check_coupled(t)


def check_indices(ix: list[int], tensor: torch.Tensor, field: str, dim: int) -> None:
    """Indices kept along ``dim`` of ``tensor``: at least one, sorted, unique, in range.

    >>> check_indices([0, 2, 2], torch.zeros(4), "keep['w'][0]", 0)
    Traceback (most recent call last):
    graphprune.errors.PlanError: plan field keep['w'][0]: index 2 appears twice; kept indices are sorted and unique
    """
    if not 0 <= dim < tensor.dim():
        raise PlanError(f"plan field {field}: dim {dim} does not exist in a tensor of shape {tuple(tensor.shape)}")
    if not ix:
        raise PlanError(f"plan field {field}: keeps no index; a pruned dim keeps at least one")
    size = tensor.shape[dim]
    if min(ix) < 0:  # on Python ints first: a forged 10**30 would overflow int64
        raise PlanError(f"plan field {field}: negative index {min(ix)}; kept indices count from 0")
    if max(ix) >= size:
        raise PlanError(f"plan field {field}: index {max(ix)} is out of range for dim {dim} of size {size}")
    a = np.asarray(ix, dtype=np.int64)
    step = np.diff(a)
    if (step == 0).any():
        raise PlanError(f"plan field {field}: index {int(a[1:][step == 0][0])} appears twice; kept indices "
                        f"are sorted and unique")
    if (step < 0).any():
        k = int(np.argmax(step < 0))
        raise PlanError(f"plan field {field}: index {int(a[k + 1])} comes after {int(a[k])}; kept indices "
                        f"are sorted ascending")


def removed_per_dim(t: Target) -> dict[tuple[str, Any], tuple[int, list[int]]]:
    """(fqn, dim or attribute) -> (units removed times indices per unit, ids of the groups)."""
    out: dict[tuple[str, Any], tuple[int, list[int]]] = {}
    for gid, members in t.plan.coupled.items():
        if gid not in t.plan.removed:
            raise PlanError(f"plan field coupled[{gid}]: group {gid} is not in the plan's removed groups")
        units = t.plan.removed[gid]
        if len(set(units)) != len(units) or any(u < 0 for u in units):
            raise PlanError(f"plan field removed[{gid}]: units {units} must be unique and >= 0")
        for fqn, where, per in members:
            n, ids = out.get((fqn, where), (0, []))
            out[(fqn, where)] = (n + len(units) * per, ids + [gid])
    missing = sorted(set(t.plan.removed) - set(t.plan.coupled))
    if missing:
        raise PlanError(f"plan field coupled: removed group {missing[0]} has no coupled members listed")
    return out


def _check_coupled(t: Target) -> None:
    removed = removed_per_dim(t)
    for (fqn, dim), (n, ids) in removed.items():
        if isinstance(dim, str):
            continue  # attributes: check_attrs
        if fqn not in t.tensors or not 0 <= dim < t.tensors[fqn].dim():
            raise PlanError(f"plan field coupled[{ids[0]}]: the model has no tensor dim {fqn}:{dim}")
        kept = t.plan.keep.get(fqn, {}).get(dim)
        size = t.tensors[fqn].shape[dim]
        if (size if kept is None else len(kept)) != size - n:
            has = "keeps every index" if kept is None else f"keeps {len(kept)} indices"
            raise PlanError(f"plan field keep[{fqn!r}][{dim}] {has} of {size}, but group(s) {ids} remove {n} "
                            f"of them: coupled tensors would disagree on this width")
    for fqn, dims in t.plan.keep.items():
        for d in dims:
            if (fqn, d) not in removed:
                raise PlanError(f"plan field keep[{fqn!r}][{d}] prunes a dim that no removed group couples "
                                f"(plan field coupled): it would change alone")
