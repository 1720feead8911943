"""Rules for tensor factories (arange, zeros, new_ones, ...): their sizes are constants of the code."""
from __future__ import annotations

from torch import fx

from ..coupling import Builder, register_rule

aten = __import__("torch").ops.aten


@register_rule(aten.arange, aten.zeros, aten.ones, aten.full, aten.empty, aten.scalar_tensor, aten.rand,
               aten.randn, aten.new_zeros, aten.new_ones, aten.new_full, aten.new_empty, aten.eye)
def factory(b: Builder, node: fx.Node) -> None:
    """A created tensor's dims are fixed by the call; a ``new_*`` source only lends dtype and device."""
    for arg in node.all_input_nodes:
        for s in b.slots(arg):
            b.touch(s)
    for s in b.slots(node):
        b.freeze(s, f"size set by {node.target.overloadpacket.__name__} in the code")
