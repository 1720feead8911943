"""Source reading, einops: the sizes of the reshapes an ``einops.rearrange`` call makes, read from
its pattern and its axis lengths (``rearrange(t, "b n (h d) -> b h n d", h=self.heads)``).

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

_TOKEN = re.compile(r"\(|\)|[A-Za-z_]\w*|\S")


def rearrange_exprs(tree: ast.AST, in_ndim: int, ndim: int) -> list[ast.expr] | None:
    """Per output dim of a reshape with ``in_ndim`` input and ``ndim`` output dims, the size
    expression of the statement's one ``rearrange`` call, or None (no such call, two that
    disagree, a pattern this reader does not follow: ``...``, anonymous or numbered axes).

    >>> call = ast.parse('rearrange(q, "b n (h d) -> b h n d", h=self.heads)')
    >>> [ast.unparse(e) for e in rearrange_exprs(call, 3, 4)]
    ["'from a shape'", "'from a shape'", 'self.heads', "'from a shape'"]
    """
    found = [_exprs(call, in_ndim, ndim) for call in ast.walk(tree) if _is_rearrange(call)]
    dumps = {None if f is None else tuple(ast.dump(e) for e in f) for f in found}
    return found[0] if len(dumps) == 1 else None


def _is_rearrange(call: ast.AST) -> bool:
    if not isinstance(call, ast.Call) or len(call.args) != 2:
        return False
    name = call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", None)
    return name == "rearrange" and isinstance(call.args[1], ast.Constant) and isinstance(call.args[1].value, str)


def _exprs(call: ast.Call, in_ndim: int, ndim: int) -> list[ast.expr] | None:
    sides = call.args[1].value.split("->")
    if len(sides) != 2:
        return None
    left, right = _groups(sides[0]), _groups(sides[1])
    if left is None or right is None:
        return None
    lengths = {k.arg: k.value for k in call.keywords if k.arg is not None}
    axes = [a for g in left for a in g]
    if any(len(g) > 1 for g in left) and (in_ndim, ndim) == (len(left), len(axes)):
        return [lengths.get(a, FROM_SHAPE) for a in axes]  # the split before the transpose
    if any(len(g) > 1 for g in right) and (in_ndim, ndim) == (len(axes), len(right)):
        return [FROM_SHAPE] * len(right)  # the merge after it: products of dims einops reads
    return None


def _groups(side: str) -> list[list[str]] | None:
    """``"b n (h d)"`` -> ``[["b"], ["n"], ["h", "d"]]``; None for what is not read here."""
    groups: list[list[str]] = []
    inner: list[str] | None = None
    for token in _TOKEN.findall(side):
        if token == "(":
            if inner is not None:
                return None
            inner = []
        elif token == ")":
            if not inner:
                return None
            groups.append(inner)
            inner = None
        elif re.fullmatch(r"[A-Za-z_]\w*", token):
            if inner is not None:
                inner.append(token)
            else:
                groups.append([token])
        else:
            return None  # "...", "1", anything else
    return groups if inner is None else None
