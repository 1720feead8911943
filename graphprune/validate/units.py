"""Plan check against the model's own groups: what a plan drops must be whole units, the same
units in every tensor of a group, and none of a frozen group.

The checks of ``indices`` trust the plan's ``coupled`` field for which tensors belong together, and
a plan may come from a file: one that keeps rows 0-8 of a layer but columns 1-9 of the next has
matching widths, runs, and computes something else. This check needs the groups of the model
(``find_groups``: a trace), so ``apply_plan_`` runs it where it can trace, beside the others.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..errors import PlanError


def check_units(plan: Any, groups: Any, tensors: dict[str, torch.Tensor]) -> None:
    """Every index ``plan.keep`` drops belongs to a unit that every member of its group drops;
    no group the model freezes loses a unit (``PlanError`` naming the tensor, dim and group).

    >>> import torch, graphprune
    >>> mlp = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
    >>> groups = graphprune.find_groups(mlp, torch.randn(1, 4))
    >>> plan = graphprune.Plan.build(keep={"0.weight": {0: [0, 1, 2]}, "0.bias": {0: [0, 1, 2]},
    ...                                    "2.weight": {1: [3, 4, 5]}}, config={}, params_before=44, params_after=26)
    >>> check_units(plan, groups, dict(mlp.named_parameters()))
    Traceback (most recent call last):
    graphprune.errors.PlanError: plan field keep['2.weight'][1] drops units [0, 1, 2] of group 0 (6 channels) ...
    """
    dropped = {(f, d): _dropped(tensors[f].shape[d], ix) for f, dims in plan.keep.items() if f in tensors
               for d, ix in dims.items()}
    covered = {k: np.zeros(len(v), dtype=bool) for k, v in dropped.items()}
    inside = _removed_modules(plan)
    for g in groups:
        first = None  # (where, units) of the first member that says which units go
        for m in g.members:
            if m.fqn.startswith(inside) or m.fqn not in tensors:
                continue  # a tensor of a removed block goes whole; one not given cannot be judged
            key = (m.fqn, m.dim)
            gone = dropped.get(key, np.zeros(tensors[m.fqn].shape[m.dim], dtype=bool))
            units = _units(gone, m, g, key)
            if key in covered:
                covered[key][m.indices[units].ravel()] = True
            where = f"keep[{m.fqn!r}][{m.dim}]"
            if first is None:
                first = (where, units)
            elif not np.array_equal(first[1], units):
                raise PlanError(f"plan field {where} drops units {units.tolist()} of group {g.id} ({g.width} "
                                f"{g.unit}s) but {first[0]} drops {first[1].tolist()}: coupled tensors would "
                                f"keep different {g.unit}s and the model would compute something else")
        if first is not None and len(first[1]) and g.frozen is not None:
            raise PlanError(f"plan field {first[0]} drops {g.unit}s of group {g.id}, which is frozen: {g.frozen}")
    for (fqn, d), gone in dropped.items():
        stray = np.flatnonzero(gone & ~covered[(fqn, d)])
        if len(stray):
            raise PlanError(f"plan field keep[{fqn!r}][{d}] drops index {int(stray[0])}, which is no unit of any "
                            f"group of the model (find_groups): it would change alone")


def check_blocks(plan: Any, blocks: Any) -> None:
    """Every module a ``replace`` or ``drop_entries`` action removes is a block the model's graph
    proves to be ``input + branches`` (``find_blocks``): any other module's output is more than
    what its input already carries, and removing it would change what the model computes.

    >>> import torch, graphprune
    >>> mlp = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> plan = graphprune.Plan.build(keep={}, config={}, params_before=30, params_after=10,
    ...                              structure=[graphprune.actions.Replace("0", "identity")])
    >>> check_blocks(plan, graphprune.find_blocks(mlp, torch.randn(1, 4)))
    Traceback (most recent call last):
    graphprune.errors.PlanError: plan action replace '0' by 'identity': '0' is no block of the model ...
    """
    known = {b.fqn for b in blocks}
    for a in getattr(plan, "structure", ()):
        for fqn in _gone(a):
            if fqn not in known:
                listed = ", ".join(sorted(known)[:6]) or "none"
                raise PlanError(f"plan action {a.op} {a.module!r}{f' by {a.by!r}' if a.op == 'replace' else ''}: "
                                f"{fqn!r} is no block of the model (a module whose output is its input plus "
                                f"branches, so that it can go whole); find_blocks(model) lists them: {listed}")


def _dropped(size: int, kept: list[int]) -> np.ndarray:
    out = np.ones(size, dtype=bool)
    out[np.asarray(kept, dtype=np.int64)] = False
    return out


def _units(gone: np.ndarray, m: Any, g: Any, key: tuple[str, int]) -> np.ndarray:
    """The units of ``g`` whose every position in member ``m`` is dropped; an error for a unit
    dropped in part."""
    hit = gone[m.indices]  # (width, per)
    part = np.flatnonzero(hit.any(1) & ~hit.all(1))
    if len(part):
        raise PlanError(f"plan field keep[{key[0]!r}][{key[1]}] drops part of {g.unit} {int(part[0])} of group "
                        f"{g.id} (positions {m.indices[part[0]].tolist()}); a {g.unit} goes whole or stays")
    return np.flatnonzero(hit.all(1))


def _removed_modules(plan: Any) -> tuple[str, ...]:
    """Prefixes of the modules the plan's structure actions remove (their tensors go whole)."""
    return tuple(f"{fqn}." for a in getattr(plan, "structure", ()) for fqn in _gone(a))


def _gone(action: Any) -> list[str]:
    """The modules one ``replace`` or ``drop_entries`` action removes."""
    return [action.module] if action.op == "replace" else [f"{action.module}.{j}" for j in action.indices]
