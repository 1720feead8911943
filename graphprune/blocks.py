"""Stage 3c, blocks: the residual blocks the traced graph proves removable (depth pruning).

A block is an entry of a ``ModuleList`` or ``nn.Sequential`` whose forward returns its input plus
what its branches add: ``y = x + f(x) + g(x + f(x))``. Zero every branch and ``y == x``, so the
block can go. The proof walks back from the block's one output through additions and ops that
pass a tensor through unchanged (dtype casts to the same dtype, dropout in eval, clones) until it
reaches the block's input. A ReLU after the addition is allowed when the input itself left a ReLU
(``relu(relu(v)) == relu(v)``); a norm after it (BERT's post-norm) makes the block *inexact*: it
can be removed, but the rest of the model then sees other values. Anything else: not removable,
with the reason. No architecture is named; the graph decides (the walk itself: ``residual``).
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Iterator, Mapping

from torch import fx, nn

from .residual import ADD, op_key, prove_residual
from .trace import Traced, trace


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

    >>> import torch
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
        if not any(op_key(n) == ADD for n in inside):
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
    found = prove_residual(traced, fqn, inside)
    return found if isinstance(found, str) else Block(fqn, stack, index, *found)
