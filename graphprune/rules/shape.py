"""Rules for reshapes (view, reshape, flatten, unflatten, squeeze...): dims split and merged, and the
sizes the model's code writes for them (``layout`` has the ops that only reorder or repeat dims)."""
from __future__ import annotations

import ast
import operator
import re
from itertools import accumulate

from torch import fx

from .. import source
from ..coupling import HEAD_COUNT_ATTRS, Builder, register_rule
from .layout import canonical_is, link_template

aten = __import__("torch").ops.aten


def match_dims(a: tuple[int, ...], b: tuple[int, ...]) -> list[tuple[list[int], list[int]]]:
    """Pair runs of dims of ``a`` and ``b`` with equal products (size-1 dims skipped).

    >>> match_dims((2, 6), (2, 2, 3))
    [([0], [0]), ([1], [1, 2])]
    """
    ia = [i for i, s in enumerate(a) if s != 1]
    ib = [j for j, s in enumerate(b) if s != 1]
    runs, i, j = [], 0, 0
    while i < len(ia) and j < len(ib):
        ra, rb = [ia[i]], [ib[j]]
        pa, pb = a[ia[i]], b[ib[j]]
        i, j = i + 1, j + 1
        while pa != pb and (i < len(ia) if pa < pb else j < len(ib)):
            if pa < pb:
                ra.append(ia[i])
                pa, i = pa * a[ia[i]], i + 1
            else:
                rb.append(ib[j])
                pb, j = pb * b[ib[j]], j + 1
        runs.append((ra, rb))
    return runs


@register_rule(aten.view, aten.reshape, aten._unsafe_view, aten.flatten, aten.unflatten, aten.squeeze,
               aten.unsqueeze, aten.view_as, aten.reshape_as)
def reshape(b: Builder, node: fx.Node) -> None:
    """1:1 runs couple, 1:n runs split (factor), n:1 runs merge (factor); an n:m run is both sides
    merging one finer factorisation when there is one (``(L, B, E) -> (L, B*H, hd)``)."""
    src = node.args[0]
    ins, outs = b.slots(src), b.slots(node)
    for i, s in enumerate(b.shape(src)):
        if s == 1:
            b.touch(ins[i])
    for j, s in enumerate(b.shape(node)):
        if s == 1:
            b.touch(outs[j])
    written = any(canonical_is(node, k) for k in (aten.view, aten.reshape, aten._unsafe_view, aten.unflatten))
    exprs = source.size_exprs(node, len(outs), module=b.module()[1]) if written else None
    exprs = exprs or _unflatten_graph_sizes(node, len(outs)) or [None] * len(outs)
    first_binding = len(b.c.bindings)
    for ra, rb in match_dims(b.shape(src), b.shape(node)):
        if len(ra) == 1 and len(rb) == 1:
            b.link_same(ins[ra[0]], outs[rb[0]])
            if exprs[rb[0]] is not None:  # x.reshape(-1, self.hidden_dim); unsqueeze names no size
                b.bind_code_attrs(outs[rb[0]], exprs[rb[0]])
        elif len(ra) == 1 and rb:
            b.factor(ins[ra[0]], [outs[j] for j in rb])
            _bind_sizes(b, ins[ra[0]], [outs[j] for j in rb], {outs[j]: exprs[j] for j in rb})
            for j in rb:  # view(B, N, self.heads[self.stage], -1): a part read from an attribute
                if source.direct_read(exprs[j]):
                    b.bind_code_attrs(outs[j], exprs[j])
                elif exprs[j] is not None:  # view(B, 2, self.width // 2, H, W): the whole's width
                    b.bind_code_attrs(ins[ra[0]], exprs[j])
        elif len(rb) == 1 and ra:
            b.factor(outs[rb[0]], [ins[i] for i in ra])
            if ra[0] > 0:  # (B, H) -> B*H folds heads into the batch: its parts are no (heads, head_dim)
                _bind_sizes(b, outs[rb[0]], [ins[i] for i in ra], {outs[rb[0]]: exprs[rb[0]]})
            if exprs[rb[0]] is not None:  # x.reshape(B, -1, self.dim_out) merging heads: only the written position binds
                b.bind_code_attrs(outs[rb[0]], exprs[rb[0]])
                _bind_product(b, node, outs[rb[0]], [ins[i] for i in ra], exprs[rb[0]])  # h * self.n_rep
        elif ra and rb:
            refine(b, node, [ins[i] for i in ra], [outs[j] for j in rb], [exprs[j] for j in rb])
    if canonical_is(node, aten.view_as) or canonical_is(node, aten.reshape_as):
        link_template(b, node)
    elif written:
        _follow_input_sizes(b, node, exprs)
        _freeze_fixed_sizes(b, node, outs, exprs, frozenset(bd.attr for bd in b.c.bindings[first_binding:]))


def _unflatten_graph_sizes(node: fx.Node, ndim: int) -> list | None:
    """What the graph alone tells of an ``unflatten`` whose statement cannot be read: the dims
    it leaves alone follow their input, and a ``-1`` among the new ones is computed; the other
    new sizes are unknown (a number or an attribute's value look the same there)."""
    if not canonical_is(node, aten.unflatten):
        return None
    at, sizes = node.args[1] % (ndim + 1 - len(node.args[2])), list(node.args[2])
    new = [ast.Constant(value=-1) if n == -1 else None for n in sizes]
    return [source.FROM_SHAPE] * at + new + [source.FROM_SHAPE] * (ndim - at - len(sizes))


def _freeze_fixed_sizes(b: Builder, node: fx.Node, outs: list, exprs: list, bound: frozenset[str]) -> None:
    """A size the code writes as a number, or computes from something pruning does not update,
    stays: with a ``-1`` elsewhere in the call the reshape would silently absorb the change
    (``view(B, N, 4, -1)`` after removing a head splits into 4 heads of the wrong size). Sizes
    bound to an attribute, read from a tensor's shape, or ``-1`` follow. With source reading off
    (``read_source=False``) no size can be read, so every dim no attribute is bound to stays."""
    if source.in_torch(node):
        return
    function = None
    for s, expr in zip(outs, exprs):
        if b.size(s) < 2 or s in b.bound:
            continue
        if expr is not None and source.constant_size(expr):
            b.freeze(s, "its size is a number written in the model's code")
            continue
        function = source.function_source(node) if function is None else function
        if source.follows(expr, function, bound) or _linked_to_input(b, s):
            continue
        unread = "the code's size for this dim cannot be read" + ("" if source.enabled() else " (read_source=False)")
        b.freeze(s, unread if expr is None else
                 f"its size {ast.unparse(expr)!r} is computed from a value pruning does not update")


def _linked_to_input(b: Builder, s) -> bool:
    """Coupled (by ``_follow_input_sizes``) to a dim of the module's input."""
    return any(b.g.edges[s, o]["why"].startswith("reshape to a size read") for o in b.g.adj[s])


def fine_sizes(left: list[int], right: list[int]) -> list[int] | None:
    """The coarsest factorisation that both ``left`` and ``right`` are row-major merges of, or None
    when their cuts interleave without dividing (``(6, 4) -> (4, 6)`` mixes indices).

    >>> fine_sizes([2, 12], [8, 3]), fine_sizes([6, 4], [4, 6])
    ([2, 4, 3], None)
    """
    cuts = sorted({1, *accumulate(left, operator.mul), *accumulate(right, operator.mul)})
    if any(c2 % c1 for c1, c2 in zip(cuts, cuts[1:])):
        return None
    return [c2 // c1 for c1, c2 in zip(cuts, cuts[1:])]


def refine(b: Builder, node: fx.Node, left: list, right: list, exprs: list | None = None) -> None:
    """Couple an n:m run through virtual slots of the finer factorisation: each dim of either side
    is one fine slot (coupled) or a merge of several (a factor). torch's own attention views
    ``(L, B, E)`` as ``(L, B*H, hd)``: the fine slots are B, H and hd, and the code's
    ``bsz * num_heads`` names the size of each."""
    fine = fine_sizes([b.size(s) for s in left], [b.size(s) for s in right])
    if fine is None:
        return  # left to the automatic freeze
    slots = [b.virtual(node, f"fine {k} of {left[0][1]}", n) for k, n in enumerate(fine)]
    for side, written in ((left, [None] * len(left)), (right, exprs or [None] * len(right))):
        k = 0
        for i, (s, expr) in enumerate(zip(side, written)):
            j, covered = k, 1
            while covered < b.size(s):
                covered, j = covered * fine[j], j + 1
            if j - k == 1:
                b.link_same(s, slots[k])
            else:
                b.factor(s, slots[k:j])
                if i == len(side) - 1:  # a run's last dim splitting into (heads, head_dim)
                    _bind_sizes(b, s, slots[k:j])
                _bind_product(b, node, s, slots[k:j], expr)
            k = j


def _bind_product(b: Builder, node: fx.Node, whole, parts: list, expr) -> None:
    """``bsz * num_heads`` sizing a merge of (batch, heads): each term sizes one part; the merge
    follows pruning when every term is bound or read from a shape."""
    terms = source.product_terms(expr)
    if len(terms) != len(parts):
        return
    function = source.function_source(node)
    ok = True
    for term, part in zip(terms, parts):
        if source.direct_read(term):
            b.bind_code_attrs(part, term)
        fixed = b.size(part) == 1 or bool(b.g.nodes[part]["frozen"])  # kv heads * n_rep: the repeat stays
        ok = ok and (part in b.bound or source.follows(term, function) or fixed)
    if ok:
        b.bound.add(whole)


def _follow_input_sizes(b: Builder, node: fx.Node, exprs: list) -> None:
    """``B, N, C = x.shape`` then ``y.reshape(B, N, C)``: the graph holds the number, but the code
    reads it from the module's input, so after pruning the dim must have the input's width. Coupling
    the two keeps the counts equal (pvt_v2 and CoaT merge their heads back to the input's C). A size
    computed from it, ``reshape(B, N, 3, heads, C // heads)``, makes the input's width the heads
    times the head size: its channels are coupled to the heads in blocks (Swin)."""
    function = None
    for j, (s, expr) in enumerate(zip(b.slots(node), exprs)):
        if b.size(s) < 2 or expr is None:
            continue
        quotient = source.quotient(expr)
        read = quotient[0] if quotient else expr
        if not isinstance(read, ast.Name):
            continue
        function = source.function_source(node) if function is None else function
        found = source.shape_read(function, read.id)
        if found is None:
            continue
        if quotient is None:
            hit = _input_dim(b, node, found, b.size(s))
            if hit is not None:
                b.link_same(hit, s, "reshape to a size read from the module input's shape")
            continue
        heads = _position_of(exprs, quotient[1], j)
        if heads is not None:
            hit = _input_dim(b, node, found, b.size(s) * b.size(b.slots(node)[heads]))
            if hit is not None:
                b.link_blocks(hit, b.slots(node)[heads], "a size computed from the module input's width "
                              "(width // heads): the input's channels follow the heads")


def _input_dim(b: Builder, node: fx.Node, found: tuple[int, int | None], size: int):
    """The slot of the one module input whose dim ``found`` (from ``shape_read``) has ``size``."""
    k, ndim = found
    hits = [x for x in b.module_inputs(node) if (ndim is None or len(b.shape(x)) == ndim)
            and -len(b.shape(x)) <= k < len(b.shape(x)) and b.shape(x)[k] == size]
    return b.slot(hits[0], k) if len(hits) == 1 else None


def _position_of(exprs: list, divisor: ast.expr, skip: int) -> int | None:
    """The other size argument written exactly as ``divisor`` (``heads`` in ``(.., heads, C // heads)``)."""
    want = ast.dump(divisor)
    found = [i for i, e in enumerate(exprs) if i != skip and e is not None and ast.dump(e) == want]
    return found[0] if len(found) == 1 else None


# Attributes a module's forward reads to reshape into heads, by the position they describe in a
# (..., heads, head_dim) factorisation. Matching by position as well as value keeps a module with
# 4 heads of size 4 from binding head_dim to the heads dim.
WIDTH_ATTRS = ("attn_dim", "all_head_size", "inner_dim")
HEAD_SIZE_ATTRS = ("head_dim", "attention_head_size", "head_size")


def _bind_sizes(b: Builder, whole, parts: list, written: dict | None = None) -> None:
    """Bind the module's width/head attributes to the reshape dims whose size and position they
    match. Where the code's size for a dim is known (``written``: slot -> expression), only an
    attribute it names may bind there: in ``view(bsz, num_heads, L, d)`` with two heads and a
    batch of two, ``num_heads`` sizes the second dim only."""
    fqn, mod = b.code_module()
    if mod is None or source.in_torch(b.node):  # torch's own layers are rebuilt by their slicers
        return
    written = written or {}
    nearby = source.nearby_source(b.node) if canonical_is(b.node, aten.flatten) else ""
    for names, slots in ((WIDTH_ATTRS, [whole]), (HEAD_SIZE_ATTRS, parts[-1:]), (HEAD_COUNT_ATTRS, parts[:-1])):
        for name in names:
            value = getattr(mod, name, None)
            if nearby and not re.search(rf"\b{name}\b", nearby):
                continue  # a flatten writes no size: an attribute no code near it names matches by value alone
            fits = [s for s in slots if type(value) is int and value > 1 and b.size(s) == value
                    and (written.get(s) is None or name in source.evidence_names(b.node, written[s]))]
            if len(fits) == 1:  # (batch, heads) of equal sizes: no way to tell which one it counts
                b.bind(fits[0], fqn, name)
