"""The coupling stage's values: slots (a tensor dim, or a virtual sub-dimension such as heads),
factors, bindings and the ``Coupling`` result, plus the op sets rules share.

A slot is ``(node_name, dim)`` (or a virtual name for a sub-dimension such as heads); parameters
and buffers are placeholder nodes, so their dims are slots too. ``builder.Builder`` writes them;
``coupling.build_coupling`` runs the rules.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Hashable

import networkx as nx
import torch
from torch import fx

from .trace import Traced

if TYPE_CHECKING:
    from .builder import Builder

Slot = tuple[str, Hashable]

# Module attributes that count attention heads (rules bind them; groups name such units "head").
HEAD_COUNT_ATTRS = ("num_heads", "num_attention_heads", "n_heads", "n_head", "heads", "num_key_value_heads",
                    "num_kv_heads", "n_kv_heads")
Rule = Callable[["Builder", fx.Node], None]
aten = torch.ops.aten
SPLITS = (aten.split, aten.split_with_sizes, aten.chunk, aten.unsafe_split)
SAME_DIMS = (aten.slice, aten.alias, aten.detach, aten._to_copy, aten.contiguous, aten.clone, aten.to)  # dim i is dim i


@dataclass
class Factor:
    """``whole`` (size prod(sizes)) is the row-major flattening of ``parts``; resolved later. Factors
    sharing a ``choice`` id are resolved together: option k picks part ``picks[k]`` of each (a
    grouped conv's channels are (groups, per-group) on both sides, and both sides pick alike)."""

    whole: Slot
    parts: tuple[Slot, ...]
    sizes: tuple[int, ...]
    why: str
    choice: int = -1
    picks: tuple[int, ...] = ()


@dataclass
class Binding:
    """After pruning, ``setattr(module fqn, attr, kept width of slot)`` keeps the module consistent."""

    slot: Slot
    fqn: str
    attr: str
    scale: int = 1


@dataclass
class Coupling:
    """The result of the coupling stage: slot graph, factors, bindings and the traced model."""

    traced: Traced
    graph: nx.Graph
    factors: list[Factor] = field(default_factory=list)
    bindings: list[Binding] = field(default_factory=list)
    unsupported: list[str] = field(default_factory=list)
    rule_errors: list[str] = field(default_factory=list)  # rules that raised: their nodes are frozen
    pinned: dict[tuple[str, str], str] = field(default_factory=dict)  # (fqn, attr) -> why it must stay

    def explain(self, a: Slot, b: Slot) -> list[str]:
        """Why two slots are coupled: the chain of edge reasons from ``a`` to ``b``."""
        path = nx.shortest_path(self.graph, a, b)
        return [self.graph.edges[u, v]["why"] for u, v in zip(path, path[1:])]
