"""Plan and surgery helper: the attributes a binding names (``num_heads``, ``config.num_heads``,
``split_sizes[1]``), read, written and identified as one attribute across the modules sharing it."""
from __future__ import annotations

from typing import Any


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
