"""Plan checks, removed modules: whole blocks a plan removes exist, and the counts it rewrites match."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import PlanError
from .core import Target, plan_check
from .indices import check_indices


@plan_check("structure")
def check_structure(t: Target) -> None:
    """``replace`` names a submodule (never the root) and a known replacement; ``drop_entries`` names
    a ``ModuleList``, sorted unique indices in range that leave at least one entry, and as ``count``
    a config field that holds the list's length; no module is removed twice."""
    from ..actions import REPLACEMENTS

    gone: list[str] = []
    for i, a in enumerate(t.plan.structure):
        field = f"plan field actions ({a.op} {a.module!r})"
        module = _module(t.model, a.module, field)
        if a.op == "replace":
            if not a.module or a.by not in REPLACEMENTS:
                raise PlanError(f"{field}: replaces {'the root' if not a.module else 'it'} by {a.by!r}; a plan "
                                f"replaces a submodule by one of {REPLACEMENTS}")
            gone.append(a.module)
            continue
        if not isinstance(module, nn.ModuleList):
            raise PlanError(f"{field}: {type(module).__name__} is no ModuleList; only list entries are dropped")
        check_indices(list(a.indices), torch.empty(len(module)), field, 0)
        if len(a.indices) >= len(module):
            raise PlanError(f"{field}: drops all {len(module)} entries; a list keeps at least one")
        if a.count:
            _check_count(t.model, a.count, len(module), field)
        gone += [f"{a.module}.{j}" for j in a.indices]
    for a, b in zip(sorted(gone), sorted(gone)[1:]):
        if b == a or b.startswith(a + "."):
            raise PlanError(f"plan field actions: {b!r} is removed twice (also by the removal of {a!r})")


def _module(model: nn.Module, fqn: str, field: str) -> nn.Module:
    try:
        return model.get_submodule(fqn)
    except AttributeError as err:
        raise PlanError(f"{field}: the model has no module {fqn!r}") from err


def _check_count(model: nn.Module, dotted: str, n: int, field: str) -> None:
    cfg = getattr(model, "config", None)
    *path, leaf = dotted.split(".")
    owner = cfg
    for part in path:
        owner = getattr(owner, part, None)
    if not hasattr(cfg, "to_dict") or any(p.startswith("_") for p in dotted.split(".")) \
            or getattr(owner, leaf, None) != n or type(getattr(owner, leaf, None)) is not int:
        raise PlanError(f"{field}: count {dotted!r} is not a config field holding the list's length {n}")
