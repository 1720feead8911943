"""Stage 2 helper, source reading: the heuristics that read a model's code where the graph holds numbers.

The traced graph records every size as a number. Where the model's code computes a size from an
attribute (``view(B, N, self.heads, -1)``, ``torch.split(y, self.split_sizes)``) or from an
input's shape (``B, N, C = x.shape`` ... ``reshape(B, N, C)``), pruning must keep that computation
true: the coupling rules bind the attribute (surgery updates it) or couple the dim to that input.
Finding the name means reading the statement that made a node, from its stack trace. These
heuristics are the closest thing graphprune has to per-architecture code, so they all live here,
and one switch turns them off: ``find_groups(model, read_source=False)`` or
``shrink(model, ratio, read_source=False)``. Rules then decide from the graph alone: sizes the code
computes stay frozen where the graph shows them, and a pruned forward that still breaks is caught
by surgery and its module type left unpruned.

>>> with reading(False):
...     statement_source(None)
''
"""
from __future__ import annotations

import ast
import contextlib
import contextvars
import inspect
import linecache
import os
import re
import sys
import textwrap
from typing import Any, Iterator

import torch
from torch import fx, nn

TORCH_DIR = os.path.dirname(torch.__file__) + os.sep
_ENABLED: contextvars.ContextVar[bool] = contextvars.ContextVar("graphprune_read_source", default=True)
NAME = re.compile(r"[A-Za-z_]\w*")


@contextlib.contextmanager
def reading(enabled: bool) -> Iterator[None]:
    """Switch source reading on or off for the rules run inside the block."""
    token = _ENABLED.set(bool(enabled))
    try:
        yield
    finally:
        _ENABLED.reset(token)


def enabled() -> bool:
    """Whether rules may read the model's source now.

    >>> enabled()
    True
    """
    return _ENABLED.get()


# -- where a node was made ------------------------------------------------------------------------

# graphprune's own layers (``PrunedMultiheadAttention``, which a pruned ``nn.MultiheadAttention``
# may become) are written like torch's and rebuilt by the same slicers: a pruned model is read again
OWN_LAYERS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "surgery") + os.sep


def in_torch(node: fx.Node | None) -> bool:
    """Whether the node was made by torch's own code (``nn.MultiheadAttention``'s forward), or
    graphprune's own layers that mirror it, whose sizes come from their inputs' shapes, and whose
    modules surgery knows how to rebuild."""
    found = frame(node)
    return found is not None and found[0].startswith((TORCH_DIR, OWN_LAYERS_DIR))


def frame(node: fx.Node | None) -> tuple[str, int] | None:
    """File and line of the node's innermost stack frame (the model code that made it)."""
    if node is None or not enabled():
        return None
    frames = re.findall(r'File "([^"]+)", line (\d+)', node.meta.get("stack_trace") or "")
    return (frames[-1][0], int(frames[-1][1])) if frames else None


def statement_source(node: fx.Node | None) -> str:
    """The source statement that made ``node`` (its innermost stack frame), whole: a call spread
    over several lines is read until the brackets opened on its first line close."""
    found = frame(node)
    if found is None:
        return ""
    path, line = found
    text, depth = "", 0
    for n in range(line, line + 12):
        code = linecache.getline(path, n)
        text += code
        depth += sum(code.count(c) for c in "([{") - sum(code.count(c) for c in ")]}")
        if depth <= 0 or not code:
            break
    return text


def statement_names(node: fx.Node | None) -> set[str]:
    """Identifiers of the statement that made ``node``.

    >>> statement_names(fx.symbolic_trace(nn.Linear(2, 2)).graph.find_nodes(op="placeholder")[0])
    set()
    """
    return set(NAME.findall(statement_source(node)))


def function_source(node: fx.Node | None) -> str:
    """The source of the function that made ``node``, from its ``def`` to the line before the node's."""
    found = frame(node)
    if found is None:
        return ""
    path, line = found
    lines = []
    for n in range(line - 1, max(line - 400, 0), -1):
        code = linecache.getline(path, n)
        lines.append(code)
        if re.match(r"\s*(async\s+)?def\s", code):
            break
    return "".join(reversed(lines))


# -- size arguments -----------------------------------------------------------------------------

FROM_SHAPE = ast.Constant(value="from a shape")  # a position a starred shape (``*input_shape``) covers


def size_exprs(node: fx.Node, ndim: int) -> list[ast.expr] | None:
    """The size arguments of the statement's ``.view(...)``/``.reshape(...)`` call with ``ndim``
    sizes, as expressions. A shape held in a name (``view(hidden_shape)``) is read from its last
    assignment in the function; positions a starred shape covers (``reshape(*input_shape, -1)``)
    are ``FROM_SHAPE``. None if the call is not written out, the statement does not parse alone,
    or two such calls in it disagree (a cat of two views)."""
    try:
        tree = ast.parse(textwrap.dedent(statement_source(node)).strip())
    except SyntaxError:
        return None
    found = []
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "attr", None) in ("view", "reshape"):
            args = call.args
            if getattr(call.func.value, "id", None) == "torch":
                args = args[1:]  # torch.reshape(x, shape)
            if len(args) == 1 and isinstance(args[0], ast.Name):
                args = [_assigned_tuple(node, args[0].id)]
            if len(args) == 1 and isinstance(args[0], (ast.Tuple, ast.List)):
                args = args[0].elts
            aligned = _align(list(args), ndim)
            if aligned is not None:
                found.append(aligned)
    dumps = [[ast.dump(a) for a in f] for f in found]
    return found[0] if found and all(d == dumps[0] for d in dumps) else None


def _align(args: list, ndim: int) -> list[ast.expr] | None:
    """Sizes by output position; one starred argument covers the positions the others leave."""
    stars = [i for i, a in enumerate(args) if isinstance(a, ast.Starred)]
    if not stars:
        return args if len(args) == ndim and all(isinstance(a, ast.expr) for a in args) else None
    if len(stars) > 1 or len(args) - 1 > ndim:
        return None
    i = stars[0]
    return args[:i] + [FROM_SHAPE] * (ndim - len(args) + 1) + args[i + 1:]


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


# -- attributes the code reads ------------------------------------------------------------------

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


# -- helper frames --------------------------------------------------------------------------------

@contextlib.contextmanager
def helper_frames(model: nn.Module) -> Iterator[None]:
    """Keep the frames of helper functions in the stack traces export records. torch.export keeps
    only frames of functions named ``forward``, so a reshape made in ``_process_input`` or in a
    module-level ``shifted_window_attention`` would be attributed to the line calling it, and the
    statement that names the width would never be read. Every function defined in the Python
    modules of the model's classes is registered as a stack-trace anchor for this export only.
    A no-op where the installed torch has no such hook."""
    try:
        from torch.fx import proxy
    except ImportError:  # pragma: no cover
        yield
        return
    anchors = getattr(proxy, "_STACK_TRACE_ANCHORS", None)
    if not isinstance(anchors, set) or not enabled():
        yield
        return
    added = _model_functions(model) - anchors
    anchors.update(added)
    try:
        yield
    finally:
        anchors.difference_update(added)


def _model_functions(model: nn.Module) -> set[tuple[str, str]]:
    """(file, name) of every function, method, nested function and lambda in the loaded Python
    modules of the packages the model's classes come from (``timm.*``, a user's module), torch's
    own packages excepted (their helpers are not the model's code)."""
    roots = {c.__module__.split(".")[0] for m in model.modules() for c in type(m).__mro__}
    roots -= {"torch", "builtins"}
    out: set[tuple[str, str]] = set()
    for name in sorted(n for n in list(sys.modules) if n.split(".")[0] in roots):
        out |= _module_functions(name)
    return out


_SEEN: dict[str, frozenset[tuple[str, str]]] = {}


def _module_functions(name: str) -> frozenset[tuple[str, str]]:
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None)
    key = f"{name}:{file}"
    if key not in _SEEN:  # a module's code does not change while it is loaded
        found: set[tuple[str, str]] = set()
        for value in list(vars(module).values()) if module is not None else []:
            for fn in _functions(value, name):
                _codes(inspect.unwrap(fn).__code__, found)
        _SEEN[key] = frozenset(found)
    return _SEEN[key]


def _codes(code: Any, found: set[tuple[str, str]]) -> None:
    """A code object and those defined inside it (lambdas, nested functions)."""
    found.add((code.co_filename, code.co_name))
    for const in code.co_consts:
        if inspect.iscode(const):
            _codes(const, found)


def _functions(value: Any, module: str) -> list[Any]:
    if inspect.isfunction(value):
        return [value] if value.__module__ == module else []
    if inspect.isclass(value) and value.__module__ == module:
        found = []
        for attr in vars(value).values():
            fn = getattr(attr, "__func__", attr)
            if inspect.isfunction(fn):
                found.append(fn)
        return found
    return []
