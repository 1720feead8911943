"""Rules for pooling and resampling: batch and channels pass through, spatial dims are fixed."""
from __future__ import annotations

from torch import fx

from ..coupling import Builder, register_rule

aten = __import__("torch").ops.aten


@register_rule(aten.max_pool1d, aten.max_pool2d, aten.max_pool3d, aten.avg_pool1d, aten.avg_pool2d,
               aten.avg_pool3d, aten.adaptive_avg_pool1d, aten.adaptive_avg_pool2d, aten.adaptive_avg_pool3d,
               aten.adaptive_max_pool1d, aten.upsample_nearest1d, aten.upsample_nearest2d,
               aten.upsample_nearest3d, aten.upsample_bilinear2d, aten.upsample_bicubic2d,
               aten.upsample_linear1d, aten._upsample_nearest_exact2d, aten._upsample_bilinear2d_aa,
               aten.reflection_pad2d, aten.replication_pad2d, aten.reflection_pad1d)
def spatial(b: Builder, node: fx.Node) -> None:
    """Leading (batch, channel) dims couple; the trailing spatial dims are left frozen."""
    xs, out = b.slots(node.args[0]), b.slots(node)
    n_spatial = _spatial_rank(node)
    for s, o in zip(xs[: len(xs) - n_spatial], out[: len(out) - n_spatial]):
        b.link_same(s, o)


def _spatial_rank(node: fx.Node) -> int:
    name = node.target.overloadpacket.__name__
    for k in ("1d", "2d", "3d"):
        if k in name:
            return int(k[0])
    return 2
