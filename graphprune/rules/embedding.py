"""Rules for embedding lookups: the embedding dim couples to the output's last dim."""
from __future__ import annotations

from torch import fx

from ..coupling import Builder, register_rule

aten = __import__("torch").ops.aten


@register_rule(aten.embedding)
def embedding(b: Builder, node: fx.Node) -> None:
    """Vocabulary rows stay (indices address them); the feature dim is prunable."""
    w, idx = node.args[0], node.args[1]
    ws, out = b.slots(w), b.slots(node)
    b.link_same(ws[1], out[-1])
    b.role(ws[1], "out")
    b.freeze(ws[0], "embedding rows are addressed by token ids")
    for s, o in zip(b.slots(idx), out[:-1]):
        b.link_same(s, o)
