"""Plan checks, attribute and config writes: a plan may set only width attributes and config fields,
to values that fit what it prunes."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..attrs import ATTR_NAME, attr_path, get_attr
from ..errors import PlanError
from .core import Target, plan_check
from .indices import removed_per_dim


@plan_check("attrs")
def check_attrs(t: Target) -> None:
    """Attributes a plan writes: only width attributes the plan's groups bind (with the value their
    removed units give) or the named width fields of ``graphprune.widths``; always an int (or a
    tuple of ints) that exists, is not a method or property, and shrinks."""
    from ..widths import FIELDS

    removed = removed_per_dim(t)
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
    from ..widths import FIELDS

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
