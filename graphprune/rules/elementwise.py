"""Rules for elementwise ops: broadcasting couples dims of equal size, aligned from the right."""
from __future__ import annotations

from torch import fx

from ..coupling import Builder, register_rule

aten = __import__("torch").ops.aten


def tensor_args(b: Builder, node: fx.Node) -> list[fx.Node]:
    return [a for a in node.all_input_nodes if b.shape(a) is not None]


@register_rule("pointwise", aten.dropout, aten.feature_dropout, aten.alpha_dropout, aten.contiguous,
               aten.alias, aten.detach, aten._to_copy, aten.to, aten.type_as, aten.lift_fresh_copy,
               aten.hardswish, aten.mish, aten.zeros_like, aten.ones_like, aten.empty_like,
               aten.full_like, aten.rand_like, aten.randn_like, aten.masked_fill, aten.copy,
               aten.__and__, aten.__or__, aten.__xor__, aten.where, aten.floor_divide, aten.fill, aten.zero,
               aten.clone)
def pointwise(b: Builder, node: fx.Node) -> None:
    """Broadcasting: an input dim couples to the output dim it lines up with when sizes agree."""
    out = b.slots(node)
    for arg in tensor_args(b, node):
        b.broadcast(b.slots(arg), out)


@register_rule(aten._assert_tensor_metadata, aten._assert_scalar, aten.sym_constrain_range_for_size,
               aten._assert_async)
def assertion(b: Builder, node: fx.Node) -> None:
    """Runtime shape assertions carry no data; their inputs stay free."""
    for arg in tensor_args(b, node):
        for s in b.slots(arg):
            b.touch(s)
