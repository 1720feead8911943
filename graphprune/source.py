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
import re
import sys
import textwrap
from typing import Any, Iterator

from torch import fx, nn

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

def size_exprs(node: fx.Node, ndim: int) -> list[ast.expr] | None:
    """The size arguments of the statement's ``.view(...)``/``.reshape(...)`` call with ``ndim``
    sizes, as expressions. None if the call is not written out (``x.view(hidden_shape)``), the
    statement does not parse alone, or two such calls in it disagree (a cat of two views)."""
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
            if len(args) == 1 and isinstance(args[0], (ast.Tuple, ast.List)):
                args = args[0].elts
            if len(args) == ndim and not any(isinstance(a, ast.Starred) for a in args):
                found.append(list(args))
    dumps = [[ast.dump(a) for a in f] for f in found]
    return found[0] if found and all(d == dumps[0] for d in dumps) else None


def shape_args(node: fx.Node, ndim: int) -> list[set[str]] | None:
    """Identifiers in each size argument of the statement's view/reshape: in
    ``q.view(B, self.heads, n, self.q_stride, -1, d)`` both attributes may equal 4, and only the
    position tells which one sizes a dim."""
    exprs = size_exprs(node, ndim)
    return None if exprs is None else [names_in(e) for e in exprs]


def names_in(expr: ast.AST) -> set[str]:
    """Every name and attribute name an expression reads.

    >>> sorted(names_in(ast.parse("C // self.num_heads", mode="eval")))
    ['C', 'num_heads', 'self']
    """
    return {n.id if isinstance(n, ast.Name) else n.attr for n in ast.walk(expr)
            if isinstance(n, (ast.Name, ast.Attribute))}


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
    """(file, name) of every function in the Python modules defining the model's classes,
    torch's own modules excepted (their helpers are not the model's code)."""
    names = {c.__module__ for m in model.modules() for c in type(m).__mro__}
    out: set[tuple[str, str]] = set()
    for name in sorted(names):
        module = sys.modules.get(name)
        if module is None or name == "torch" or name.startswith(("torch.", "builtins")):
            continue
        for value in list(vars(module).values()):
            for fn in _functions(value, name):
                code = inspect.unwrap(fn).__code__
                out.add((code.co_filename, code.co_name))
    return out


def _functions(value: Any, module: str) -> list[Any]:
    if inspect.isfunction(value):
        return [value] if value.__module__ == module else []
    if inspect.isclass(value) and value.__module__ == module:
        found = []
        for attr in vars(value).values():
            fn = getattr(attr, "__func__", attr)
            if inspect.isfunction(fn) and fn.__name__ != "forward":
                found.append(fn)
        return found
    return []
