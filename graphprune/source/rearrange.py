"""Source reading, einops: the sizes of the reshapes an ``einops.rearrange`` (or ``repeat``) call
makes, read from its pattern and its axis lengths (``rearrange(t, "b n (h d) -> b h n d", h=self.heads)``).

einops runs its own code under export, so the graph holds a plain reshape whose stack trace ends
at the user's ``rearrange`` line. A pattern that composes axes on the left makes one reshape
before the transpose (its output lists the left side's axes), one that composes on the right
makes one after it (its output lists the right side's groups). An axis given as a keyword sizes
its dim as that expression; every other size is computed by einops from the input's shape, so it
keeps up with pruning."""
from __future__ import annotations

import ast
import re

from .sizes import FROM_SHAPE

_TOKEN = re.compile(r"\(|\)|[A-Za-z_]\w*|\d+|\.\.\.|\S")


def rearrange_exprs(tree: ast.AST, in_ndim: int, ndim: int) -> list[ast.expr] | None:
    """Per output dim of a reshape with ``in_ndim`` input and ``ndim`` output dims, the size
    expression of the statement's one ``rearrange`` (or ``repeat``) call, or None (no such call,
    two that disagree, a pattern this reader does not follow: ``...``, numbered axes).

    >>> call = ast.parse('rearrange(q, "b n (h d) -> b h n d", h=self.heads)')
    >>> [ast.unparse(e) for e in rearrange_exprs(call, 3, 4)]
    ["'from a shape'", "'from a shape'", 'self.heads', "'from a shape'"]
    """
    found = [_exprs(call, in_ndim, ndim) for call in ast.walk(tree) if _is_einops(call)]
    dumps = {None if f is None else tuple(ast.dump(e) for e in f) for f in found}
    return found[0] if len(dumps) == 1 else None


def layer_call(module: object) -> ast.Call | None:
    """An einops ``Rearrange`` layer as the ``rearrange`` call it makes: its forward is einops'
    code, so the pattern is read from the layer (its lengths are numbers, which stay)."""
    pattern, lengths = getattr(module, "pattern", None), getattr(module, "axes_lengths", None)
    if not type(module).__module__.startswith("einops.") or type(module).__name__ != "Rearrange" \
            or not isinstance(pattern, str) or not isinstance(lengths, dict):
        return None
    keywords = [ast.keyword(arg=k, value=ast.Constant(value=v)) for k, v in lengths.items() if type(v) is int]
    return ast.Call(func=ast.Name(id="rearrange", ctx=ast.Load()),
                    args=[ast.Name(id="x", ctx=ast.Load()), ast.Constant(value=pattern)], keywords=keywords)


def _is_einops(call: ast.AST) -> bool:
    """``rearrange(x, "pattern", **lengths)`` or ``repeat(...)``, also as ``einops.rearrange``
    (a tensor's own ``.repeat`` takes no pattern string)."""
    if not isinstance(call, ast.Call) or len(call.args) != 2:
        return False
    name = call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", None)
    pattern = call.args[1]
    return name in ("rearrange", "repeat") and isinstance(pattern, ast.Constant) and isinstance(pattern.value, str)


def _exprs(call: ast.Call, in_ndim: int, ndim: int) -> list[ast.expr] | None:
    sides = call.args[1].value.split("->")
    left, right = (_groups(sides[0]), _groups(sides[1])) if len(sides) == 2 else (None, None)
    if left is None or right is None:
        return None
    lengths = {k.arg: k.value for k in call.keywords if k.arg is not None}
    left_axes, right_axes = _named(left), _named(right)
    if _reshaped(left) and (in_ndim, ndim) == (len(left), len(left_axes)):
        return [lengths.get(a, FROM_SHAPE) for a in left_axes]  # the split before the transpose
    if _reshaped(right) and (in_ndim, ndim) == (len(right_axes), len(right)):
        return [_group_size(g, lengths) for g in right]  # the merge after it
    return None


def _named(groups: list[list[str]]) -> list[str]:
    return [a for g in groups for a in g if a != "1"]


def _reshaped(groups: list[list[str]]) -> bool:
    """A side einops reshapes to or from: it composes axes or has anonymous ones."""
    return any(len(g) > 1 or g == ["1"] for g in groups)


def _group_size(group: list[str], lengths: dict[str, ast.expr]) -> ast.expr:
    """An anonymous axis is 1; a new axis alone (``repeat``'s ``b=b``) is its length; the rest
    einops computes from the input's shape (and the lengths, which no pruning changes)."""
    if group == ["1"]:
        return ast.Constant(value=1)
    return lengths[group[0]] if len(group) == 1 and group[0] in lengths else FROM_SHAPE


def _groups(side: str) -> list[list[str]] | None:
    """``"b 1 (h d)"`` -> ``[["b"], ["1"], ["h", "d"]]`` (``()`` is ``["1"]`` too); None for
    what is not read here (``...``, numbered axes, nested brackets)."""
    groups: list[list[str]] = []
    inner: list[str] | None = None
    for token in _TOKEN.findall(side):
        if token == "(" and inner is None:
            inner = []
        elif token == ")" and inner is not None:
            groups.append(inner or ["1"])
            inner = None
        elif token == "1" and inner is None:
            groups.append(["1"])
        elif re.fullmatch(r"[A-Za-z_]\w*", token):
            if inner is not None:
                inner.append(token)
            else:
                groups.append([token])
        else:
            return None
    return groups if inner is None else None
