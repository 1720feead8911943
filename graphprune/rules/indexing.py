"""Rules for indexing by tensors (gather, advanced indexing): indexed dims are fixed, the rest pass."""
from __future__ import annotations

import torch
from torch import fx

from ..coupling import Builder, register_rule

aten = torch.ops.aten


@register_rule(aten.gather)
def gather(b: Builder, node: fx.Node) -> None:
    """``out[..., i, ...] = x[..., index[..., i, ...], ...]`` along ``dim``; out has index's shape."""
    x, dim, index = node.args[:3]
    xs, idx, out = b.slots(x), b.slots(index), b.slots(node)
    dim = dim % len(xs)
    b.freeze(xs[dim], "gathered along by a tensor of indices")
    for d, (s, o) in enumerate(zip(idx, out)):
        b.link_same(s, o)
        if d != dim and b.size(xs[d]) == b.size(o):
            b.link_same(xs[d], o)


@register_rule(aten.index)
def index(b: Builder, node: fx.Node) -> None:
    """``x[i0, i1, ...]``: indexed dims are fixed; the index tensors broadcast into new output dims,
    placed where the indexed dims were if they are adjacent, else in front (numpy's rule)."""
    x, indices = node.args[0], list(node.args[1])
    xs, out = b.slots(x), b.slots(node)
    picked = [d for d, i in enumerate(indices) if i is not None]
    if any(_is_mask(indices[d]) for d in picked):
        return  # boolean masks give data-dependent sizes: leave every dim to the automatic freeze
    for d in picked:
        b.freeze(xs[d], "indexed by a tensor")
    rest = [d for d in range(len(xs)) if d not in picked]
    n_new = len(out) - len(rest)
    start = picked[0] if picked == list(range(picked[0], picked[-1] + 1)) else 0
    new = out[start:start + n_new]
    for d, o in zip(rest, out[:start] + out[start + n_new:]):
        b.link_same(xs[d], o)
    for d in picked:
        b.broadcast(b.slots(indices[d]), new)


def _is_mask(node: fx.Node) -> bool:
    val = node.meta.get("val")
    return val is not None and val.dtype in (torch.bool, torch.uint8)


@register_rule(aten.index_put)
def index_put(b: Builder, node: fx.Node) -> None:
    """``x[i0, ...] = values``: the output is ``x``; indexed dims are fixed, the others couple to the
    output and to the trailing dims of ``values`` (which broadcast into the indexed positions)."""
    x, indices, values = node.args[:3]
    xs, out = b.slots(x), b.slots(node)
    picked = [d for d, i in enumerate(indices) if i is not None]
    for d, (s, o) in enumerate(zip(xs, out)):
        b.link_same(s, o)
        if d in picked:
            b.freeze(s, "written at positions given by a tensor")
    rest = [s for d, s in enumerate(xs) if d not in picked]
    b.broadcast(b.slots(values), rest)


@register_rule(aten.histc, aten.bincount)
def histogram(b: Builder, node: fx.Node) -> None:
    """Counts over every entry: removing entries changes the counts, and the bins are set by the call."""
    for s in b.slots(node.args[0]):
        b.freeze(s, "counted over by a histogram")
    for s in b.slots(node):
        b.freeze(s, "bins set by the call")
