"""Rules for slicing a dim: identity, a fixed window, or one piece of a fused tensor.

Fused projections are cut by slices whose bounds the model's code computes from widths it stores:
Phi-3 cuts ``qkv_proj``'s output at ``config.num_attention_heads * head_dim`` and at
``num_key_value_heads * head_dim`` more. Slices that together tile a dim are its pieces, as for
``split``, when every cut follows a width attribute that pruning updates; bound here, the attribute
makes the code cut the pruned tensor in the right place. Any other partial slice fixes the dim.
"""
from __future__ import annotations

from torch import fx

from .. import source
from ..coupling import HEAD_COUNT_ATTRS, Builder, register_rule
from .layout import canonical_is
from .shape import match_dims

aten = __import__("torch").ops.aten

OPEN_END = 2 ** 62  # ``x[a:]`` exports as slice(x, d, a, sys.maxsize): its end follows the input
RESHAPES = (aten.view, aten.reshape, aten._unsafe_view)
Bound = tuple[tuple[str, int], str, str]  # (slot, module fqn, attribute)


@register_rule(aten.slice)
def slice_(b: Builder, node: fx.Node) -> None:
    """A full-range slice is an identity; a piece of a tiling is linked at its offset with its width
    bound; any other partial slice fixes the sliced dim."""
    ins, outs = b.slots(node.args[0]), b.slots(node)
    dim = _dim(node, len(ins))
    tiling = _tiling(b, node.args[0], dim)
    binds = [_piece_binding(b, p, dim, last=(p is tiling[-1])) for p in tiling] if tiling else []
    for i, (s, o) in enumerate(zip(ins, outs)):
        if i != dim or b.size(s) == b.size(o):
            b.link_same(s, o)
        elif binds and all(x is not None for x in binds):
            b.link_offset(o, s, _bounds(node, b.size(s))[0], "a piece of a dim its slices tile")
            for slot, fqn, attr in binds[tiling.index(node)]:
                b.bind(slot, fqn, attr)
        else:
            why = "a partial slice fixes the indices of this dim" + (
                "; its sibling slices tile it, but not every cut follows a width attribute" if tiling else "")
            b.freeze(s, why)
            b.freeze(o, why)
            for slot, fqn, attr in [x for found in binds if found for x in found]:
                b.pin(fqn, attr, "a slice cuts a dim that cannot be pruned")


def _dim(node: fx.Node, ndim: int) -> int:
    return (node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)) % ndim


def _bounds(node: fx.Node, size: int) -> tuple[int, int, bool]:
    """Start, end (clamped) and whether the end is open (runs to the end of the input)."""
    args = list(node.args) + [None] * (5 - len(node.args))
    start, end = args[2] or 0, size if args[3] is None else args[3]
    start, end = (start + size if start < 0 else start), (end + size if end < 0 else end)
    return start, min(end, size), end >= OPEN_END


def _tiling(b: Builder, src: fx.Node, dim: int) -> list[fx.Node] | None:
    """The slices of ``src`` along ``dim`` in order, if they cut it into contiguous pieces."""
    size = b.size(b.slots(src)[dim])
    pieces = [u for u in src.users if canonical_is(u, aten.slice) and _dim(u, len(b.shape(src))) == dim]
    if len(pieces) < 2 or any(not isinstance(a, int) for p in pieces for a in p.args[2:] if a is not None):
        return None
    if any(len(p.args) > 4 and p.args[4] not in (None, 1) for p in pieces):
        return None  # strided
    pieces.sort(key=lambda p: _bounds(p, size)[0])
    ends = [_bounds(p, size)[:2] for p in pieces]
    if ends[0][0] != 0 or ends[-1][1] != size or any(a[1] != c[0] for a, c in zip(ends, ends[1:])):
        return None
    return pieces if all(s < e for s, e in ends) else None


def _piece_binding(b: Builder, piece: fx.Node, dim: int, last: bool) -> list[Bound] | None:
    """Attributes whose update moves this piece's end with pruning; [] when the end needs none (an
    open last piece), None when no attribute is found."""
    size = b.size(b.slots(piece.args[0])[dim])
    if last and _bounds(piece, size)[2]:
        return []
    fqn, mod = b.code_module(piece)
    if mod is None:
        return None
    heads = _heads_slot(b, piece, dim)
    attr = heads and source.attr_read_at(piece, mod, b.size(heads), HEAD_COUNT_ATTRS, config=True)
    if attr:
        return [(heads, fqn, attr)]
    # a plain width: the module's own attribute only, since a config's hidden_size often equals a
    # piece's width by coincidence and is shared by every layer
    direct = source.attr_read_at(piece, mod, b.size(b.slots(piece)[dim]), None, config=False)
    return [(b.slots(piece)[dim], fqn, direct)] if direct else None


def _heads_slot(b: Builder, piece: fx.Node, dim: int):
    """The heads dim of the piece's reshape into (..., heads, head_dim), if it is reshaped so."""
    users = list(piece.users)
    if len(users) != 1 or not any(canonical_is(users[0], r) for r in RESHAPES):
        return None
    for ra, rb in match_dims(b.shape(piece), b.shape(users[0])):
        if ra == [dim] and len(rb) == 2:
            return b.slots(users[0])[rb[0]]
    return None
