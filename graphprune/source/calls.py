"""Source reading, calls: a size that reaches a reshape as a parameter of a helper function
(DeBERTa's ``transpose_for_scores(x, attention_heads)``) is read back as the argument the caller
passed (``self.num_attention_heads``), so it binds like a size written in place."""
from __future__ import annotations

import ast
import functools
import re
import textwrap

from torch import fx

from .attrs import attribute_paths
from .frames import function_at, stack, statement_at

MAX_DEPTH = 3  # helpers calling helpers; deeper chains are left unread (the size stays frozen)


def with_arguments(node: fx.Node, expr: ast.expr) -> ast.expr:
    """``expr`` with each name that is a parameter of the function that made ``node`` replaced by
    the argument its caller passed (or the parameter's default), as far up as the caller's own
    parameters go. A name the function assigns before using it, or one the call cannot be matched
    for (``*args``, calls in one statement passing different things), is left as it is."""
    frames = stack(node)
    for depth in range(min(MAX_DEPTH, len(frames) - 1)):
        inner, outer = frames[len(frames) - 1 - depth], frames[len(frames) - 2 - depth]
        params = _passed(inner, outer, function_at(*inner[:2]))
        names = {n.id for n in ast.walk(expr) if isinstance(n, ast.Name)}
        if not params or not names & set(params):
            break
        expr = _Substitute(params).visit(_copy(expr))
    return expr


def evidence_names(node: fx.Node, expr: ast.expr) -> set[str]:
    """The names in ``expr`` that may be a module attribute of the same name: every attribute it
    reads (``self.heads``), and each bare name the function set from such a read before the node's
    statement (``heads = self.heads``; followed three assignments deep). A bare name the code gives
    another value is no evidence that it is the attribute: ``heads = 2 * 2``, a global, or a
    parameter whose argument the caller's statement does not show. A name bound in a way not read
    here (a tuple unpacked, a ``for`` target), or read as an object (``v`` in ``v.size(-1)``, whose
    assignment computes a tensor, not a size), still counts, as a name always did.

    >>> evidence_names(None, ast.parse("self.heads * n", mode="eval").body) == {"self", "heads", "n"}
    True
    """
    frames = stack(node)
    return _evidence(function_at(*frames[-1][:2]) if frames else "", expr, 0)


def _evidence(body: str, expr: ast.expr, depth: int) -> set[str]:
    """``evidence_names`` within the function source ``body`` ("": unreadable, every name counts)."""
    receivers = {id(n.value) for n in ast.walk(expr) if isinstance(n, ast.Attribute)}
    found = {n.attr for n in ast.walk(expr) if isinstance(n, ast.Attribute)}
    found |= {n.id for n in ast.walk(expr) if isinstance(n, ast.Name) and id(n) in receivers}  # v in v.size(-1)
    for name in {n.id for n in ast.walk(expr) if isinstance(n, ast.Name) and id(n) not in receivers}:
        value = _last_assignment(body, name) if body else None
        if value is not None and depth < MAX_DEPTH:
            found |= _evidence(body, value, depth + 1)
        elif name == "self" or not body or (value is None and _reassigned(body, name) and not _is_param(body, name)):
            found.add(name)
    return found


def _last_assignment(body: str, name: str) -> ast.expr | None:
    """The value of the last plain ``name = value`` in ``body`` (None: there is none, or it does not parse)."""
    for line in reversed(body.splitlines()[1:]):
        match = re.match(rf"\s*{re.escape(name)}\s*=(?!=)\s*(.+?)\s*(#.*)?$", line)
        if match:
            try:
                return ast.parse(match.group(1), mode="eval").body
            except SyntaxError:
                return None
    return None


def _is_param(body: str, name: str) -> bool:
    sig = _signature(body)
    return sig is not None and name in {a.arg for a in sig.posonlyargs + sig.args + sig.kwonlyargs}


def self_path(node: fx.Node) -> str | None:
    """Where ``self`` of the code that made ``node`` lives, relative to the module whose
    ``forward`` runs it: ``"rel_pos"`` when ``Attention.forward`` calls ``self.rel_pos.get_bias()``
    and the node is made in ``get_bias`` (the module stack names only the attention); ``""`` when
    it is that module itself. None when the chain of calls cannot be read (a frame the trace does
    not keep, ``self.blocks[0].f()``, a receiver that is not an attribute path of ``self``)."""
    frames = stack(node)
    parts: list[str] = []
    for k in range(len(frames) - 1, 0, -1):
        if frames[k][2] == "forward":
            return ".".join(parts)
        receivers = {_receiver(c.func) for c in _calls_of(frames[k - 1], frames[k][2], any_receiver=True)}
        if len(receivers) != 1 or None in receivers:
            return None
        parts[:0] = [r for r in receivers if r]
    return None


def _receiver(func: ast.expr) -> str | None:
    """'' for ``self.f``/``f``, 'a.b' for ``self.a.b.f``, None for anything else."""
    if isinstance(func, ast.Name) or getattr(getattr(func, "value", None), "id", None) == "self":
        return ""
    path = attribute_paths(func.value) if isinstance(func, ast.Attribute) else []
    return path[0] if len(path) == 1 and re.fullmatch(r"\w+(\.\w+)*", path[0]) else None


def _passed(inner: tuple[str, int, str], outer: tuple[str, int, str], body: str) -> dict[str, ast.expr]:
    """Parameter name -> the expression the caller's statement passed for it (or its default),
    for parameters the function does not reassign before the node's line. A statement calling the
    function more than once (``q, k = self.split(q, h), self.split(k, h)``) must pass the same."""
    signature = _signature(body)
    calls = _calls_of(outer, inner[2])
    if signature is None or not calls:
        return {}
    each = [{k: ast.dump(v) for k, v in _bind(signature, c).items()} for c in calls]
    first = _bind(signature, calls[0])
    return {name: value for name, value in first.items()
            if all(e.get(name) == each[0][name] for e in each) and not _reassigned(body, name)}


def _signature(body: str) -> ast.arguments | None:
    """The parameters of the ``def`` that ``body`` starts with (a header over several lines too)."""
    header = ""
    for line in body.splitlines():
        header += line + "\n"
        try:
            tree = ast.parse(textwrap.dedent(header) + "    pass\n")
        except SyntaxError:
            continue
        fn = tree.body[0] if tree.body else None
        return fn.args if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) else None
    return None


def _calls_of(outer: tuple[str, int, str], name: str, any_receiver: bool = False) -> list[ast.Call]:
    """The calls of ``name`` in the caller's statement: ``self.name(...)`` or ``name(...)`` (with
    ``any_receiver``, ``obj.name(...)`` too)."""
    tree = _statement_tree(*outer[:2])
    return [c for c in ast.walk(tree) if isinstance(c, ast.Call) and (
        _calls(c.func, name) or (any_receiver and getattr(c.func, "attr", None) == name))] if tree else []


@functools.lru_cache(maxsize=4096)
def _statement_tree(path: str, line: int) -> ast.AST | None:
    """The caller's statement, parsed once: every node its call makes, and each rule reading
    it, asks again (read only; substitutions work on copies)."""
    try:
        return ast.parse(textwrap.dedent(statement_at(path, line)).strip())
    except SyntaxError:
        return None


def _calls(func: ast.expr, name: str) -> bool:
    if isinstance(func, ast.Name):
        return func.id == name
    return isinstance(func, ast.Attribute) and func.attr == name and getattr(func.value, "id", None) == "self"


def _bind(sig: ast.arguments, call: ast.Call) -> dict[str, ast.expr]:
    """Match a call's arguments to the parameters, as Python does (no ``*args``/``**kwargs``)."""
    if any(isinstance(a, ast.Starred) for a in call.args) or any(k.arg is None for k in call.keywords):
        return {}
    positional = [a.arg for a in sig.posonlyargs + sig.args]
    if positional[:1] in (["self"], ["cls"]) and isinstance(call.func, ast.Attribute):
        positional = positional[1:]  # self.helper(x, n): self is the same object in both frames
    if len(call.args) > len(positional):
        return {}
    bound = dict(zip(positional, call.args))
    defaults = dict(zip(positional[len(positional) - len(sig.defaults):], sig.defaults)) if sig.defaults else {}
    defaults.update({a.arg: d for a, d in zip(sig.kwonlyargs, sig.kw_defaults) if d is not None})
    bound.update({k.arg: k.value for k in call.keywords})
    return {name: bound.get(name, defaults.get(name)) for name in positional + [a.arg for a in sig.kwonlyargs]
            if bound.get(name, defaults.get(name)) is not None}


def _reassigned(body: str, name: str) -> bool:
    """Whether the function may rebind ``name`` after its ``def`` line: an assignment (also in a
    tuple, augmented or annotated), a ``for`` target, ``as name`` or ``name :=``."""
    n = re.escape(name)
    assign = (rf"^\s*(?:[\w\s,*()\[\]]*,\s*)?\(?{n}\s*\)?\s*(?:,[^=]*)?"  # heads, (b, heads), a, heads
              r"(?::[^=]+)?(?:[-+*/%@&|^]|//|\*\*|<<|>>)?=(?!=)")  # annotated, augmented, not ==
    patterns = (assign, rf"^\s*(?:async\s+)?for\s[^:]*\b{n}\b[^:]*\sin\s", rf"\bas\s+{n}\b", rf"\b{n}\s*:=")
    lines = body.splitlines()[1:]
    return any(re.search(p, line) for p in patterns for line in lines)


def _copy(expr: ast.expr) -> ast.expr:
    return ast.parse(ast.unparse(expr), mode="eval").body


class _Substitute(ast.NodeTransformer):
    def __init__(self, params: dict[str, ast.expr]):
        self.params = params

    def visit_Name(self, node: ast.Name) -> ast.expr:  # noqa: N802 - ast's visitor naming
        return _copy(self.params[node.id]) if node.id in self.params else node
