"""Rules for cat/stack and split/chunk/unbind (via their getitem users), with channel offsets."""
from __future__ import annotations

from itertools import accumulate

import numpy as np
from torch import fx

from .. import source
from ..coupling import Builder, register_rule

aten = __import__("torch").ops.aten

PRODUCER_HANDLED = {aten.split, aten.split_with_sizes, aten.chunk, aten.unbind, aten.unsafe_split,
                    aten.topk, aten.sort, aten.kthvalue,  # rules/reduction.py
                    aten.lstm, aten.gru, aten.rnn_tanh, aten.rnn_relu, aten.lstm_cell}  # rules/recurrent.py


@register_rule(aten.cat, aten.concat, aten.concatenate)
def cat(b: Builder, node: fx.Node) -> None:
    """Input i's channel j is output channel offset_i + j along the cat dim; other dims couple."""
    out = b.slots(node)
    dim = (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)) % len(out)
    offset = 0
    for p in node.args[0]:
        if b.shape(p) is None:
            b.freeze(out[dim], "a part of unknown shape: the offsets after it are unknown")
            return
        if len(b.shape(p)) != len(out):
            continue  # torch.cat skips a 1-D empty tensor whatever the other parts' rank
        ps = b.slots(p)
        for i, (s, o) in enumerate(zip(ps, out)):
            if i != dim:
                b.link_same(s, o)  # an empty piece (Phi-3's q_pass with full rotary) still couples
            elif b.size(s):
                b.link_offset(s, o, offset, "concatenation")
            else:
                b.touch(s)
        offset += b.size(ps[dim])


@register_rule(aten.stack)
def stack(b: Builder, node: fx.Node) -> None:
    """Every input couples to the output; the new stacking dim is fixed."""
    out = b.slots(node)
    dim = (node.args[1] if len(node.args) > 1 else 0) % len(out)
    rest = out[:dim] + out[dim + 1:]
    for p in node.args[0]:
        for s, o in zip(b.slots(p), rest):
            b.link_same(s, o)


def _pieces(b: Builder, node: fx.Node, size: int) -> tuple[list[int], bool]:
    """Sizes of the pieces and whether they stay equal when the input shrinks. Only ``chunk`` does:
    ``split(x, n)`` cuts every ``n`` channels, and ``n`` is a constant of the model's code (timm's
    ``x.split(self.expand_chs // 2)``), so after pruning it would cut in the wrong place."""
    key = node.target.overloadpacket
    if key is aten.split_with_sizes:
        return list(node.args[1]), False
    step = -(-size // node.args[1]) if key is aten.chunk else node.args[1]
    sizes = [min(step, size - o) for o in range(0, size, step)]
    return sizes, len(sizes) == 1 or (key is aten.chunk and len(set(sizes)) == 1)


@register_rule(aten.split, aten.split_with_sizes, aten.chunk, aten.unsafe_split)
def split(b: Builder, node: fx.Node) -> None:
    """Piece i holds channels [offset_i, offset_i + size_i). Pieces of an even chunk are pruned in
    parallel so that the model's own chunk still cuts them at the right place; split sizes are fixed
    unless the code reads them from module attributes, which are then bound."""
    x = node.args[0]
    xs = b.slots(x)
    dim = (node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)) % len(xs)
    sizes, uniform = _pieces(b, node, b.size(xs[dim]))
    offsets = [0, *accumulate(sizes)][:-1]
    attrs = None if uniform else _piece_attrs(b, node, sizes)
    if attrs and all(attrs):
        _follow_attrs(b, node, xs[dim], sizes, offsets, attrs)
    elif not uniform:
        b.freeze(xs[dim], "split sizes are fixed in the model's code")
        for attr in {a for found in attrs or [] for a in found}:  # shvit: split(x, [self.pdim, self.dim - self.pdim])
            b.pin(b.code_module(node)[0], attr, "split sizes are fixed")
    elif len(sizes) > 1:
        idx = np.arange(sizes[0])
        for off in offsets[1:]:
            b.link(xs[dim], xs[dim], idx, idx + off, "pieces of an even chunk are pruned in parallel")
    for user in node.users:
        if user.target.__name__ == "getitem":
            i = user.args[1]
            for d, (s, o) in enumerate(zip(xs, b.slots(user))):
                b.link_offset(o, s, offsets[i], "split") if d == dim else b.link_same(s, o)
    for s in xs:
        b.touch(s)


def _piece_attrs(b: Builder, node: fx.Node, sizes: list[int]) -> list[list[str]]:
    """Per piece, the attributes its size is read from: one item each of a list attribute
    (``torch.split(y, self.split_sizes, dim=1)``), else the int attributes of equal value the
    statement names (``[self.pdim, self.dim - self.pdim]``)."""
    _, mod = b.code_module()
    if mod is not None and source.enabled():
        name = source.list_attr_matching(mod, source.statement_source(node), sizes)
        if name is not None:
            return [[f"{name}[{i}]"] for i in range(len(sizes))]
    return [b.code_attrs(n) for n in sizes]


def _follow_attrs(b: Builder, node: fx.Node, whole, sizes: list[int], offsets: list[int],
                  attrs: list[list[str]]) -> None:
    """Sizes read from module attributes (``split(self.split_size)``) follow the pruning once the
    attributes are bound: pieces sized by the same attributes keep the same width, so they are
    pruned in parallel, and the attributes are set to that width."""
    fqn = b.code_module(node)[0]
    # split(x, [self.pdim, self.dim - self.pdim]) with dim == 2 * pdim reads as two pdim pieces;
    # that holds after pruning only if self.dim follows the whole
    b.bind_code_attrs(whole)
    for key in dict.fromkeys(map(tuple, attrs)):
        first = attrs.index(list(key))
        piece = b.virtual(node, f"piece {first}", sizes[first])
        idx = np.arange(sizes[first])
        why = f"pieces sized by {fqn or '<root>'}.{key[0]} are pruned in parallel"
        for off in (o for o, a in zip(offsets, attrs) if tuple(a) == key):
            b.link(whole, piece, idx + off, idx, why)
        for attr in key:
            b.bind(piece, fqn, attr)


@register_rule(aten.unbind)
def unbind(b: Builder, node: fx.Node) -> None:
    """Each output is one index of the unbound dim; that dim is fixed, the others couple."""
    xs = b.slots(node.args[0])
    dim = (node.args[1] if len(node.args) > 1 else 0) % len(xs)
    b.freeze(xs[dim], "unbind gives each index of this dim its own tensor")
    rest = xs[:dim] + xs[dim + 1:]
    for user in node.users:
        if user.target.__name__ == "getitem":
            for s, o in zip(rest, b.slots(user)):
                b.link_same(s, o)


@register_rule("getitem")
def getitem(b: Builder, node: fx.Node) -> None:
    """Outputs of split/chunk/unbind are coupled by their producer's rule."""
    parent = node.args[0]
    if getattr(parent.target, "overloadpacket", None) in PRODUCER_HANDLED:
        for s in b.slots(node):
            b.touch(s)
