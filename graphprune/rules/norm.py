"""Rules for normalisations: batch/instance norm (per channel), layer/RMS norm, group norm."""
from __future__ import annotations

from torch import fx

from ..coupling import Builder, register_rule

aten = __import__("torch").ops.aten


def _per_channel(b: Builder, node: fx.Node, x: fx.Node, tensors: list, dim: int) -> None:
    xs, out = b.slots(x), b.slots(node)
    for s, o in zip(xs, out):
        b.link_same(s, o)
    for t in tensors:
        if t is not None:
            b.link_same(b.slot(t, 0), out[dim])


@register_rule(aten.batch_norm, aten.instance_norm)
def batch_norm(b: Builder, node: fx.Node) -> None:
    """Per-channel affine and statistics: channel i only ever sees channel i (exact to prune). With
    batch statistics (``training``/``use_input_stats``, e.g. timm's weight-standardised convs) every
    other dim is averaged over, so pruning along it changes the statistics."""
    x, *rest = node.args[:5]
    _per_channel(b, node, x, list(rest), 1)
    if len(node.args) > 5 and node.args[5] is True:
        for d, o in enumerate(b.slots(node)):
            if d != 1:
                b.inexact(o, f"{node.target.overloadpacket.__name__} computes statistics over this dim")


@register_rule(aten.layer_norm, aten.rms_norm)
def layer_norm(b: Builder, node: fx.Node) -> None:
    """Normalised dims couple to weight and bias; pruning them changes the mean and variance."""
    x, shape = node.args[0], node.args[1]
    weight = node.args[2] if len(node.args) > 2 else node.kwargs.get("weight")
    bias = node.args[3] if len(node.args) > 3 and canonical_key(node) == "layer_norm" else None
    xs, out = b.slots(x), b.slots(node)
    for s, o in zip(xs, out):
        b.link_same(s, o)
    k = len(shape)
    for i, o in enumerate(out[-k:]):
        b.inexact(o, "normalised over by a layer/RMS norm")
        b.kind(o, "hidden")
        for t in (weight, bias):
            if t is not None:
                b.link_same(b.slot(t, i), o)
    fqn, mod = b.module()
    if k == 1 and mod is not None and hasattr(mod, "normalized_shape") and weight is None:
        b.bind(out[-1], fqn, "normalized_shape")


def canonical_key(node: fx.Node) -> str:
    return node.target.overloadpacket.__name__


@register_rule(aten.group_norm)
def group_norm(b: Builder, node: fx.Node) -> None:
    """Whole groups are the unit (their statistics stay intact); one group behaves like layer norm."""
    x, groups, weight, bias = node.args[0], node.args[1], *(list(node.args[2:4]) + [None, None])[:2]
    _per_channel(b, node, x, [weight, bias], 1)
    out = b.slots(node)
    if groups == 1:
        for o in out[1:]:
            b.inexact(o, "normalised over by a one-group group norm")
            b.kind(o, "hidden")
        return
    unit = b.counted_by(node, groups, "num_groups")
    b.link_blocks(out[1], unit, "channels of a group-norm group")


@register_rule(aten._weight_norm)
def weight_norm(b: Builder, node: fx.Node) -> None:
    """``w = g * v / ||v||`` with the norm over every dim but ``dim``: ``dim`` couples v, g and w
    channel by channel; pruning any other dim changes the norm (inexact). ``dim=-1`` is torch's code
    for no dim at all (``weight_norm(m, dim=None)``): one norm over the whole of v, so every dim is inexact."""
    v, g = node.args[:2]
    raw = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    dim = None if raw == -1 else raw % len(b.shape(v))
    vs, gs, out = b.slots(v), b.slots(g), b.slots(node)
    for d, (s, o) in enumerate(zip(vs, out)):
        b.link_same(s, o)
        if d != dim:
            b.inexact(o, "weight norm normalises over this dim")
    for d, s in enumerate(gs):
        b.link_same(s, out[d]) if b.size(s) == b.size(out[d]) else b.touch(s)
