"""Groups, plan and surgery helper: the attributes a binding names (``num_heads``,
``config.num_heads``, ``split_sizes[1]``), read, written and identified as one attribute across the
modules sharing it, and the groups that would give one attribute two widths frozen."""
from __future__ import annotations

import re
from typing import Any

import numpy as np

# what a binding may name: a public attribute, of an object reached by public attributes, or one
# item of a list attribute (``num_heads``, ``config.num_heads``, ``attn.num_heads``, ``split_sizes[1]``)
ATTR_NAME = re.compile(r"[A-Za-z]\w*(\.[A-Za-z]\w*)*(\[\d+\])?")


def attr_path(obj: Any, dotted: str) -> tuple[Any, str]:
    """The object holding a possibly dotted attribute, and the attribute's last name: a binding may
    name ``config.num_attention_heads`` when the module's code reads the width from its config, or
    one item of a list attribute, ``split_sizes[1]`` (the leaf then keeps its index).

    >>> import types
    >>> attr_path(types.SimpleNamespace(config=types.SimpleNamespace(n=4)), "config.n")[1]
    'n'
    """
    *path, leaf = dotted.split(".")
    for part in path:
        obj = getattr(obj, part)
    return obj, leaf


def _item(leaf: str) -> tuple[str, int | None]:
    name, _, index = leaf.partition("[")
    return (name, int(index.rstrip("]"))) if index else (name, None)


def get_attr(obj: Any, dotted: str) -> Any:
    """The value a binding names: ``num_heads``, ``config.num_heads`` or ``split_sizes[1]``.

    >>> import types
    >>> get_attr(types.SimpleNamespace(sizes=[4, 2]), "sizes[1]")
    2
    """
    owner, leaf = attr_path(obj, dotted)
    name, index = _item(leaf)
    value = getattr(owner, name)
    return value if index is None else value[index]


def set_attr(obj: Any, dotted: str, value: Any) -> None:
    """Write what ``get_attr`` reads. An item of a list is written into a new list (tuples stay
    tuples), so a snapshot holding the old list can restore it.

    >>> import types
    >>> o = types.SimpleNamespace(sizes=(4, 2)); set_attr(o, "sizes[0]", 3); o.sizes
    (3, 2)
    """
    owner, leaf = attr_path(obj, dotted)
    name, index = _item(leaf)
    if index is not None:
        items = list(getattr(owner, name))
        items[index] = value
        old = getattr(owner, name)
        value = type(old)(items) if isinstance(old, tuple) else items
    setattr(owner, name, value)


def owner_key(model: Any, fqn: str, attr: str) -> tuple[int, str]:
    """Identity of the attribute a binding writes: every layer's ``config.num_attention_heads`` is
    one attribute when the layers share their config, and an item of one list shared by several
    modules is one attribute too."""
    owner, leaf = attr_path(model.get_submodule(fqn), attr)
    name, index = _item(leaf)
    if index is not None:
        return id(getattr(owner, name)), f"[{index}]"
    return id(owner), leaf


def shared_attr(attr: str) -> bool:
    """Whether a binding's attribute may be read by other modules too (on a config, or a list item)."""
    return "." in attr or "[" in attr


def one_width_per_attr(groups: list[Any], c: Any, ch: Any) -> list[Any]:
    """Groups stage: an attribute bound to several dims must give each the same width. Where one of
    those dims stays (``head_dim`` sizes the frozen query heads and the prunable values alike), the
    groups that would change it are frozen; where independent groups would each change it, too.
    ``c``: the coupling, ``ch``: its ``channels.Channels``."""
    from dataclasses import replace

    from .channels import label_reasons

    model = c.traced.model
    which, reasons = label_reasons(c.graph, ch, "frozen")
    index = {s: i for i, s in enumerate(ch.slots)}
    dims: dict[tuple, dict[Any, str | None]] = {}
    shared: set[tuple] = set()  # a config field or list item several layers read: plan.py ties their counts
    for bnd in c.bindings:
        if bnd.slot in index:
            labs = np.unique(ch.space_labels(int(ch.space[index[bnd.slot]])))
            why = next((reasons[which[l]] for l in labs.tolist() if which[l] >= 0), None)
            key = owner_key(model, bnd.fqn, bnd.attr)
            dims.setdefault(key, {})[bnd.slot] = why
            if shared_attr(bnd.attr):
                shared.add(key)
    holders: dict[tuple, list[int]] = {}
    for i, grp in enumerate(groups):
        if grp.prunable:
            for key in {owner_key(model, a.fqn, a.attr) for a in grp.attrs}:
                holders.setdefault(key, []).append(i)
    out = list(groups)
    for key, found in dims.items():
        live = holders.get(key, [])
        if len(found) < 2 or not live:
            continue
        stays = next((why for why in found.values() if why), None)
        if stays is None and (len(live) < 2 or key in shared):
            continue
        name = next(f"{a.fqn or '<root>'}.{a.attr}" for a in groups[live[0]].attrs if owner_key(model, a.fqn, a.attr) == key)
        why = (f"{name} also sizes a dim that stays ({stays})" if stays else
               f"{name} sizes dims of {len(live)} independent groups, which would each change it")
        for i in live:
            out[i] = replace(out[i], frozen=why) if out[i].frozen is None else out[i]
    return out
