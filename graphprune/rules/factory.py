"""Rules for tensor factories (arange, zeros, new_ones, ...): their sizes are constants of the code."""
from __future__ import annotations

from torch import fx

from ..coupling import Builder, register_rule

aten = __import__("torch").ops.aten


@register_rule(aten.arange, aten.zeros, aten.ones, aten.full, aten.empty, aten.scalar_tensor, aten.rand,
               aten.randn, aten.new_zeros, aten.new_ones, aten.new_full, aten.new_empty, aten.eye)
def factory(b: Builder, node: fx.Node) -> None:
    """A created tensor's dims are fixed by the call, unless a constant-valued tensor reads its size
    from a module attribute; a ``new_*`` source only lends dtype and device."""
    for arg in node.all_input_nodes:
        for s in b.slots(arg):
            b.touch(s)
    for s in b.slots(node):
        if node.target.overloadpacket in UNIFORM and b.bind_code_attrs(s):
            b.touch(s)
        else:
            b.freeze(s, f"size set by {node.target.overloadpacket.__name__} in the code")


# Every entry of these is the same value, so any subset of a dim is the tensor the code makes
# with a smaller size: a dim sized by a module attribute (T5's ``zeros((1, self.n_heads, q, k))``)
# prunes once that attribute is bound. arange / rand differ per index and stay fixed.
UNIFORM = {aten.zeros, aten.ones, aten.full, aten.empty, aten.new_zeros, aten.new_ones, aten.new_full,
           aten.new_empty}
