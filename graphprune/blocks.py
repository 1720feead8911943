"""Stage 3c, blocks: the residual blocks the traced graph proves removable (depth pruning).

A block is an entry of a ``ModuleList`` or ``nn.Sequential`` whose forward returns its input plus
what its branches add: ``y = x + f(x) + g(x + f(x))``. Zero every branch and ``y == x``, so the
block can go. The proof walks back from the block's one output through additions and ops that
pass a tensor through unchanged (dtype casts to the same dtype, dropout in eval, clones) until it
reaches the block's input. A ReLU after the addition is allowed when the input itself left a ReLU
(``relu(relu(v)) == relu(v)``); a norm after it (BERT's post-norm) makes the block *inexact*: it
can be removed, but the rest of the model then sees other values. Anything else: not removable,
with the reason. No architecture is named; the graph decides.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Iterator, Mapping

import torch
from torch import fx, nn

from .trace import Traced, trace

aten = torch.ops.aten
# ops whose output is their first input: the residual stream passes them unchanged
_PASS = {"aten.to", "aten._to_copy", "aten.alias", "aten.clone", "aten.contiguous", "aten.dropout",
         "aten.detach", "aten.lift_fresh_copy", "aten.type_as"}
_IDEMPOTENT = {"aten.relu", "aten.relu6", "aten.hardtanh"}
_NORMS = {"aten.layer_norm", "aten.rms_norm", "aten.batch_norm", "aten.group_norm", "aten.native_layer_norm"}
_ADD = "aten.add"
# last ops of a branch that give zero once their parameters are zero
_ZEROED_BY_PARAMS = {"aten.linear", "aten.conv1d", "aten.conv2d", "aten.conv3d", "aten.convolution", "aten.mul",
                     "aten.matmul", "aten.mm", "aten.bmm", "aten.einsum", "aten.addmm", "aten._grouped_mm",
                     "aten.layer_norm", "aten.rms_norm", "aten.batch_norm", "aten.group_norm",
                     "aten._native_batch_norm_legit_no_training", "aten.native_layer_norm"}
_ZERO_TO_ZERO = {"aten.relu", "aten.gelu", "aten.silu", "aten.tanh", "aten.hardtanh", "aten.relu6", "aten.mul",
                 "aten.div", "aten.neg", "aten.leaky_relu", "aten.hardswish", "aten.mish"}
_VIEWS = {"aten.view", "aten.reshape", "aten.view_as", "aten.reshape_as", "aten._unsafe_view", "aten.flatten", "aten.unflatten", "aten.squeeze",
          "aten.unsqueeze"}
_RESHAPES = {"aten.view", "aten.reshape", "aten.permute", "aten.transpose", "aten.flatten", "aten.unflatten",
             "aten.squeeze", "aten.unsqueeze", "aten._unsafe_view", "aten.t", "aten.roll", "aten.slice",
             "aten.constant_pad_nd", "aten.expand", "aten.repeat", "aten.narrow", "aten.select", "aten.view_as",
             "aten.reshape_as", "aten.expand_as"}


@dataclass(frozen=True)
class Block:
    """A removable block: its module, the stack holding it and where, and each branch's last module
    with parameters (what the data-free criterion reads and the oracle zeroes)."""

    fqn: str
    stack: str
    index: int
    branches: tuple[str, ...]
    params: tuple[str, ...]
    inexact: str | None = None

    @property
    def size(self) -> int:
        """How many parameter tensors go with it (see ``params``)."""
        return len(self.params)


@dataclass(frozen=True)
class Blocks:
    """Every removable block of a model, and why each other stack entry is not removable."""

    blocks: tuple[Block, ...]
    rejected: Mapping[str, str]
    traced: Traced

    def __iter__(self) -> Iterator[Block]:
        return iter(self.blocks)

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> Block:
        return self.blocks[i]

    def __str__(self) -> str:
        lines = [f"{len(self.blocks)} removable blocks, {len(self.rejected)} stack entries kept"]
        lines += [f"  {b.fqn}: branches {', '.join(b.branches)}" + (f" (inexact: {b.inexact})" if b.inexact else "")
                  for b in self.blocks]
        lines += [f"  kept {fqn}: {why}" for fqn, why in self.rejected.items()]
        return "\n".join(lines)


def find_blocks(model: Any, example_inputs: Any = None) -> Blocks:
    """Every submodule whose forward the graph proves to be ``input + branches``, for a model (traced
    here) or a ``Traced``. Nested candidates (a stage and its blocks, a T5 layer and the feed-forward
    inside it) resolve to the innermost, except that an entry of a layer list the model's config
    counts (so a reload rebuilds the model) wins over the blocks inside it.

    >>> from torch import nn
    >>> class Res(nn.Module):
    ...     def __init__(self): super().__init__(); self.fc = nn.Linear(4, 4)
    ...     def forward(self, x): return x + self.fc(x)
    >>> model = nn.Sequential(nn.Linear(4, 4), Res(), Res())
    >>> [b.fqn for b in find_blocks(model, torch.randn(2, 4))]
    ['1', '2']
    """
    from .surgery.blocks import layer_fields

    traced = model if isinstance(model, Traced) else trace(model, example_inputs)
    return blocks_from_trace(traced, frozenset(layer_fields(traced.model)))


def blocks_from_trace(traced: Traced, prefer: frozenset[str] = frozenset()) -> Blocks:
    """``find_blocks`` on a traced model; ``prefer``: lists whose entries win over nested blocks."""
    inside_of = _Inside(traced)
    found: dict[str, Block] = {}
    rejected: dict[str, str] = {}
    for fqn, stack, index in _candidates(traced.model):
        inside = inside_of(fqn)
        if not any(_key(n) == _ADD for n in inside):
            continue  # no addition inside: no skip connection to prove, nothing worth explaining
        block = _prove(traced, fqn, stack, index, inside)
        if isinstance(block, Block):
            found[fqn] = block
        elif index >= 0:  # a list entry that stays: say why (other modules would only add noise)
            rejected[fqn] = block
    chosen = _resolve_nesting(found, prefer)
    return Blocks(tuple(chosen), MappingProxyType(dict(sorted(rejected.items()))), traced)


class _Inside:
    """The graph nodes a module's forward made (its own and its submodules'), by FQN prefix."""

    def __init__(self, traced: Traced):
        by_path: dict[str, list[fx.Node]] = {}
        for n in traced.graph.nodes:
            if n.op == "call_function":
                by_path.setdefault(traced.module_path(n), []).append(n)
        self.paths = sorted(by_path)
        self.by_path = by_path

    def __call__(self, fqn: str) -> set[fx.Node]:
        start = bisect.bisect_left(self.paths, fqn)
        out: set[fx.Node] = set()
        for path in self.paths[start:]:
            if not path.startswith(fqn):
                break
            if _within(path, fqn):
                out.update(self.by_path[path])
        return out


def _within(path: str, fqn: str) -> bool:
    return path == fqn or path.startswith(fqn + ".")


def _candidates(model: nn.Module) -> Iterator[tuple[str, str, int]]:
    """(fqn, parent fqn, position in the parent list or -1 for a named attribute) of every submodule
    that is not itself a list (a list goes entry by entry)."""
    for parent, mod in model.named_modules():
        is_list = isinstance(mod, (nn.ModuleList, nn.Sequential))
        for name, child in mod.named_children():
            if not isinstance(child, (nn.ModuleList, nn.ModuleDict, nn.Sequential)):
                index = int(name) if is_list and name.isdigit() else -1
                yield (f"{parent}.{name}" if parent else name), parent, index


def _resolve_nesting(found: dict[str, Block], prefer: frozenset[str]) -> list[Block]:
    drop = set()
    for outer in found.values():
        for inner in found.values():
            if inner is not outer and _within(inner.fqn, outer.fqn):
                drop.add(inner.fqn if outer.stack in prefer else outer.fqn)
    return [b for fqn, b in found.items() if fqn not in drop]


def _prove(traced: Traced, fqn: str, stack: str, index: int, inside: set[fx.Node]) -> Block | str:
    """The block, or why it is not removable."""
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
    return Block(fqn, stack, index, tuple(f for e in ends for f in e), params, inexact)


def _shape(n: fx.Node) -> tuple[int, ...] | None:
    val = n.meta.get("val") if isinstance(n, fx.Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def _key(n: fx.Node) -> str:
    from .coupling import canonical

    return canonical(n.target) if n.op == "call_function" else n.op


def _residual(traced: Traced, n: fx.Node, inside: set[fx.Node]) -> tuple[fx.Node, list[fx.Node], str | None] | None:
    """(input, branch outputs, why inexact) when ``n`` is the block's input plus what its branches add."""
    if not isinstance(n, fx.Node) or _shape(n) is None:
        return None
    if n not in inside:
        return n, [], None
    key, args = _key(n), [a for a in n.args if isinstance(a, fx.Node)]
    if key in _PASS or key in _VIEWS:  # views keep row-major order: back at the input's shape, x is x
        return _residual(traced, n.args[0], inside)
    if key == _ADD and len(args) == 2 and n.kwargs.get("alpha", 1) == 1:
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
    while isinstance(x, fx.Node) and (_key(x) in _PASS or "pool" in _key(x)):
        x = x.args[0]
    return isinstance(x, fx.Node) and _key(x) == key and tuple(x.args[1:]) == tuple(extra)


def _params_read(traced: Traced, n: fx.Node) -> list[str]:
    """Parameters ``n`` reads, directly or through a view (``self.gamma.reshape(1, -1, 1, 1)``)."""
    out = []
    for a in n.all_input_nodes:
        while a.op == "call_function" and (_key(a) in _RESHAPES or _key(a) in _PASS or _key(a) == "aten.expand") \
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
            return tuple(params) if _key(n) in _ZEROED_BY_PARAMS else ()
        # ``reshape_as(y, template)`` reads only the template's shape
        ins = [n.args[0]] if _key(n).endswith("_as") else [a for a in n.all_input_nodes if _shape(a) is not None]
        if len(ins) != 1 or not _zero_preserving(n):
            return ()
        n = ins[0]
    return ()


def _zero_preserving(n: fx.Node) -> bool:
    """A one-input op that maps 0 to 0 (so zeroing what feeds it zeroes its output)."""
    key = _key(n)
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
