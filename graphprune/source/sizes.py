"""Source reading, size arguments: the sizes a ``view``/``reshape`` statement writes, as expressions,
and whether each keeps up with pruning (read from a shape, ``-1``, a bound attribute) or not."""
from __future__ import annotations

import ast
import re
import textwrap

from torch import fx

from .attrs import attribute_paths
from .calls import with_arguments
from .frames import function_source, statement_source

FROM_SHAPE = ast.Constant(value="from a shape")  # a position a starred shape (``*input_shape``) covers


def size_exprs(node: fx.Node, ndim: int, methods: tuple[str, ...] = ("view", "reshape"),
               module: object = None) -> list[ast.expr] | None:
    """The size arguments of the statement's ``.view(...)``/``.reshape(...)`` call (or another of
    ``methods``: ``expand``, ``repeat``) with ``ndim`` sizes, as expressions. A shape held in a
    name (``view(hidden_shape)``) is read from its last assignment in the function; positions a
    starred shape covers (``reshape(*input_shape, -1)``) are ``FROM_SHAPE``; a parameter of a
    helper function reads as what its caller passed (``calls.with_arguments``). None if the call
    is not written out, the statement does not parse alone, or two such calls in it disagree (a
    cat of two views). ``module`` (the one running the node) lets an einops ``Rearrange`` layer's
    pattern be read."""
    try:
        tree = ast.parse(textwrap.dedent(statement_source(node)).strip())
    except SyntaxError:
        return None
    found = []
    for call in ast.walk(tree):
        if methods == ("view", "reshape") and getattr(getattr(call, "func", None), "attr", None) == "unflatten":
            found += [e for e in [_unflatten_sizes(call, node, ndim)] if e is not None]
        if isinstance(call, ast.Call) and getattr(call.func, "attr", None) in methods:
            args = call.args
            if getattr(call.func.value, "id", None) == "torch":
                args = args[1:]  # torch.reshape(x, shape)
            if len(args) == 1 and isinstance(args[0], ast.Name):
                args = [_assigned_tuple(node, args[0].id)]
            if len(args) == 1 and isinstance(args[0], ast.Attribute) and attribute_paths(args[0]):
                args = [_items(args[0], ndim)]  # view(self.bias_shape): a tuple attribute, item by item
            if len(args) == 1 and isinstance(args[0], (ast.BinOp, ast.Call)) and _shape_elts(args[0]):
                args = [ast.Tuple(elts=_shape_elts(args[0]), ctx=ast.Load())]  # view(x.size()[:-2] + (-1,))
            if len(args) == 1 and isinstance(args[0], (ast.Tuple, ast.List)):
                args = args[0].elts
            aligned = _align(list(args), ndim)
            if aligned is not None:
                found.append(aligned)
    if not found and methods == ("view", "reshape") and node.args and hasattr(node.args[0], "meta"):
        from .rearrange import layer_call, rearrange_exprs  # they import FROM_SHAPE from here

        in_ndim = len(getattr(node.args[0].meta.get("val"), "shape", ()))
        found = [e for e in [rearrange_exprs(layer_call(module) or tree, in_ndim, ndim)] if e is not None]
    dumps = [[ast.dump(a) for a in f] for f in found]
    if not found or any(d != dumps[0] for d in dumps):
        return None
    return [a if a is FROM_SHAPE else with_arguments(node, a) for a in found[0]]


def _unflatten_sizes(call: ast.Call, node: fx.Node, ndim: int) -> list[ast.expr] | None:
    """``x.unflatten(dim, sizes)`` (or ``torch.unflatten(x, dim, sizes)``) as one size per output
    dim: the dims it leaves alone are ``FROM_SHAPE``, the new ones are the written ``sizes``. None
    when ``dim`` is not a number or the sizes are not written out."""
    args = call.args[1:] if getattr(call.func.value, "id", None) == "torch" else call.args
    named = {k.arg: k.value for k in call.keywords}
    dim, sizes = (list(args) + [named.get("dim"), named.get("sizes")][len(args):])[:2]
    try:
        at = ast.literal_eval(dim) if dim is not None else None
    except ValueError:
        return None
    if isinstance(sizes, ast.Name):
        sizes = _assigned_tuple(node, sizes.id)
    in_ndim = ndim + 1 - len(sizes.elts) if isinstance(sizes, (ast.Tuple, ast.List)) else None
    if type(at) is not int or in_ndim is None or not -in_ndim <= at < in_ndim:
        return None
    at %= in_ndim
    return [FROM_SHAPE] * at + list(sizes.elts) + [FROM_SHAPE] * (in_ndim - 1 - at)


def _align(args: list, ndim: int) -> list[ast.expr] | None:
    """Sizes by output position; one starred argument covers the positions the others leave."""
    stars = [i for i, a in enumerate(args) if isinstance(a, ast.Starred)]
    if not stars:
        return args if len(args) == ndim and all(isinstance(a, ast.expr) for a in args) else None
    if len(stars) > 1 or len(args) - 1 > ndim:
        return None
    i = stars[0]
    return args[:i] + [FROM_SHAPE] * (ndim - len(args) + 1) + args[i + 1:]


def _items(attr: ast.expr, ndim: int) -> ast.Tuple:
    """``self.shape_attr`` as ``(self.shape_attr[0], ..., self.shape_attr[ndim - 1])``."""
    items = [ast.Subscript(value=attr, slice=ast.Constant(value=i), ctx=ast.Load()) for i in range(ndim)]
    return ast.Tuple(elts=items, ctx=ast.Load())


def _assigned_tuple(node: fx.Node, name: str) -> ast.expr | None:
    """The shape last assigned to ``name`` before the node's statement, as a tuple:
    ``hidden_shape = (*s, -1, d)``, or GPT-2's ``size_out = x.size()[:-1] + (self.nf,)``."""
    for line in reversed(function_source(node).splitlines()):
        match = re.match(rf"\s*{re.escape(name)}\s*=\s*(.+)$", line)
        if match:
            try:
                value = ast.parse(match.group(1).strip(), mode="eval").body
            except SyntaxError:
                return None
            elts = _shape_elts(value)
            return None if elts is None else ast.Tuple(elts=elts, ctx=ast.Load())
    return None


def _shape_elts(expr: ast.expr) -> list[ast.expr] | None:
    """The sizes a shape expression lists; a slice of a tensor's shape becomes one starred part.

    >>> [ast.unparse(e) for e in _shape_elts(ast.parse("x.size()[:-1] + (self.nf,)", mode="eval").body)]
    ['*x.size()[:-1]', 'self.nf']
    """
    if isinstance(expr, (ast.Tuple, ast.List)):
        return list(expr.elts)
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Add):
        left, right = _shape_elts(expr.left), _shape_elts(expr.right)
        return None if left is None or right is None else left + right
    if isinstance(expr, ast.Call) and getattr(expr.func, "id", None) in ("list", "tuple") and len(expr.args) == 1:
        return _shape_elts(expr.args[0])
    if isinstance(expr, ast.Subscript) and isinstance(expr.slice, ast.Slice) and _reads_shape(expr.value):
        return [ast.Starred(value=expr, ctx=ast.Load())]
    return None


def _reads_shape(expr: ast.expr) -> bool:
    return (isinstance(expr, ast.Attribute) and expr.attr == "shape") or (
        isinstance(expr, ast.Call) and getattr(expr.func, "attr", None) == "size" and not expr.args)


def follows(expr: ast.expr | None, source_of_function: str, bound: frozenset[str] = frozenset()) -> bool:
    """Whether a size expression keeps up with pruning: ``-1``, a size read from a tensor's shape
    (``x.shape[1]``, ``C`` from ``B, N, C = x.shape``, ``*input_shape``), attributes in ``bound``
    (surgery updates them), or arithmetic on those. Any other attribute or name does not.

    >>> follows(ast.parse("C // 4", mode="eval").body, "    B, N, C = x.shape\\n")
    True
    >>> follows(ast.parse("n", mode="eval").body, "    n = 4\\n")
    False
    """
    if expr is None or expr is FROM_SHAPE:
        return expr is FROM_SHAPE
    for sub in ast.walk(expr):
        if isinstance(sub, ast.Call) and getattr(sub.func, "attr", None) in ("size", "dim", "numel"):
            return True
        if isinstance(sub, ast.Attribute) and sub.attr == "shape":
            return True
    reads = [p for p in attribute_paths(expr)]
    if any(p not in bound for p in reads):
        return False
    names = [n.id for n in ast.walk(expr) if isinstance(n, ast.Name) and n.id != "self"]
    if not names and not reads:
        return ast.unparse(expr).replace(" ", "") == "-1"
    return all(n in bound or shape_read(source_of_function, n) is not None for n in names)


def names_in(expr: ast.AST) -> set[str]:
    """Every name and attribute name an expression reads.

    >>> sorted(names_in(ast.parse("C // self.num_heads", mode="eval")))
    ['C', 'num_heads', 'self']
    """
    return {n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(expr)
            if isinstance(n, (ast.Name, ast.Attribute))}


def direct_read(expr: ast.expr | None) -> bool:
    """A size read as it is: a name, an attribute or an indexed attribute (no arithmetic)."""
    return isinstance(expr, (ast.Name, ast.Attribute, ast.Subscript))


def constant_size(expr: ast.expr) -> bool:
    """A size written as a number (``4``, ``2 * 8``), which no pruning can change; ``-1`` is
    computed by the reshape, so it is not one.

    >>> [constant_size(ast.parse(t, mode="eval").body) for t in ("4", "2 * 8", "-1", "self.n", "x.size(1)")]
    [True, True, False, False, False]
    """
    if expr is FROM_SHAPE:
        return False
    nodes = list(ast.walk(expr))
    if any(isinstance(n, (ast.Name, ast.Attribute, ast.Call, ast.Subscript, ast.Starred)) for n in nodes):
        return False
    return ast.unparse(expr).replace(" ", "") != "-1"


def product_terms(expr: ast.expr | None) -> list[ast.expr]:
    """The factors of a size written as a product, in order (``bsz * num_heads`` -> two).

    >>> [ast.unparse(t) for t in product_terms(ast.parse("b * self.h * 2", mode="eval").body)]
    ['b', 'self.h', '2']
    """
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Mult):
        return product_terms(expr.left) + product_terms(expr.right)
    return [] if expr is None else [expr]


def quotient(expr: ast.expr) -> tuple[ast.expr, ast.expr] | None:
    """``(a, b)`` for a size written ``a // b`` (``C // self.num_heads``), else None."""
    if isinstance(expr, ast.BinOp) and isinstance(expr.op, (ast.FloorDiv, ast.Div)):
        return expr.left, expr.right
    return None


def shape_read(source: str, name: str) -> tuple[int, int | None] | None:
    """Which dim of an input ``name`` was read from: ``B, N, C = x.shape`` gives (2, 3);
    ``C = x.shape[-1]`` gives (-1, None).

    >>> shape_read("    B, N, C = x.shape\\n", "C"), shape_read("  c = x.size(1)\\n", "c")
    ((2, 3), (1, None))
    """
    for line in reversed(source.splitlines()):  # the last assignment before the statement
        unpack = re.match(r"\s*([\w\s,]+?)\s*=\s*\w+\.(?:shape|size\(\))\s*(#.*)?$", line)
        if unpack:
            targets = [t.strip() for t in unpack.group(1).split(",")]
            if name in targets:
                return targets.index(name), len(targets)
        one = re.match(rf"\s*{re.escape(name)}\s*=\s*\w+\.(?:shape\[|size\()(-?\d+)[\])]\s*(#.*)?$", line)
        if one:
            return int(one.group(1)), None
    return None
