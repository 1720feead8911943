"""Stage 2, coupling: run one rule per graph node to build a networkx graph over (node, dim) slots.

A slot is ``(node_name, dim)``; parameters and buffers are placeholder nodes, so their dims are
slots too. Edges carry index mappings between slots (``None`` for the identity, the common case,
so no per-channel array is stored for it). Reshapes that split or merge a dim produce
*factor* records that the groups stage resolves. Every dim a rule does not mention is frozen, so a
rule can only ever be too strict, never silently wrong. The slot vocabulary and the ``Builder``
the rules write into live in ``slots.py`` and ``builder.py``.
"""
from __future__ import annotations

import operator
from typing import Any, Callable

import torch
from torch import fx

from . import source
# rules and later stages import the vocabulary from here; slots.py and builder.py define it
from .builder import Builder  # noqa: F401
from .slots import HEAD_COUNT_ATTRS, Binding, Coupling, Factor, Rule, Slot  # noqa: F401
from .errors import GraphPruneError, RuleError, UnsupportedOpError
from .registry import Registry, where_defined
from .trace import Traced

RULES = Registry("coupling rule")


def register_rule(*ops: Any, override: bool = False) -> Callable[[Rule], Rule]:
    """Register a coupling rule for one or more ops (canonicalised, so overloads share a rule).

    >>> import torch
    >>> @register_rule(torch.ops.aten.my_identity, override=True)   # doctest: +SKIP
    ... def my_identity(b, node): b.link_same(b.slots(node.args[0]), b.slots(node))
    """
    return RULES.register(*[canonical(op) for op in ops], override=override)


def canonical(target: Any) -> str:
    """One key per op: ``aten.add.Tensor``, ``aten.add_.Tensor`` and ``operator.add`` -> 'aten.add'.

    >>> canonical(torch.ops.aten.add_.Tensor), canonical(torch.ops.aten.conv2d.default)
    ('aten.add', 'aten.conv2d')
    """
    if isinstance(target, str):
        return target
    if target is operator.getitem:
        return "getitem"
    if isinstance(target, torch._ops.OpOverload):
        target = target.overloadpacket
    if isinstance(target, torch._ops.OpOverloadPacket):
        ns, name = target._qualified_op_name.split("::")
        if name.endswith("_") and not name.startswith("_"):
            name = name[:-1]  # in-place variant couples exactly like the functional one
        return f"{ns}.{name}"
    if getattr(target, "__module__", None) == "_operator":
        return f"aten.{target.__name__}"
    return getattr(target, "__qualname__", str(target))


def is_pointwise(target: Any) -> bool:
    """ATen ops tagged pointwise couple like broadcasting elementwise ops."""
    return isinstance(target, torch._ops.OpOverload) and torch.Tag.pointwise in target.tags



def build_coupling(traced: Traced, strict: bool = False, read_source: bool = True) -> Coupling:
    """Run the registered rule of every node; unknown ops freeze what they touch (or raise if
    strict). ``read_source=False`` keeps the rules from reading the model's code (``graphprune/source/``).

    >>> import timm
    >>> from graphprune.trace import trace
    >>> c = build_coupling(trace(timm.create_model("resnet18")))
    >>> c.graph.number_of_nodes() > 100
    True
    """
    from . import rules  # noqa: F401  (registers the built-in rules)

    b = Builder(traced)
    with source.reading(read_source):
        for node in traced.graph.nodes:
            _visit(b, node, strict)
    _tie(b)
    _freeze_unused(b)
    return b.c


def _freeze_unused(b: Builder) -> None:
    """A tensor the traced forward never reads (HF's ``original_inv_freq``, kept for rope rescaling)
    has no coupling that says how to slice it, so it stays as it is."""
    used = {b.traced.tensor_fqn[n.name] for n in b.traced.graph.nodes
            if n.op == "placeholder" and n.users and n.name in b.traced.tensor_fqn}
    for node in b.traced.graph.nodes:
        fqn = b.traced.tensor_fqn.get(node.name) if node.op == "placeholder" else None
        if fqn is not None and fqn not in used:
            b.node = node
            for s in b.slots(node):
                b.freeze(s, "not read by the traced forward")


def _tie(b: Builder) -> None:
    """Placeholders of one shared tensor (tied weights) are pruned as one."""
    by_fqn: dict[str, list[fx.Node]] = {}
    for node in b.traced.graph.nodes:
        if node.op == "placeholder" and node.name in b.traced.tensor_fqn:
            by_fqn.setdefault(b.traced.tensor_fqn[node.name], []).append(node)
    for nodes in by_fqn.values():
        for other in nodes[1:]:
            for s, o in zip(b.slots(nodes[0]), b.slots(other)):
                b.link_same(s, o, "the same tensor is used under two names (tied weights)")


def _visit(b: Builder, node: fx.Node, strict: bool) -> None:
    if node.op == "placeholder":
        b.node = node
        for s in b.slots(node):
            if node.name in b.traced.user_inputs:
                b.freeze(s, "model input")
            elif node.name in b.traced.constants:
                b.freeze(s, "lifted constant tensor (not a parameter or buffer)")
        return
    if node.op == "output":
        b.node = node
        for arg in node.all_input_nodes:
            for s in b.slots(arg):
                b.freeze(s, "model output")
        return
    if node.op != "call_function":
        b.node = node
        for s in b.slots(node):
            b.freeze(s, f"{node.op} node")
        return
    key = canonical(node.target)
    rule = RULES.get(key) or (RULES.get("pointwise") if is_pointwise(node.target) else None)
    if rule is None:
        _unsupported(b, node, key, strict)
        return
    try:
        b.run(node, rule, key)
    except GraphPruneError:
        raise
    except Exception as err:  # noqa: BLE001 - a rule's bug (or a user rule's) must not surface raw
        _rule_failed(b, node, key, rule, err, strict)


def _rule_failed(b: Builder, node: fx.Node, key: str, rule: Rule, err: Exception, strict: bool) -> None:
    """A rule that raises is treated as a missing one: what the op touches is frozen (its links so
    far may be partial) and ``rule_errors`` lists it; with ``strict=True`` it raises ``RuleError``
    (``CouplingError``) naming the rule, the node, its module path and source line."""
    b.node = node
    first = (str(err).strip().splitlines() or [""])[0][:200]
    msg = (f"coupling rule for {key} failed at {b.where()}: {type(err).__name__}: {first}; the rule is "
           f"{where_defined(rule)}: fix it or replace it with @graphprune.register_rule({key}, override=True)")
    if strict:
        raise RuleError(msg + _leave_out(b.traced.module_path(node))) from err
    b.c.rule_errors.append(f"{msg}; the dims it touches are frozen")
    for s in b._owned(node):
        b.freeze(s, f"coupling rule for {key} failed ({type(err).__name__})")


def _leave_out(fqn: str) -> str:
    """Advice a user can follow: a submodule can be left out with ignore=, the root cannot."""
    return f", or add {fqn!r} to ignore=" if fqn else ""


def _unsupported(b: Builder, node: fx.Node, key: str, strict: bool) -> None:
    b.node = node
    msg = (f"no coupling rule for {key} ({b.where()}): register one with @graphprune.register_rule"
           f"{_leave_out(b.traced.module_path(node))}")
    if strict:
        raise UnsupportedOpError(msg)
    b.c.unsupported.append(msg)
    for s in b._owned(node):
        b.freeze(s, f"no coupling rule for {key}")
