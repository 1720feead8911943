"""Source reading, attributes: the ``self.x`` paths a statement reads, resolved on the module, to
find the attribute (or config field) that holds a width the graph shows as a number."""
from __future__ import annotations

import ast
import re
import textwrap
from typing import Any

from torch import fx, nn

from .frames import NAME, function_source, statement_source

def attribute_paths(expr_or_text: ast.AST | str) -> list[str]:
    """Dotted attribute paths read from ``self`` (``self.attn.num_heads`` -> ``attn.num_heads``),
    with a constant or ``self``-attribute subscript kept (``self.heads[self.stage]``).

    >>> attribute_paths("x.view(B, self.heads[1], self.cfg.dim // self.n)")
    ['heads[1]', 'cfg.dim', 'n']
    """
    tree = _parse(expr_or_text) if isinstance(expr_or_text, str) else expr_or_text
    if tree is None:
        return []
    out: list[str] = []
    for node in ast.walk(tree):
        path = _self_path(node)
        if path and not any(p == path or p.startswith(path + ".") or p.startswith(path + "[") for p in out):
            out.append(path)
    return out


def _parse(text: str) -> ast.AST | None:
    try:
        return ast.parse(textwrap.dedent(text).strip())
    except SyntaxError:
        return None


def _self_path(node: ast.AST) -> str | None:
    """``self.a.b`` -> 'a.b'; ``self.a[2]`` -> 'a[2]'; anything else None."""
    if isinstance(node, ast.Subscript):
        base, index = _self_path(node.value), node.slice
        if base is None:
            return None
        if isinstance(index, ast.Constant) and type(index.value) is int:
            return f"{base}[{index.value}]"
        inner = _self_path(index)
        return f"{base}[{inner}]" if inner and "[" not in inner else None
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id == "self" and parts:
        return ".".join(reversed(parts))
    return None


def resolve(obj: Any, path: str) -> tuple[str, Any] | None:
    """``(canonical path, value)`` of an attribute path on ``obj``; a subscript by another
    attribute is evaluated (``heads[stage]`` -> ``heads[2]``). None if it does not resolve.

    >>> import types
    >>> resolve(types.SimpleNamespace(heads=[2, 4, 8], stage=1), "heads[stage]")
    ('heads[1]', 4)
    """
    match = re.fullmatch(r"([\w.]+)(?:\[([\w.]+)\])?", path)
    if match is None:
        return None
    base, index = match.groups()
    try:
        value = _get(obj, base)
        if index is None:
            return path, value
        i = int(index) if index.lstrip("-").isdigit() else _get(obj, index)
        return (f"{base}[{i}]", value[i]) if type(i) is int and isinstance(value, (list, tuple)) else None
    except Exception:  # noqa: BLE001 - a property of an arbitrary object may raise anything
        return None


def _get(obj: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def int_attrs_named(mod: nn.Module, text: str, size: int) -> list[str]:
    """Attribute paths the statement reads from ``self`` (``self.x``, ``self.sub.x``,
    ``self.xs[i]``) whose value is the int ``size``."""
    found = []
    for path in attribute_paths(text):
        got = resolve(mod, path)
        if got is not None and type(got[1]) is int and got[1] == size:
            found.append(got[0])
    return sorted(set(found))


def list_attr_matching(mod: nn.Module, text: str, sizes: list[int]) -> str | None:
    """A list/tuple attribute the statement reads whose value is exactly ``sizes``
    (``torch.split(y, self.split_sizes, dim=1)``); its items are then bound one per piece."""
    for path in attribute_paths(text):
        got = resolve(mod, path)
        if got is not None and "[" not in got[0] and isinstance(got[1], (list, tuple)) \
                and [v for v in got[1]] == list(sizes) and all(type(v) is int for v in got[1]):
            return got[0]
    return None


def attr_read_at(node: fx.Node, mod: Any, value: int, among: tuple[str, ...] | None, config: bool) -> str | None:
    """An int attribute equal to ``value`` that the code reads as ``self.x`` (or ``config.x`` with
    ``config``): in the node's own statement first (Phi-3's key cut names
    ``self.num_key_value_heads`` even when it equals the query head count), then anywhere in the
    function before it. ``among`` limits the names tried (default: every name in the text)."""
    if value < 2:
        return None
    cfg = getattr(mod, "config", None) if config else None
    holders = [("", "self.", mod)] + ([("config.", "config.", cfg)] if hasattr(cfg, "to_dict") else [])
    for text in (statement_source(node), function_source(node)):
        names = set(NAME.findall(text))
        for name in among or sorted(names):
            for prefix, access, holder in holders:
                if name in names and re.search(rf"\b{re.escape(access + name)}\b", text) and _int(holder, name) == value:
                    return prefix + name
    return None


def _int(holder: Any, name: str) -> int | None:
    try:
        value = getattr(holder, name, None)
    except Exception:  # noqa: BLE001 - a property of an arbitrary object may raise anything
        return None
    return value if type(value) is int else None
