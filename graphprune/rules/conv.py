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
    weight's output dim and bias. With groups > 1 the channels of either side are (groups,
    per-group) row-major: prune inside every group alike (``groups`` kept) or whole groups."""
    x, w, bias, transposed, groups = _conv_args(node)
    xs, ws, out = b.slots(x), b.slots(w), b.slots(node)
    w_in, w_out = (ws[0], ws[1]) if transposed else (ws[1], ws[0])
    b.link_same(xs[0], out[0])
    if bias is not None:
        b.link_same(b.slot(bias, 0), out[1])
        b.role(b.slot(bias, 0), "out")
    b.role(w_out, "out")
    b.role(w_in, "in")
    if groups == 1:
        b.link_same(xs[1], w_in)
        b.link_same(w_out, out[1])
        return
    _grouped(b, node, xs[1], out[1], w_in, w_out, transposed, groups)


def _grouped(b: Builder, node: fx.Node, x_ch, out_ch, w_in, w_out, transposed: bool, groups: int) -> None:
    """Input channel ``g * per_in + i`` and output channel ``g * per_out + o`` belong to group g.
    Pruning inside the groups removes the same positions from every group (the weight's per-group
    dim shrinks, ``groups`` stays): preferred when each group has several inputs and outputs, as
    in ResNeXt. Whole groups (``groups`` shrinks) where a group has one channel a side (depthwise
    convs, where this is removing channels), or where something else fixes the per-group widths."""
    unit = b.counted_by(node, groups, "groups")
    per_in = b.virtual(node, "inputs per group", b.size(x_ch) // groups)
    per_out = b.virtual(node, "outputs per group", b.size(out_ch) // groups)
    if transposed:  # weight (in, out / groups, ...)
        b.link_same(x_ch, w_in)
        b.link_same(w_out, per_out)
    else:  # weight (out, in / groups, ...)
        b.link_same(w_out, out_ch)
        b.link_same(w_in, per_in)
    b.unit(per_in, "group-channel")
    b.unit(per_out, "group-channel")
    inside = b.size(per_in) > 1 and b.size(per_out) > 1
    b.choice([(x_ch, [unit, per_in]), (out_ch, [unit, per_out])],
             [(1, 1), (0, 0)] if inside else [(0, 0), (1, 1)], "channels of a grouped conv")
