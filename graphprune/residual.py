"""The proof behind depth pruning (``graphprune.blocks``): a module's forward returns its input plus
what its branches add, each branch ending in parameters that zero it. Walked back through the
traced graph from the module's one output, over additions and ops that pass the residual stream
through unchanged, to its input; no architecture is named.
"""
from __future__ import annotations

import torch
from torch import fx

from .trace import Traced

aten = torch.ops.aten
# ops whose output is their first input: the residual stream passes them unchanged
_PASS = {"aten.to", "aten._to_copy", "aten.alias", "aten.clone", "aten.contiguous", "aten.dropout",
         "aten.detach", "aten.lift_fresh_copy", "aten.type_as"}
_IDEMPOTENT = {"aten.relu", "aten.relu6", "aten.hardtanh"}
_NORMS = {"aten.layer_norm", "aten.rms_norm", "aten.batch_norm", "aten.group_norm", "aten.native_layer_norm"}
ADD = "aten.add"
# last ops of a branch that give zero once their parameters are zero
_ZEROED_BY_PARAMS = {"aten.linear", "aten.conv1d", "aten.conv2d", "aten.conv3d", "aten.convolution", "aten.mul",
                     "aten.matmul", "aten.mm", "aten.bmm", "aten.einsum", "aten.addmm", "aten._grouped_mm",
                     "aten.layer_norm", "aten.rms_norm", "aten.batch_norm", "aten.group_norm",
                     "aten._native_batch_norm_legit_no_training", "aten.native_layer_norm"}
_ZERO_TO_ZERO = {"aten.relu", "aten.gelu", "aten.silu", "aten.tanh", "aten.hardtanh", "aten.relu6", "aten.mul",
                 "aten.div", "aten.neg", "aten.leaky_relu", "aten.hardswish", "aten.mish"}
_VIEWS = {"aten.view", "aten.reshape", "aten.view_as", "aten.reshape_as", "aten._unsafe_view", "aten.flatten",
          "aten.unflatten", "aten.squeeze", "aten.unsqueeze"}
_RESHAPES = {"aten.view", "aten.reshape", "aten.permute", "aten.transpose", "aten.flatten", "aten.unflatten",
             "aten.squeeze", "aten.unsqueeze", "aten._unsafe_view", "aten.t", "aten.roll", "aten.slice",
             "aten.constant_pad_nd", "aten.expand", "aten.repeat", "aten.narrow", "aten.select", "aten.view_as",
             "aten.reshape_as", "aten.expand_as"}


Proof = tuple[tuple[str, ...], tuple[str, ...], "str | None"]  # branch-ending params, own params, why inexact


def prove_residual(traced: Traced, fqn: str, inside: set[fx.Node]) -> Proof | str:
    """For the module ``fqn`` whose forward made the nodes ``inside``: (the parameters that end its
    branches, its own parameters, why removing it is inexact or None), or why it is not removable."""
    outs = [n for n in inside if _shape(n) is not None and any(u not in inside for u in n.users)]
    if len(outs) != 1:
        return f"its forward hands {len(outs)} tensors to the rest of the model, not one"
    found = _residual(traced, outs[0], inside)
    if found is None:
        return "its output is not its input plus branches (no skip connection, or one that transforms the input)"
    x, branches, inexact = found
    if not branches or _shape(x) != _shape(outs[0]):
        return "it adds nothing to its input" if not branches else "its output and input differ in shape"
    ends = [_branch_end(traced, b, inside) for b in branches]
    if any(not e for e in ends):
        return "a branch does not end in a parameter that zeroes it (a linear map, conv, norm or scale)"
    params = _own_params(traced, fqn, inside)
    if isinstance(params, str):
        return params
    return tuple(f for e in ends for f in e), params, inexact


def _shape(n: fx.Node) -> tuple[int, ...] | None:
    val = n.meta.get("val") if isinstance(n, fx.Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def op_key(n: fx.Node) -> str:
    from .coupling import canonical

    return canonical(n.target) if n.op == "call_function" else n.op


def _residual(traced: Traced, n: fx.Node, inside: set[fx.Node]) -> tuple[fx.Node, list[fx.Node], str | None] | None:
    """(input, branch outputs, why inexact) when ``n`` is the block's input plus what its branches add."""
    if not isinstance(n, fx.Node) or _shape(n) is None:
        return None
    if n not in inside:
        return n, [], None
    key, args = op_key(n), [a for a in n.args if isinstance(a, fx.Node)]
    if key in _PASS or key in _VIEWS:  # views keep row-major order: back at the input's shape, x is x
        return _residual(traced, n.args[0], inside)
    if key == ADD and len(args) == 2 and n.kwargs.get("alpha", 1) == 1:
        for res, branch in ((args[0], args[1]), (args[1], args[0])):
            # a branch is computed inside the block and is not itself the input plus something
            if branch in inside and _residual(traced, branch, inside) is None:
                found = _residual(traced, res, inside)
                if found is not None:
                    return found[0], [*found[1], branch], found[2]
        return None
    if key in _IDEMPOTENT or key in _NORMS:
        found = _residual(traced, n.args[0], inside)
        if found is None:
            return None
        if key in _NORMS:
            why = f"a norm ({traced.module_path(n)}) follows the residual addition, so the block's removal " \
                  f"changes what later layers see"
            return found[0], found[1], found[2] or why
        return found if _clamped_by(found[0], key, n.args[1:]) else None
    return None


def _clamped_by(x: fx.Node, key: str, extra: tuple) -> bool:
    """``x`` already left the same clamp (``relu(relu(v)) == relu(v)``); pooling keeps that range."""
    while isinstance(x, fx.Node) and (op_key(x) in _PASS or "pool" in op_key(x)):
        x = x.args[0]
    return isinstance(x, fx.Node) and op_key(x) == key and tuple(x.args[1:]) == tuple(extra)


def _params_read(traced: Traced, n: fx.Node) -> list[str]:
    """Parameters ``n`` reads, directly or through a view (``self.gamma.reshape(1, -1, 1, 1)``)."""
    out = []
    for a in n.all_input_nodes:
        while a.op == "call_function" and (op_key(a) in _RESHAPES or op_key(a) in _PASS or op_key(a) == "aten.expand") \
                and len(a.all_input_nodes) == 1:
            a = a.all_input_nodes[0]
        if a.op == "placeholder" and traced.tensor_fqn.get(a.name) in traced.params:
            out.append(traced.tensor_fqn[a.name])
    return out


def _branch_end(traced: Traced, n: fx.Node, inside: set[fx.Node]) -> tuple[str, ...]:
    """Parameters of the last op on a branch whose zeroing zeroes the branch (empty if none)."""
    while n in inside:
        params = _params_read(traced, n)
        if params:
            return tuple(params) if op_key(n) in _ZEROED_BY_PARAMS else ()
        # ``reshape_as(y, template)`` reads only the template's shape
        ins = [n.args[0]] if op_key(n).endswith("_as") else [a for a in n.all_input_nodes if _shape(a) is not None]
        if len(ins) != 1 or not _zero_preserving(n):
            return ()
        n = ins[0]
    return ()


def _zero_preserving(n: fx.Node) -> bool:
    """A one-input op that maps 0 to 0 (so zeroing what feeds it zeroes its output)."""
    key = op_key(n)
    return key in _PASS or key in _ZERO_TO_ZERO or key in _RESHAPES


def _own_params(traced: Traced, fqn: str, inside: set[fx.Node]) -> tuple[str, ...] | str:
    """The block's parameters (canonical FQNs), or why they cannot go with it."""
    mod = traced.model.get_submodule(fqn)
    canon = {alias: name for name, aliases in traced.aliases.items() for alias in aliases}
    mine = sorted({canon.get(f"{fqn}.{n}", f"{fqn}.{n}") for n, _ in mod.named_parameters(remove_duplicate=False)})
    for node in traced.graph.nodes:
        if node.op == "placeholder" and traced.tensor_fqn.get(node.name) in mine:
            outside = [u for u in node.users if u not in inside]
            if outside:
                return f"{traced.tensor_fqn[node.name]} is also used outside it ({outside[0].name})"
    return tuple(mine)
