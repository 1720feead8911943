"""Rules for reductions and softmax: kept dims couple, reduced dims may shrink (inexactly)."""
from __future__ import annotations

from torch import fx

from ..coupling import Builder, register_rule

aten = __import__("torch").ops.aten


NORM_STATISTICS = {"mean", "var", "std", "var_mean", "std_mean", "linalg_vector_norm", "norm"}
SCALING = {aten.mul.Tensor, aten.div.Tensor, aten.sub.Tensor}


def _normalises(node: fx.Node, depth: int = 4) -> bool:
    """A mean/variance/norm whose value (through a few ops: ``+ eps``, ``rsqrt``) scales or
    shifts the tensor it was computed from (``x`` itself or ``x`` before ``pow``/a cast):
    ``x * rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)``."""
    if node.target.overloadpacket.__name__ not in NORM_STATISTICS:
        return False
    sources, cur = set(), node.args[0]
    for _ in range(depth):  # x.pow(2), x.float(), x - mean: what the statistic was taken of
        sources.add(cur)
        if not (isinstance(cur, fx.Node) and cur.op == "call_function" and cur.args and isinstance(cur.args[0], fx.Node)):
            break
        cur = cur.args[0]
    frontier = list(node.users)
    for _ in range(depth):
        if any(u.target in SCALING and sources & set(u.args) for u in frontier):
            return True
        frontier = [v for u in frontier for v in u.users]
    return False


def _reduced(node: fx.Node, ndim: int) -> set[int]:
    dims = _dim_arg(node)
    if dims is None or dims == []:
        return set(range(ndim))
    dims = [dims] if isinstance(dims, int) else list(dims)
    return {d % ndim for d in dims}


def _dim_arg(node: fx.Node):
    """The ``dim`` argument: it is not always second (``linalg_vector_norm(x, ord, dim)``,
    ``norm(x, p, dim)``); overloads without one reduce all dims."""
    return _arg(node, "dim")


def _arg(node: fx.Node, name: str):
    """An argument found by name in the op's schema (None where the overload has none or it is not given)."""
    names = [a.name for a in node.target._schema.arguments]
    if name not in names:
        return None
    i = names.index(name)
    return node.args[i] if len(node.args) > i else node.kwargs.get(name)


@register_rule(aten.mean, aten.sum, aten.amax, aten.amin, aten.var, aten.std, aten.prod, aten.logsumexp,
               aten.linalg_vector_norm, aten.norm, aten.var_mean, aten.std_mean)
def reduction(b: Builder, node: fx.Node) -> None:
    """Reduced dims are marked inexact: removing entries changes the statistic."""
    x = node.args[0]
    xs = b.slots(x)
    out = b.slots(node)
    red = _reduced(node, len(xs))
    j = 0
    keep = len(out) == len(xs)
    if red == {len(xs) - 1} and _arg(node, "keepdim") and _normalises(node):
        # a layer/RMS norm written by hand (HF's LlamaRMSNorm, T5LayerNorm): its channels are a
        # residual stream, as aten.layer_norm's are
        b.kind(xs[-1], "hidden")
    for i, s in enumerate(xs):
        if i in red:
            b.inexact(s, f"reduced over by {node.target.overloadpacket.__name__}")
            if keep:
                b.touch(out[j])
                j += 1
        elif j < len(out):
            b.link_same(s, out[j])
            j += 1


@register_rule(aten.softmax, aten._softmax, aten.log_softmax, aten._log_softmax)
def softmax(b: Builder, node: fx.Node) -> None:
    """Same shape in and out; the softmax dim is normalised over."""
    xs, out = b.slots(node.args[0]), b.slots(node)
    dim = node.args[1] % len(xs)
    for i, (s, o) in enumerate(zip(xs, out)):
        b.link_same(s, o)
        if i == dim:
            b.inexact(o, "softmax normalises over this dim")


@register_rule(aten.argmax, aten.argmin)
def arg_reduction(b: Builder, node: fx.Node) -> None:
    """The result is a position along the reduced dims, so those stay fixed; kept dims couple."""
    xs, out = b.slots(node.args[0]), b.slots(node)
    red = _reduced(node, len(xs))
    kept = [s for i, s in enumerate(xs) if i not in red]
    for i in sorted(red):
        b.freeze(xs[i], f"{node.target.overloadpacket.__name__} returns positions along this dim")
    rest = [o for i, o in enumerate(out) if i not in red] if len(out) == len(xs) else out
    for s, o in zip(kept, rest):
        b.link_same(s, o)
    for o in out:
        b.touch(o)


@register_rule(aten.topk, aten.sort, aten.argsort, aten.kthvalue)
def selection(b: Builder, node: fx.Node) -> None:
    """Ordering along a dim (MoE routers' top-k over experts): that dim is fixed, others couple to
    every output (values and indices, taken through getitem)."""
    xs = b.slots(node.args[0])
    dim = _selection_dim(node, len(xs))
    b.freeze(xs[dim], f"{node.target.overloadpacket.__name__} orders along this dim")
    outs = [u for u in node.users if u.target.__name__ == "getitem"] if b.shape(node) is None else [node]
    for o in outs:
        for i, (s, t) in enumerate(zip(xs, b.slots(o))):
            b.link_same(s, t) if i != dim else b.freeze(t, "positions along an ordered dim")


def _selection_dim(node: fx.Node, ndim: int) -> int:
    dim = _dim_arg(node)
    return (-1 if dim is None else dim) % ndim if ndim else 0
