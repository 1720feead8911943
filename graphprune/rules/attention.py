"""Rules for fused attention: heads couple across q, k, v and the output (GQA: kv head -> q heads)."""
from __future__ import annotations

from torch import fx

from ..coupling import Builder, register_rule

aten = __import__("torch").ops.aten

HEAD_DIM_KEPT = "head_dim is kept (rotary pairs and the softmax scale depend on it)"


@register_rule(aten.scaled_dot_product_attention)
def sdpa(b: Builder, node: fx.Node) -> None:
    """q (.., Hq, L, E), k (.., Hk, S, E), v (.., Hk, S, Ev) -> out (.., Hq, L, Ev)."""
    q, k, v = node.args[:3]
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    qs, ks, vs, out = b.slots(q), b.slots(k), b.slots(v), b.slots(node)
    for group in zip(qs[:-3], ks[:-3], vs[:-3], out[:-3]):
        for s in group[1:]:
            b.link_same(group[0], s) if b.size(s) == b.size(group[0]) else b.touch(s)
    b.link_same(qs[-3], out[-3])
    if b.size(qs[-3]) == b.size(ks[-3]):
        b.link_same(qs[-3], ks[-3], "attention heads")
    else:
        b.link_blocks(qs[-3], ks[-3], "query heads reading one key/value head (GQA)")
    b.link_same(ks[-3], vs[-3], "attention heads")
    b.unit(qs[-3], "head")
    b.link_same(qs[-2], out[-2])
    b.link_same(ks[-2], vs[-2])
    b.link_same(qs[-1], ks[-1])
    b.link_same(vs[-1], out[-1])
    for s in (qs[-1], ks[-1], vs[-1], out[-1]):
        b.freeze(s, HEAD_DIM_KEPT)
    if mask is not None and b.shape(mask) is not None:
        _mask(b, mask, out[:-1] + [ks[-2]])


def _mask(b: Builder, mask: fx.Node, target: list) -> None:
    """The mask broadcasts against (.., Hq, L, S)."""
    ms = b.slots(mask)
    shift = len(target) - len(ms)
    for i, s in enumerate(ms):
        t = target[i + shift] if i + shift >= 0 else None
        if t is not None and b.size(s) == b.size(t):
            b.link_same(s, t)
        elif b.size(s) == 1:
            b.touch(s)
