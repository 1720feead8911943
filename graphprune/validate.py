"""Surgery guard: check that a plan fits the model it is applied to, before any tensor changes.

A plan may come from a file, so ``apply_plan_`` trusts none of it: the format version, the model it
was made for (``fingerprint``), every kept index, that coupled tensors keep matching widths, and
that it writes only width attributes and config fields. Each kind of change a plan holds has its
own check, registered in ``PLAN_CHECKS`` (a new kind of change registers its own), and every
failure is a ``PlanError`` naming the field or index.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from .attrs import ATTR_NAME, attr_path, get_attr
from .errors import PlanError
from .registry import Registry

PLAN_CHECKS = Registry("plan check")


def plan_check(kind: str) -> Callable:
    """Register ``fn(target)`` checking one kind of change a plan holds (raise ``PlanError``)."""
    return PLAN_CHECKS.register(kind)


def fingerprint(model: nn.Module) -> str:
    """A short hash of every parameter and buffer name with its shape: equal for two builds of one
    architecture and configuration, different once either is pruned (dtype and device do not count).

    >>> fingerprint(nn.Linear(2, 3)) == fingerprint(nn.Linear(2, 3)), fingerprint(nn.Linear(2, 4)) == fingerprint(nn.Linear(2, 3))
    (True, False)
    """
    named = [(n, list(t.shape)) for n, t in named_tensors(model).items()]
    return hashlib.sha256(json.dumps(sorted(named)).encode()).hexdigest()[:16]


def named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters(remove_duplicate=False)), **dict(model.named_buffers(remove_duplicate=False))}


@dataclass(frozen=True, eq=False)
class Target:
    """What a check reads: the model, its tensors by every name, and the plan."""

    model: nn.Module
    tensors: dict[str, torch.Tensor]
    plan: Any


def check_plan(model: nn.Module, plan: Any) -> None:
    """Raise ``PlanError`` unless ``plan`` (a ``Plan``) can be applied to ``model`` as it is now.

    >>> from graphprune.plan import Plan
    >>> check_plan(nn.Linear(2, 2), Plan((), {}, {}, 6, 6, fingerprint="0" * 16))
    Traceback (most recent call last):
    graphprune.errors.PlanError: the plan was made for another model ...
    """
    from .plan import PLAN_VERSION, REMAKE

    if plan.version != PLAN_VERSION:
        raise PlanError(f"the plan is plan format version {plan.version!r}; this graphprune applies format "
                        f"{PLAN_VERSION} only. {REMAKE}")
    target = Target(model, named_tensors(model), plan)
    _check_fingerprint(target)
    for kind in PLAN_CHECKS:
        PLAN_CHECKS[kind](target)


def _check_fingerprint(t: Target) -> None:
    have = fingerprint(t.model)
    if t.plan.fingerprint == have:
        return
    if not t.plan.fingerprint:
        raise PlanError("the plan has no fingerprint of the model it was made for, so it cannot be checked; "
                        "make it with graphprune.make_plan")
    made_for = f"{t.plan.model_class or 'a model'} with {t.plan.params_before:,} parameters"
    n = sum(p.numel() for p in t.model.parameters())
    raise PlanError(f"the plan was made for another model ({made_for}, fingerprint {t.plan.fingerprint}); this "
                    f"{type(t.model).__qualname__} has {n:,} parameters (fingerprint {have}){_first_misfit(t)}. "
                    f"Apply a plan to an unpruned model of the architecture and configuration it was made for")


def _first_misfit(t: Target) -> str:
    for fqn, dims in t.plan.keep.items():
        if fqn not in t.tensors:
            return f": it prunes {fqn!r}, which this model does not have"
        for d, ix in dims.items():
            if d < t.tensors[fqn].dim() and ix and max(ix) >= t.tensors[fqn].shape[d]:
                return (f": it keeps index {max(ix)} of {fqn}:{d}, which has size {t.tensors[fqn].shape[d]} here "
                        f"(a different, or already pruned, model)")
    return ""


# -- kept indices --------------------------------------------------------------------------------

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
    a = np.asarray(ix, dtype=np.int64)
    size = tensor.shape[dim]
    if a.min() < 0:
        raise PlanError(f"plan field {field}: negative index {int(a.min())}; kept indices count from 0")
    if a.max() >= size:
        raise PlanError(f"plan field {field}: index {int(a.max())} is out of range for dim {dim} of size {size}")
    step = np.diff(a)
    if (step == 0).any():
        raise PlanError(f"plan field {field}: index {int(a[1:][step == 0][0])} appears twice; kept indices "
                        f"are sorted and unique")
    if (step < 0).any():
        k = int(np.argmax(step < 0))
        raise PlanError(f"plan field {field}: index {int(a[k + 1])} comes after {int(a[k])}; kept indices "
                        f"are sorted ascending")


def _removed_per_dim(t: Target) -> dict[tuple[str, Any], tuple[int, list[int]]]:
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
    removed = _removed_per_dim(t)
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


# -- attributes and config fields ---------------------------------------------------------------

@plan_check("attrs")
def check_attrs(t: Target) -> None:
    """Attributes a plan writes: only width attributes the plan's groups bind (with the value their
    removed units give) or the named width fields of ``graphprune.widths``; always an int (or a
    tuple of ints) that exists, is not a method or property, and shrinks."""
    from .widths import FIELDS

    removed = _removed_per_dim(t)
    names = {n for ns in FIELDS.values() for n in ns}
    for fqn, attrs in t.plan.attrs.items():
        for attr, value in attrs.items():
            field = f"plan field attrs[{fqn!r}][{attr!r}]"
            old = check_attr_write(t.model, fqn, attr, value, field)
            if (fqn, attr) in removed:
                n, ids = removed[(fqn, attr)]
                want = (old[0] - n,) if isinstance(old, tuple) else old - n
                if _as_value(value) != want:
                    raise PlanError(f"{field} is {value!r}, but group(s) {ids} remove {n} of its "
                                    f"{old!r}: it must be {want!r}")
            elif attr not in names:
                raise PlanError(f"{field}: {attr!r} is neither bound to a removed group (plan field "
                                f"coupled) nor a width field ({', '.join(sorted(names))}); a plan does not "
                                f"write other attributes")


def _as_value(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def check_attr_write(model: nn.Module, fqn: str, attr: str, value: Any, field: str) -> Any:
    """The current value of a width attribute that may become ``value``; PlanError otherwise."""
    try:
        module = model.get_submodule(fqn)
    except AttributeError as err:
        raise PlanError(f"{field}: the model has no module {fqn!r}") from err
    if not ATTR_NAME.fullmatch(attr):
        raise PlanError(f"{field}: {attr!r} is not a public attribute name (or an item of a list attribute)")
    try:
        owner, leaf = attr_path(module, attr)
    except AttributeError as err:
        raise PlanError(f"{field}: {fqn or '<root>'} has no attribute {attr!r}") from err
    leaf = leaf.split("[")[0]
    if isinstance(owner, torch.Tensor) or (isinstance(owner, nn.Module) and all(owner is not m for m in module.modules())):
        raise PlanError(f"{field}: {attr!r} reaches outside the module; name that module instead")
    declared = getattr(type(owner), leaf, None)
    if callable(declared) or (isinstance(declared, property) and declared.fset is None):
        raise PlanError(f"{field}: {attr!r} is a method or read-only property of "
                        f"{type(owner).__name__}, not a width")
    try:
        old = get_attr(module, attr)
    except (AttributeError, IndexError, TypeError) as err:
        raise PlanError(f"{field}: {fqn or '<root>'} has no attribute {attr!r}; a plan only changes "
                        f"widths that exist") from err
    if not _is_width(old):
        raise PlanError(f"{field}: {fqn or '<root>'}.{attr} is {old!r}, not a width (an integer); "
                        f"a plan writes only widths")
    new = _as_value(value)
    if not _is_width(new) or type(new) is not type(old) or _len(new) != _len(old) or _gt(new, old):
        raise PlanError(f"{field}: {value!r} cannot replace {old!r}; a width attribute only "
                        f"shrinks and stays >= 1")
    return old


def _is_width(v: Any) -> bool:
    items = v if isinstance(v, tuple) else (v,)
    return bool(items) and all(type(x) is int and x >= 1 for x in items)


def _len(v: Any) -> int:
    return len(v) if isinstance(v, tuple) else 1


def _gt(a: Any, b: Any) -> bool:
    return any(x > y for x, y in zip(a if isinstance(a, tuple) else (a,), b if isinstance(b, tuple) else (b,)))


@plan_check("model_config")
def check_model_config(t: Target) -> None:
    """Config fields a plan writes: width fields of ``model.config`` (or a nested config), or ``head_dim``."""
    from .widths import FIELDS

    if not t.plan.model_config:
        return
    cfg = getattr(t.model, "config", None)
    if not hasattr(cfg, "to_dict"):
        raise PlanError(f"plan field model_config sets {sorted(t.plan.model_config)} but "
                        f"{type(t.model).__qualname__} has no config (model.config)")
    names = {n for ns in FIELDS.values() for n in ns} | {"head_dim"}
    for dotted, value in t.plan.model_config.items():
        *path, leaf = dotted.split(".")
        if leaf not in names or len(path) > 1 or any(p.startswith("_") for p in path):
            raise PlanError(f"plan field model_config[{dotted!r}]: not a width field of the config "
                            f"({', '.join(sorted(names))}, or one of a nested config)")
        owner = getattr(cfg, path[0], None) if path else cfg
        if not hasattr(owner, "to_dict"):
            raise PlanError(f"plan field model_config[{dotted!r}]: the config has no nested config {path[0]!r}")
        if type(value) is not int or value < 1:
            raise PlanError(f"plan field model_config[{dotted!r}] must be an integer >= 1, got {value!r}")


# -- removed modules ------------------------------------------------------------------------------

@plan_check("structure")
def check_structure(t: Target) -> None:
    """``replace`` names a submodule (never the root) and a known replacement; ``drop_entries`` names
    a ``ModuleList``, sorted unique indices in range that leave at least one entry, and as ``count``
    a config field that holds the list's length; no module is removed twice."""
    from .actions import REPLACEMENTS

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
