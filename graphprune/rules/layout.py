"""Rules for ops that reorder, repeat or pick dims without merging or splitting them: permute,
transpose, expand, repeat, outer products, select, and ops along a dim (roll, flip, cumsum, pad)."""
from __future__ import annotations

from torch import fx

from .. import source
from ..coupling import Builder, register_rule

aten = __import__("torch").ops.aten


@register_rule(aten.permute)
def permute(b: Builder, node: fx.Node) -> None:
    _link_perm(b, node, list(node.args[1]))


@register_rule(aten.transpose, aten.swapaxes, aten.swapdims)
def transpose(b: Builder, node: fx.Node) -> None:
    n = len(b.shape(node))
    perm = list(range(n))
    d0, d1 = node.args[1] % n, node.args[2] % n
    perm[d0], perm[d1] = d1, d0
    _link_perm(b, node, perm)


@register_rule(aten.t, aten.numpy_T)
def t(b: Builder, node: fx.Node) -> None:
    _link_perm(b, node, list(range(len(b.shape(node))))[::-1])


@register_rule(aten.expand, aten.expand_as, aten.repeat)
def expand(b: Builder, node: fx.Node) -> None:
    """Dims that keep their size couple; dims grown from 1 (or new) hold copies of one value, and a
    dim repeated ``r`` times holds ``r`` copies of the input in a row (``_copies``)."""
    src = node.args[0]
    ins, outs = b.slots(src), b.slots(node)
    shape, out_shape = b.shape(src), b.shape(node)
    shift = len(outs) - len(ins)
    reps = list(node.args[1]) if canonical_is(node, aten.repeat) else [1] * len(outs)
    for i, s in enumerate(ins):
        if shape[i] == out_shape[i + shift] and reps[i + shift] == 1:
            b.link_same(s, outs[i + shift])
        elif shape[i] == 1:
            b.touch(s)
    if canonical_is(node, aten.expand_as):
        link_template(b, node)
    else:
        _copies(b, node, [None] * shift + ins, reps)


def _copies(b: Builder, node: fx.Node, ins: list, reps: list[int]) -> None:
    """A dim grown from 1 (``pos.expand([q.size(0), L, L])``) holds copies of one value, so any of
    its indices can go, provided the size the code writes keeps up with pruning (read from a shape):
    then it is left free to couple with what it meets. A size written as a number or an attribute
    stays frozen (GQA's ``expand(b, h, self.n_rep, n, d)`` keeps its copies per key head). A dim
    of width ``n`` repeated ``r`` times (``pos.repeat(B, 1, 1)`` over heads) is ``r`` copies in a
    row: a factor of (copies, the input's units), the copies never pruned."""
    outs, out_shape = b.slots(node), b.shape(node)
    exprs = function = None  # read once, and only for a dim grown from 1
    for j, (s, r, o) in enumerate(zip(ins, reps, outs)):
        n = 1 if s is None else b.size(s)
        if out_shape[j] < 2 or (n == out_shape[j] and r == 1):
            continue
        if n > 1:
            copies, units = b.virtual(node, f"copies {j}", r), b.virtual(node, f"repeated {j}", n)
            b.link_same(s, units)
            b.factor(o, [copies, units], f"{r} copies of {n} units ({b.where()})")
            b.freeze(copies, "copies made by repeat")
            continue
        if exprs is None:
            exprs = source.size_exprs(node, len(outs), methods=("expand", "repeat")) or [None] * len(outs)
            function = source.function_source(node)
        if exprs[j] is not None and not source.direct_read(exprs[j]) and source.follows(exprs[j], function):
            b.touch(o)


@register_rule(aten.repeat_interleave)
def repeat_interleave(b: Builder, node: fx.Node) -> None:
    """``x.repeat_interleave(n, dim)``: output index i along ``dim`` is input index i // n (key and
    value heads repeated for the query heads that read them); other dims pass. A tensor of
    repeats or no ``dim`` (the flattened form) leaves every dim to the automatic freeze."""
    x = node.args[0]
    reps = node.args[1] if len(node.args) > 1 else node.kwargs.get("repeats")
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim")
    if not isinstance(reps, int) or dim is None or b.shape(x) is None:
        return
    xs, out = b.slots(x), b.slots(node)
    dim %= len(xs)
    for i, (s, o) in enumerate(zip(xs, out)):
        if i != dim:
            b.link_same(s, o)
        else:
            b.link_blocks(o, s, "each index repeated in a row (repeat_interleave)")


@register_rule(aten.outer, aten.ger)
def outer(b: Builder, node: fx.Node) -> None:
    """``outer(a, b)[i, j] = a[i] * b[j]``."""
    out = b.slots(node)
    for k, vec in enumerate(node.args[:2]):
        (s,) = b.slots(vec)
        b.link_same(s, out[k])


def canonical_is(node: fx.Node, packet) -> bool:
    return getattr(node.target, "overloadpacket", None) is packet


@register_rule(aten.select)
def select(b: Builder, node: fx.Node) -> None:
    """Picking one index of a dim fixes that dim; the others shift down by one."""
    ins, outs = b.slots(node.args[0]), b.slots(node)
    dim = node.args[1] % len(ins)
    b.freeze(ins[dim], "select picks a fixed index of this dim")
    for i, s in enumerate(ins):
        if i != dim:
            b.link_same(s, outs[i - (i > dim)])


@register_rule(aten.roll, aten.flip, aten.cumsum, aten.constant_pad_nd, aten.pad, aten.diff)
def along_dims(b: Builder, node: fx.Node) -> None:
    """Ops acting along some dims: same-size dims couple; the dims they act on are fixed."""
    ins, outs = b.slots(node.args[0]), b.slots(node)
    acted = _acted_dims(b, node, len(ins))
    for i, (s, o) in enumerate(zip(ins, outs)):
        if i not in acted and b.size(s) == b.size(o):
            b.link_same(s, o)


def _acted_dims(b: Builder, node: fx.Node, ndim: int) -> set[int]:
    key = node.target.overloadpacket
    if key in (aten.constant_pad_nd, aten.pad):
        pads = list(node.args[1])
        return {ndim - 1 - k // 2 for k, p in enumerate(pads) if p}
    if key is aten.diff:  # diff(x, n=1, dim=-1, prepend, append)
        return {(node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", -1)) % ndim}
    dims = node.args[2] if key is aten.roll else node.args[1]
    if key is aten.roll and len(node.args) < 3:
        return set(range(ndim))  # roll without dims works on the flattened tensor
    dims = [dims] if isinstance(dims, int) else list(dims)
    return {d % ndim for d in dims}


def _link_perm(b: Builder, node: fx.Node, perm: list[int]) -> None:
    ins, outs = b.slots(node.args[0]), b.slots(node)
    for j, i in enumerate(perm):
        b.link_same(ins[i % len(ins)], outs[j])


def link_template(b: Builder, node: fx.Node) -> None:
    """``x.view_as(other)`` / ``x.expand_as(other)``: the output has ``other``'s shape, dim by dim."""
    for s, o in zip(b.slots(node.args[1]), b.slots(node)):
        b.link_same(s, o)
