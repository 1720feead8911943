"""Rules for linear layers and matrix products: linear, bilinear, matmul/mm/bmm, einsum."""
from __future__ import annotations

from torch import fx

from ..coupling import Builder, register_rule
from .attention import HEAD_DIM_KEPT

aten = __import__("torch").ops.aten
# no weight multiplies these channels: dropping one drops its whole product term (a Gram matrix,
# a bilinear similarity), which no zeroed parameter reproduces, as for a sum over them
ACTIVATION_PRODUCT = "contracted with another activation (no weight to zero)"


@register_rule(aten.linear)
def linear(b: Builder, node: fx.Node) -> None:
    """Leading dims pass through; in-features couple to weight dim 1, out-features to dim 0 and bias."""
    x, w = node.args[0], node.args[1]
    bias = node.args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    xs, ws, out = b.slots(x), b.slots(w), b.slots(node)
    for s, o in zip(xs[:-1], out[:-1]):
        b.link_same(s, o)
    if len(ws) == 1:  # weight is a vector: output has no feature dim
        b.link_same(xs[-1], ws[0])
        b.role(ws[0], "in")
        return
    b.link_same(xs[-1], ws[1])
    b.link_same(ws[0], out[-1])
    b.role(ws[1], "in")
    b.role(ws[0], "out")
    if bias is not None:
        b.link_same(b.slot(bias, 0), out[-1])
        b.role(b.slot(bias, 0), "out")


@register_rule(aten.bilinear)
def bilinear(b: Builder, node: fx.Node) -> None:
    """``y_k = x1^T W_k x2 + b_k`` (``nn.Bilinear``): each input's features couple to their own
    weight dim, the outputs to dim 0 and the bias; leading dims pass through. A feature's every
    term sits in its weight slice, so zeroing the slice removes it (also when x1 is x2)."""
    x1, x2, w = node.args[:3]
    bias = node.args[3] if len(node.args) > 3 else None
    x1s, x2s, ws, out = b.slots(x1), b.slots(x2), b.slots(w), b.slots(node)
    for s1, s2, o in zip(x1s[:-1], x2s[:-1], out[:-1]):
        b.link_same(s1, o)
        b.link_same(s2, o)
    b.link_same(x1s[-1], ws[1], "first input of a bilinear map")
    b.link_same(x2s[-1], ws[2], "second input of a bilinear map")
    b.link_same(ws[0], out[-1])
    for s, role in ((ws[1], "in"), (ws[2], "in"), (ws[0], "out")):
        b.role(s, role)
    if isinstance(bias, fx.Node):
        b.link_same(b.slot(bias, 0), out[-1])
        b.role(b.slot(bias, 0), "out")


@register_rule(aten.addmm)
def addmm(b: Builder, node: fx.Node) -> None:
    """bias + x (n, k) @ w (k, m): a linear layer with a transposed weight (HF ``Conv1D``)."""
    bias, x, w = node.args[:3]
    xs, ws, out = b.slots(x), b.slots(w), b.slots(node)
    b.link_same(xs[0], out[0])
    b.link_same(xs[1], ws[0], "contraction of a matrix product")
    b.link_same(ws[1], out[1])
    for s, role in ((ws[0], "in"), (ws[1], "out")):
        if b.g.nodes[s]["fqn"]:
            b.role(s, role)
    bs = b.slots(bias)
    for s, o in zip(bs, out[len(out) - len(bs):]):
        b.link_same(s, o) if b.size(s) == b.size(o) else b.touch(s)
    if bs and b.g.nodes[bs[-1]]["fqn"]:
        b.role(bs[-1], "out")


@register_rule(aten.matmul, aten.mm, aten.bmm)
def matmul(b: Builder, node: fx.Node) -> None:
    """(..., n, k) @ (..., k, m): the contraction dims couple; batch dims broadcast."""
    x, y = node.args[0], node.args[1]
    xs, ys, out = b.slots(x), b.slots(y), b.slots(node)
    if len(xs) < 2 or len(ys) < 2:
        return  # vector products: leave every dim to the automatic freeze
    b.link_same(xs[-1], ys[-2], "contraction of a matrix product")
    b.link_same(xs[-2], out[-2])
    b.link_same(ys[-1], out[-1])
    for operand in (xs, ys):
        for k in range(1, len(operand) - 1):
            if b.size(operand[-2 - k]) == b.size(out[-2 - k]):
                b.link_same(operand[-2 - k], out[-2 - k])
            elif b.size(operand[-2 - k]) == 1:
                b.touch(operand[-2 - k])
    # a parameter operand, maybe transposed (Falcon's ``x @ self.weight.T``): its contracted dim
    # consumes, its other dim produces, so the oracle knows what to zero
    roles = [(x, len(xs) - 1, "in"), (y, len(ys) - 2, "in"), (x, len(xs) - 2, "out"), (y, len(ys) - 1, "out")]
    params = [(b.param_slot(n, d), role) for n, d, role in roles]
    for param, role in params:
        if param is not None:
            b.role(param, role)
    if not any(p for p, _ in params) and b.from_data(x) and b.from_data(y) and b.size(xs[-1]) > 1:
        b.inexact(xs[-1], ACTIVATION_PRODUCT)
    if len(out) > 2 and not any(p for p, _ in params):
        b.unit(out[-3], "head")  # a batched product of two activations is per head (eager attention)
        if len(xs) > 2 and len(ys) > 2:  # q @ k^T contracts the head size, attn @ v keeps v's: both stay, as under SDPA
            for s in (xs[-1], ys[-1]):
                if b.size(s) > 1:
                    b.freeze(s, HEAD_DIM_KEPT)


@register_rule(aten.einsum)
def einsum(b: Builder, node: fx.Node) -> None:
    """Every subscript letter couples the dims it names, across operands and output."""
    eq, operands = node.args[0].replace(" ", ""), list(node.args[1])
    if "..." in eq:
        return
    lhs, rhs = eq.split("->") if "->" in eq else (eq, None)
    terms = lhs.split(",")
    if rhs is None:
        rhs = "".join(sorted(c for c in set(lhs) - {","} if lhs.count(c) == 1))
    seen: dict[str, tuple] = {}
    for term, node_ in [*zip(terms, operands), (rhs, node)]:
        for letter, s in zip(term, b.slots(node_)):
            if letter in seen:
                b.link_same(seen[letter], s, f"einsum subscript {letter!r}")
            else:
                seen[letter] = s
                b.touch(s)
    for i, (term, operand) in enumerate(zip(terms, operands)):  # a weight's letters: read (summed) or written
        others = "".join(t for j, t in enumerate(terms) if j != i)
        for d, letter in enumerate(term):
            param = b.param_slot(operand, d) if letter in others or letter in rhs else None
            if param is not None:
                b.role(param, "out" if letter in rhs else "in")
    for letter in set(lhs) - {","} - set(rhs):  # summed over
        readers = [o for t, o in zip(terms, operands) if letter in t]
        if all(b.from_data(o) for o in readers) and b.size(seen[letter]) > 1:
            b.inexact(seen[letter], ACTIVATION_PRODUCT if len(readers) > 1 else "summed over by einsum")
    activations = len(terms) == 2 and all(len(t) > 2 and not b.g.nodes[b.slots(o)[0]]["fqn"] for t, o in zip(terms, operands))
    for letter in set(lhs) - {","} - (set(terms[0]) & set(terms[1]) & set(rhs)) if activations else ():
        if b.size(seen[letter]) > 1:  # "bhqd,bhkd->bhqk", "bhqk,bhkd->bhqd": only batch and heads prune, as under SDPA
            b.freeze(seen[letter], HEAD_DIM_KEPT)


# ``transformers.grouped_mm_fallback`` is transformers' CPU stand-in for ``aten._grouped_mm``, same schema
@register_rule(aten._grouped_mm, "transformers.grouped_mm_fallback")
def grouped_mm(b: Builder, node: fx.Node) -> None:
    """Mixture-of-experts product: tokens x (T, K), sorted by expert, times expert e's slice of
    w (E, K, N) for the rows ``offs`` gives it -> (T, N). K and N are the width of every expert at
    once (one fused tensor); the expert dim is kept, since ``offs`` addresses it by index."""
    x, w = node.args[:2]
    offs = node.args[2] if len(node.args) > 2 else node.kwargs.get("offs")
    xs, ws, out = b.slots(x), b.slots(w), b.slots(node)
    if len(xs) != 2 or len(ws) != 3:
        return  # the batched (3D x 3D) and 2D x 2D forms: leave every dim to the automatic freeze
    b.link_same(xs[0], out[0])
    b.link_same(xs[1], ws[1], "contraction of a grouped matrix product")
    b.link_same(ws[2], out[1])
    for s in (ws[1], ws[2]):  # grouped matmul kernels want 16-byte rows: 8 elements in half precision
        b.align(s, 8, "grouped matmul rows must be 16-byte aligned")
    b.freeze(ws[0], "experts are kept (tokens are routed to them by index)")
    for s in b.slots(offs) if offs is not None else []:
        b.freeze(s, "experts are kept (tokens are routed to them by index)")
    for d, role in ((1, "in"), (2, "out")):
        param = b.param_slot(w, d)
        if param is not None:
            b.role(param, role)

