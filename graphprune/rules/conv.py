"""Rules for convolutions: plain, grouped, depthwise (with multiplier) and transposed."""
from __future__ import annotations

from torch import fx

from ..coupling import Builder, register_rule

aten = __import__("torch").ops.aten


def _conv_args(node: fx.Node) -> tuple[fx.Node, fx.Node, fx.Node | None, bool, int]:
    """(input, weight, bias, transposed, groups) for every conv overload in the ATen graph."""
    a = list(node.args) + [None] * 10
    key = node.target.overloadpacket
    if key is aten.convolution:
        return a[0], a[1], a[2], bool(a[6]), a[8] or 1
    if key in (aten.conv_transpose1d, aten.conv_transpose2d, aten.conv_transpose3d):
        return a[0], a[1], a[2], True, node.kwargs.get("groups", a[6]) or 1
    return a[0], a[1], a[2], False, node.kwargs.get("groups", a[6]) or 1


@register_rule(aten.conv1d, aten.conv2d, aten.conv3d, aten.convolution, aten.conv_transpose1d,
               aten.conv_transpose2d, aten.conv_transpose3d)
def conv(b: Builder, node: fx.Node) -> None:
    """Batch couples to batch; input channels to the weight's input dim; output channels to the
    weight's output dim and bias. With groups > 1 whole groups are the prunable unit."""
    x, w, bias, transposed, groups = _conv_args(node)
    xs, ws, out = b.slots(x), b.slots(w), b.slots(node)
    w_in, w_out = (ws[0], ws[1]) if transposed else (ws[1], ws[0])
    b.link_same(xs[0], out[0])
    if bias is not None:
        b.link_same(b.slot(bias, 0), out[1])
        b.role(b.slot(bias, 0), "out")
    b.role(w_out, "out")
    if groups == 1:
        b.link_same(xs[1], w_in)
        b.role(w_in, "in")
        b.link_same(w_out, out[1])
        return
    unit = b.counted_by(node, groups, "groups")
    b.link_blocks(xs[1], unit, "input channels of a conv group")
    b.link_blocks(out[1], unit, "output channels of a conv group")
    if transposed:
        b.link_blocks(w_in, unit, "weight rows of a conv group")
        b.freeze(w_out, "per-group output channels of a grouped transposed conv")
    else:
        b.link_same(w_out, out[1])
        b.freeze(w_in, "per-group input channels of a grouped conv")
