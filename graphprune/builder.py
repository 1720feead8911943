"""The ``Builder`` every coupling rule writes into (``link`` / ``factor`` / ``freeze`` / ``bind`` ...):
slot helpers over the traced graph, and the record of what each rule coupled, froze or bound.
The values it builds (slots, factors, bindings, ``Coupling``) live in ``slots.py``.
"""
from __future__ import annotations

import bisect
import inspect
import operator
import re
from typing import Any

import networkx as nx
import numpy as np
import torch
from torch import fx

from . import source
from .slots import SAME_DIMS, SPLITS, Binding, Coupling, Factor, Rule, Slot, aten
from .trace import Traced


class Builder:
    """What a rule sees: slot helpers plus ``link`` / ``factor`` / ``freeze`` / ``inexact``."""

    def __init__(self, traced: Traced):
        self.traced = traced
        self.g = nx.Graph()
        self.c = Coupling(traced, self.g)
        self.node: fx.Node | None = None
        self.rule_name = ""
        self._touched: set[Slot] = set()
        self._nodes = {n.name: n for n in traced.graph.nodes}
        self.bound: set[Slot] = set()  # slots whose size the code keeps up with (bindings, bsz * num_heads)
        self._inputs: dict[str, list[fx.Node]] = {}
        self._by_path: dict[str, list[fx.Node]] = {}
        self._shapes: dict[fx.Node, tuple[int, ...] | None] = {}
        self._data: set[fx.Node] | None = None

    # -- slots -------------------------------------------------------------
    def shape(self, node: Any) -> tuple[int, ...] | None:
        if not isinstance(node, fx.Node):
            return None
        if node not in self._shapes:  # a fake tensor's .shape is slow, and rules ask for it often
            val = node.meta.get("val")
            self._shapes[node] = tuple(int(s) for s in val.shape) if isinstance(val, torch.Tensor) else None
        return self._shapes[node]

    def slots(self, node: Any) -> list[Slot]:
        """All dim slots of a tensor-valued node (empty for non-tensors)."""
        shape = self.shape(node)
        if shape is None:
            return []
        out = [(node.name, d) for d in range(len(shape))]
        for s, size in zip(out, shape):
            self._add(s, size)
        return out

    def slot(self, node: fx.Node, dim: int) -> Slot:
        shape = self.shape(node)
        dim = dim % len(shape)
        self._add((node.name, dim), shape[dim])
        return (node.name, dim)

    def virtual(self, node: fx.Node, name: str, size: int) -> Slot:
        """A slot that is no tensor dim, e.g. the groups of a grouped conv."""
        s = (node.name, name)
        self._add(s, size)
        self._touched.add(s)
        return s

    def counted_by(self, node: fx.Node, size: int, attr: str) -> Slot:
        """A virtual slot of ``size`` units (conv groups, norm groups) that the module running
        ``node`` counts in ``attr``; frozen when no module attribute holds that count to update."""
        unit = self.virtual(node, attr, size)
        fqn, mod = self.module()
        if mod is not None and getattr(mod, attr, None) == size:
            self.bind(unit, fqn, attr)
        else:
            self.freeze(unit, f"{size} groups but no module attribute .{attr} to update")
        return unit

    def size(self, s: Slot) -> int:
        return self.g.nodes[s]["size"]

    def _add(self, s: Slot, size: int) -> None:
        if s not in self.g:
            self.g.add_node(s, size=size, frozen=[], inexact=[], unit=[], align=[], kind=[], roles=set(),
                            fqn=self.traced.tensor_fqn.get(s[0]))

    # -- couplings ---------------------------------------------------------
    def link(self, a: Slot, b: Slot, a_idx: np.ndarray, b_idx: np.ndarray, why: str = "") -> None:
        """Channel ``a_idx[i]`` of ``a`` must be removed together with channel ``b_idx[i]`` of ``b``."""
        a_idx, b_idx = np.asarray(a_idx, dtype=np.int64), np.asarray(b_idx, dtype=np.int64)
        same = self.size(a) == self.size(b) == len(a_idx) == len(b_idx) and _is_range(a_idx) and _is_range(b_idx)
        self._map(a, b, None if same else (a_idx, b_idx), why)

    def _map(self, a: Slot, b: Slot, idx: tuple[np.ndarray, np.ndarray] | None, why: str) -> None:
        """Record one coupling on the edge a-b: ``(a, a_idx, b_idx)``, or ``(a, None, None)`` for the
        identity, which the groups stage merges without a per-channel array (most couplings are)."""
        self._touched.update((a, b))
        why = why or f"{self.rule_name} at {self.where()}"
        maps = self.g.edges[a, b]["maps"] if self.g.has_edge(a, b) else []
        maps.append((a, None, None) if idx is None else (a, *idx))
        self.g.add_edge(a, b, maps=maps, why=why)

    def link_same(self, a: Slot, b: Slot, why: str = "") -> None:
        """Identity coupling between two slots of equal size (freezes both if sizes differ)."""
        if self.size(a) != self.size(b):
            self.freeze(a, f"size mismatch with {b}")
            self.freeze(b, f"size mismatch with {a}")
            return
        self._map(a, b, None, why)

    def link_offset(self, part: Slot, whole: Slot, offset: int, why: str = "") -> None:
        """``part[i]`` is ``whole[offset + i]`` (cat inputs, split outputs)."""
        idx = np.arange(self.size(part))
        self.link(part, whole, idx, idx + offset, why)

    def link_blocks(self, fine: Slot, coarse: Slot, why: str = "") -> None:
        """``fine[i]`` belongs to unit ``coarse[i // block]`` (depthwise multiplier, GQA, groups)."""
        nf, nc = self.size(fine), self.size(coarse)
        if nf % nc:
            self.freeze(fine, f"{nf} is not a multiple of {nc}")
            self.freeze(coarse, f"{nf} is not a multiple of {nc}")
            return
        idx = np.arange(nf)
        self.link(fine, coarse, idx, idx // (nf // nc), why)

    def factor(self, whole: Slot, parts: list[Slot], why: str = "") -> None:
        """``whole`` is the row-major flattening of ``parts`` (reshape split or merge)."""
        self._touched.update([whole, *parts])
        sizes = tuple(self.size(p) for p in parts)
        self.c.factors.append(Factor(whole, tuple(parts), sizes, why or f"{self.rule_name} at {self.where()}"))
        for p in parts:
            self.g.add_edge(whole, p, maps=[], why=f"factor of {why or self.where()}")

    def choice(self, factors: list[tuple[Slot, list[Slot]]], options: list[tuple[int, ...]], why: str = "") -> None:
        """Factors resolved together: option k couples each whole to its part ``options[k][i]``;
        the option under which most of them stay prunable wins, ties in the order given (``factors.py``)."""
        ident = len(self.c.factors)
        for i, (whole, parts) in enumerate(factors):
            self.factor(whole, parts, why)
            self.c.factors[-1].choice = ident
            self.c.factors[-1].picks = tuple(opt[i] for opt in options)

    def freeze(self, s: Slot, why: str) -> None:
        self._touched.add(s)
        self.g.nodes[s]["frozen"].append(f"{why} ({self.where()})" if self.node is not None else why)

    def inexact(self, s: Slot, why: str) -> None:
        """Pruning this slot is allowed but changes the op's statistics (norms, softmax, mean)."""
        self._touched.add(s)
        self.g.nodes[s]["inexact"].append(f"{why} ({self.where()})")

    def touch(self, s: Slot) -> None:
        """Mark a slot as handled without coupling it (e.g. size-1 dims, which nothing prunes)."""
        self._touched.add(s)

    def role(self, s: Slot, role: str) -> None:
        """Tag a parameter slot as consuming ('in') or producing ('out') the coupled channels; a
        slot of a view of a parameter (``w.t()``, a split of a fused weight) tags the parameter's."""
        node = self._nodes.get(s[0])
        found = self.param_slot(node, s[1]) if node is not None and isinstance(s[1], int) else None
        self.g.nodes[found or s]["roles"].add(role)

    def param_slot(self, node: fx.Node, dim: int) -> Slot | None:
        """The parameter slot behind dim ``dim`` of ``node``, through transposes, slices and the
        pieces of a split (Falcon's ``x @ self.weight.T``; torch's attention splitting its fused
        ``in_proj_weight``), so the oracle knows which parameter dims consume."""
        for _ in range(8):
            if node.op == "placeholder":
                return (node.name, dim) if self.g.nodes.get((node.name, dim), {}).get("fqn") else None
            key = getattr(node.target, "overloadpacket", None)
            if key in (aten.transpose, aten.t, aten.numpy_T, aten.swapaxes, aten.swapdims):
                ndim = len(self.shape(node))
                if len(node.args) < 3 and ndim != 2:
                    return None  # numpy_T of more than 2 dims reverses them all
                d0, d1 = (a % ndim for a in node.args[1:3]) if len(node.args) > 2 else (0, 1)
                dim = {d0: d1, d1: d0}.get(dim, dim)
            elif node.target is operator.getitem and getattr(node.args[0].target, "overloadpacket", None) in SPLITS:
                node = node.args[0]
            elif key not in SAME_DIMS:
                return None
            node = node.args[0]
        return None

    def align(self, s: Slot, multiple: int, why: str) -> None:
        """Kept widths of this slot must stay multiples of ``multiple`` (a kernel's alignment)."""
        self.g.nodes[s]["align"].append((multiple, f"{why} ({self.where()})"))

    def kind(self, s: Slot, name: str) -> None:
        """What part the channels of this slot play, for ``prune=``: "hidden" where a layer or RMS
        norm normalises over them (a transformer's residual stream). Unmarked groups are "mlp",
        groups of heads "heads"."""
        self._touched.add(s)
        self.g.nodes[s]["kind"].append(name)

    def unit(self, s: Slot, name: str) -> None:
        """Name what one index of this slot is (e.g. 'head'), for tables and reports."""
        self.g.nodes[s]["unit"].append(name)

    def bind(self, s: Slot, fqn: str, attr: str, scale: int = 1) -> None:
        why = _unwritable(self.traced.model, fqn, attr)
        if why:  # surgery could not write the pruned count: the slot keeps its size
            self.freeze(s, why)
            return
        self.c.bindings.append(Binding(s, fqn, attr, scale))
        self.bound.add(s)

    def pin(self, fqn: str, attr: str, why: str) -> None:
        """The attribute is also read where its width is fixed: groups binding it are frozen."""
        self.c.pinned.setdefault((fqn, attr), f"{fqn}.{attr} is also read where {why} ({self.where()})")

    # -- helpers for rules -------------------------------------------------
    def from_data(self, node: Any) -> bool:
        """Whether ``node`` depends on the model's inputs, rather than on parameters, buffers and
        constants alone: a product with a weight-like operand is a linear map of the activation,
        a product of two activations is not."""
        if self._data is None:
            self._data = set()
            for n in self.traced.graph.nodes:  # topological order: inputs come first
                if (n.op == "placeholder" and n.name not in self.traced.tensor_fqn) or \
                        any(a in self._data for a in n.all_input_nodes):
                    self._data.add(n)
        return node in self._data

    def where(self) -> str:
        return self.traced.where(self.node) if self.node is not None else "<graph>"

    def module(self, node: fx.Node | None = None) -> tuple[str, Any]:
        path = self.traced.module_path(node or self.node)
        try:
            return path, self.traced.model.get_submodule(path)
        except AttributeError:
            return path, None

    def code_module(self, node: fx.Node | None = None) -> tuple[str, Any]:
        """The module that is ``self`` in the code that made the node: the module running it, or
        the submodule whose method its forward called (``self.rel_pos.get_bias()``), so attributes
        the code reads resolve, and bind, where they live. None as the module when the calls lead
        to an object that is no submodule: nothing is read there."""
        fqn, mod = self.module(node)
        rel = source.self_path(node or self.node) if mod is not None else ""
        if not rel:  # unreadable calls (None) read the running module, as they always did
            return fqn, mod
        path = f"{fqn}.{rel}" if fqn else rel
        try:
            sub = self.traced.model.get_submodule(path)
        except AttributeError:
            return path, None
        return (path, sub) if isinstance(sub, torch.nn.Module) else (path, None)

    def code_attrs(self, size: int, expr: Any = None) -> list[str]:
        """Attributes of the node's module that equal ``size`` and that the source statement making
        the node reads (``x.split(self.split_size)``; ``expr``: one size argument of it, as parsed
        by ``source.size_exprs``): an int attribute named there, or a path read from ``self``
        (``self.attn.num_heads``, ``self.heads[i]``). Bound to a slot, they make the code compute
        the pruned size; the name is required because a value alone is no proof (a module may hold
        several attributes of that value, none of them read here)."""
        _, mod = self.code_module()
        if mod is None or size < 2 or not source.enabled():
            return []
        text = source.statement_source(self.node) if expr is None else None
        names = source.evidence_names(self.node, expr) if expr is not None else set(source.NAME.findall(text))
        found = {k for k, v in vars(mod).items() if type(v) is int and v == size and k in names}
        if expr is not None or re.search(r"self\.\w+\s*[.\[]", text):  # self.sub.x, self.xs[i]
            found.update(source.int_attrs_named(mod, expr if expr is not None else text, size))
        return sorted(found)

    def bind_code_attrs(self, s: Slot, expr: Any = None) -> list[str]:
        """Bind every attribute ``code_attrs`` finds for the slot's size; returns their names."""
        attrs = self.code_attrs(self.size(s), expr)
        for attr in attrs:
            self.bind(s, self.code_module()[0], attr)
        return attrs

    def broadcast(self, src: list[Slot], dst: list[Slot]) -> None:
        """Right-aligned broadcasting of ``src`` into ``dst``: dims of equal size couple, size-1 dims
        are free (nothing to prune there), others are left to the automatic freeze."""
        shift = len(dst) - len(src)
        for i, s in enumerate(src):
            if i + shift < 0:
                continue
            if self.size(s) == self.size(dst[i + shift]):
                self.link_same(s, dst[i + shift])
            elif self.size(s) == 1:
                self.touch(s)

    def module_inputs(self, node: fx.Node) -> list[fx.Node]:
        """Activations the node's module reads from outside it (its forward's tensor arguments)."""
        fqn = self.traced.module_path(node)
        if not self._by_path:  # one pass over the graph; each module then reads only its own paths
            for n in self.traced.graph.nodes:
                self._by_path.setdefault(self.traced.module_path(n), []).append(n)
            self._paths = sorted(self._by_path)
        if fqn not in self._inputs:
            inside = [n for path in self._paths_within(fqn) for n in self._by_path[path]]
            outside = {a for n in inside for a in n.all_input_nodes
                       if not _within(self.traced.module_path(a), fqn) and self.shape(a) is not None
                       and not any(self.g.nodes[s]["fqn"] for s in self.slots(a))}
            self._inputs[fqn] = sorted(outside, key=lambda n: n.name)
        return self._inputs[fqn]

    def _paths_within(self, fqn: str) -> list[str]:
        """Module paths at or under ``fqn``: a contiguous run of the sorted paths ('.' sorts just
        before '/'), found by bisection instead of a scan per module (quadratic in depth)."""
        if not fqn:
            return self._paths
        lo, hi = bisect.bisect_left(self._paths, fqn + "."), bisect.bisect_left(self._paths, fqn + "/")
        return ([fqn] if fqn in self._by_path else []) + self._paths[lo:hi]

    def run(self, node: fx.Node, rule: Rule, name: str) -> None:
        self.node, self.rule_name, self._touched = node, name, set()
        rule(self, node)
        for s in self._owned(node):
            if s not in self._touched:
                self.freeze(s, f"dim {s[1]} not handled by rule {name}")

    def _owned(self, node: fx.Node) -> list[Slot]:
        ins = [a for a in node.all_input_nodes if self.shape(a) is not None]
        return [s for n in [*ins, node] for s in self.slots(n)]


def _is_range(idx: np.ndarray) -> bool:
    """Whether ``idx`` is ``arange(len(idx))``."""
    return len(idx) == 0 or (idx[0] == 0 and bool((np.diff(idx) == 1).all()))


def _within(path: str, fqn: str) -> bool:
    return path == fqn or path.startswith(fqn + ".") if fqn else True


def _unwritable(model: torch.nn.Module, fqn: str, attr: str) -> str | None:
    """Why surgery could not write ``attr`` of the module at ``fqn`` (a read-only property, the
    class's ``@property def heads``); None when it can, or when the attribute is a path or item
    (``self.attn.heads``, ``heads[0]``), which the plan's checks judge."""
    if "." in attr or "[" in attr:
        return None
    try:
        found = inspect.getattr_static(type(model.get_submodule(fqn)), attr, None)
    except AttributeError:
        return None
    if isinstance(found, property) and found.fset is None:
        return f"{fqn or '<root>'}.{attr} is a read-only property: pruning could not update it"
    return None
