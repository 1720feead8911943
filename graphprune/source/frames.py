"""Source reading, where a node was made: the switch that turns every heuristic off, the
statement and function a node's stack trace points at, and the helper functions export must keep
in those traces."""
from __future__ import annotations

import ast
import contextlib
import contextvars
import functools
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
OWN_LAYERS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "surgery") + os.sep


def in_torch(node: fx.Node | None) -> bool:
    """Whether the node was made by torch's own code (``nn.MultiheadAttention``'s forward), or
    graphprune's own layers that mirror it, whose sizes come from their inputs' shapes, and whose
    modules surgery knows how to rebuild."""
    found = frame(node)
    return found is not None and found[0].startswith((TORCH_DIR, OWN_LAYERS_DIR))


def frame(node: fx.Node | None) -> tuple[str, int] | None:
    """File and line of the node's innermost stack frame (the model code that made it)."""
    frames = stack(node)
    return frames[-1][:2] if frames else None


def stack(node: fx.Node | None) -> list[tuple[str, int, str]]:
    """(file, line, function) of the node's stack frames, outermost first."""
    if node is None or not enabled():
        return []
    found = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', node.meta.get("stack_trace") or "")
    return [(path, int(line), fn) for path, line, fn in found]


def statement_source(node: fx.Node | None) -> str:
    """The source statement that made ``node`` (its innermost stack frame), whole."""
    found = frame(node)
    return "" if found is None else statement_at(*found)


def statement_at(path: str, line: int) -> str:
    """The statement at ``line`` of ``path``, whole: a call spread over several lines is read until
    the brackets opened on its first line close; a line inside such a call (``index=x.expand(...),``
    on the third line of a ``gather(...)``) gives the statement around it."""
    text, depth = "", 0
    for n in range(line, line + 12):
        code = linecache.getline(path, n)
        text += code
        depth += sum(code.count(c) for c in "([{") - sum(code.count(c) for c in ")]}")
        if depth <= 0 or not code:
            break
    return text if depth == 0 and _parses(text) else (_enclosing(path, line) or text)


def _parses(text: str) -> bool:
    try:
        ast.parse(textwrap.dedent(text).strip())
    except SyntaxError:
        return False
    return True


@functools.lru_cache(maxsize=4096)
def _enclosing(path: str, line: int) -> str | None:
    """The innermost simple statement of the function around ``line`` that spans it."""
    top = _def_line(path, line)
    if top is None:
        return None
    indent = len(linecache.getline(path, top)) - len(linecache.getline(path, top).lstrip())
    lines = [linecache.getline(path, top)]
    for n in range(top + 1, top + 2000):
        code = linecache.getline(path, n)
        if not code or (code.strip() and len(code) - len(code.lstrip()) <= indent and n > line):
            break
        lines.append(code)
    try:
        tree = ast.parse(textwrap.dedent("".join(lines)))
    except SyntaxError:
        return None
    spans = [s for s in ast.walk(tree) if isinstance(s, ast.stmt) and not hasattr(s, "body")
             and s.lineno <= line - top + 1 <= (s.end_lineno or s.lineno)]
    if not spans:
        return None
    first, last = spans[-1].lineno + top - 1, (spans[-1].end_lineno or spans[-1].lineno) + top - 1
    return "".join(linecache.getline(path, n) for n in range(first, last + 1))


def statement_names(node: fx.Node | None) -> set[str]:
    """Identifiers of the statement that made ``node``.

    >>> statement_names(fx.symbolic_trace(nn.Linear(2, 2)).graph.find_nodes(op="placeholder")[0])
    set()
    """
    return set(NAME.findall(statement_source(node)))


def nearby_source(node: fx.Node | None, callers: int = 3) -> str:
    """The code that could have handed ``node`` a size: its function up to its statement, the
    statement itself, and the statements of up to ``callers`` frames that called that function.
    A size that none of it names (a head count, say) did not reach the node from there."""
    frames = stack(node)
    if not frames:
        return ""
    inner = frames[-1][:2]
    outer = [statement_at(path, line) for path, line, _ in frames[-1 - callers:-1]]
    return "".join([function_at(*inner), statement_at(*inner), *outer])


def function_source(node: fx.Node | None) -> str:
    """The source of the function that made ``node``, from its ``def`` to the line before the node's."""
    found = frame(node)
    return "" if found is None else function_at(*found)


def function_at(path: str, line: int) -> str:
    """The function around ``line`` of ``path``, from its ``def`` to the line before ``line``
    (the 399 lines before it when no ``def`` is that close)."""
    top = _def_line(path, line - 1, back=399) or max(line - 400, 0) + 1
    return "".join(linecache.getline(path, n) for n in range(top, line))


def _def_line(path: str, line: int, back: int = 400) -> int | None:
    """The nearest ``def`` line at or above ``line``, among the ``back`` lines ending there."""
    return next((n for n in range(line, max(line - back, 0), -1)
                 if re.match(r"\s*(async\s+)?def\s", linecache.getline(path, n))), None)


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
    roots -= {"torch", "builtins", "einops"}  # einops reshapes for the rearrange line that calls it
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
