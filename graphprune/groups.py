"""Stage 3, groups: resolve reshape factors, then split the coupling graph into prunable groups.

Slot components come from the networkx graph; inside them a vectorised union-find over single
channels separates independent channels (e.g. the inputs of a cat). Channels whose member
parameters coincide form one ``Group`` whose units are removed together.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

import networkx as nx
import numpy as np

from .coupling import HEAD_COUNT_ATTRS, Coupling, Slot, build_coupling, owner_key
from .trace import Traced, trace


@dataclass(frozen=True, eq=False)
class Member:
    """One tensor dim in a group: ``indices[u]`` are the positions unit ``u`` occupies along ``dim``."""

    fqn: str
    dim: int
    indices: np.ndarray
    roles: tuple[str, ...] = ()


@dataclass(frozen=True, eq=False)
class AttrMember:
    """A module attribute that counts positions of a coupled slot (``groups``, ``num_heads``, ...)."""

    fqn: str
    attr: str
    indices: np.ndarray


@dataclass(frozen=True, eq=False)
class Group:
    """Channels (or heads, or conv groups) that must be removed together, with every member."""

    id: int
    width: int
    unit: str
    members: tuple[Member, ...]
    attrs: tuple[AttrMember, ...] = ()
    frozen: str | None = None
    inexact: str | None = None
    align: int = 1  # kept units must be a multiple of it (kernel alignment)

    @property
    def prunable(self) -> bool:
        return self.frozen is None and self.width > 1

    @property
    def module(self) -> str:
        outs = [m for m in self.members if "out" in m.roles] or list(self.members)
        return outs[0].fqn.rsplit(".", 1)[0] if "." in outs[0].fqn else ""

    @property
    def structure(self) -> str:
        per = self.members[0].indices.shape[1] if self.members else 1
        return f"{self.width} {self.unit}s" + (f" x{per}" if self.unit != "channel" and per > 1 else "")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "width": self.width, "unit": self.unit, "frozen": self.frozen,
            "inexact": self.inexact,
            "members": [{"fqn": m.fqn, "dim": m.dim, "roles": list(m.roles), "indices": m.indices.tolist()}
                        for m in self.members],
            "attrs": [{"fqn": a.fqn, "attr": a.attr, "indices": a.indices.tolist()} for a in self.attrs],
        }


@dataclass(frozen=True, eq=False)
class Groups:
    """All groups of a model plus the coupling graph they came from; prints as a table."""

    groups: tuple[Group, ...]
    coupling: Coupling = field(repr=False)

    def __iter__(self) -> Iterator[Group]:
        return iter(self.groups)

    def __len__(self) -> int:
        return len(self.groups)

    def __getitem__(self, i: int) -> Group:
        return self.groups[i]

    @property
    def traced(self) -> Traced:
        return self.coupling.traced

    @property
    def prunable(self) -> list[Group]:
        return [g for g in self.groups if g.prunable]

    def __str__(self) -> str:
        from .report import groups_table
        return groups_table(self)

    def to_html(self, path: str | None = None) -> str:
        """One self-contained HTML page listing and drawing every group (see ``graphprune.dump``)."""
        from .dump import to_html
        return _written(to_html(self), path)

    def to_dot(self, path: str | None = None) -> str:
        """The groups as a graphviz DOT graph (``dot -Tsvg groups.dot``), see ``graphprune.dump``."""
        from .dump import to_dot
        return _written(to_dot(self), path)

    def to_json(self, path: str | None = None) -> str:
        """Every group with each member as parameter FQN, dim and per-unit index mapping."""
        text = json.dumps({"groups": [g.to_dict() for g in self.groups],
                           "unsupported": self.coupling.unsupported}, indent=1)
        if path is not None:
            with open(path, "w") as fh:
                fh.write(text)
        return text


def _written(text: str, path: str | None) -> str:
    if path is not None:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
    return text


def find_groups(model: Any, example_inputs: Any = None, strict: bool = False) -> Groups:
    """Trace ``model`` and return its groups of coupled channels.

    >>> import timm
    >>> groups = find_groups(timm.create_model("resnet18"))
    >>> sum(g.prunable for g in groups) > 5
    True
    """
    traced = model if isinstance(model, Traced) else trace(model, example_inputs)
    return groups_from_coupling(build_coupling(traced, strict=strict))


def groups_from_coupling(c: Coupling) -> Groups:
    _resolve_factors(c)
    slots, base = _relevant_slots(c)
    labels = _channel_labels(c, slots, base)
    return Groups(tuple(_pin(_make_groups(c, slots, base, labels), c)), c)


def _pin(groups: list[Group], c: Coupling) -> list[Group]:
    """Freeze groups that would change an attribute the code also reads where it cannot change
    (the attribute itself: another layer binding the same shared config field is frozen too)."""
    if not c.pinned:
        return groups
    model = c.traced.model
    pinned = {owner_key(model, fqn, attr): why for (fqn, attr), why in c.pinned.items()}
    out = []
    for g in groups:
        why = next((pinned[k] for a in g.attrs if (k := owner_key(model, a.fqn, a.attr)) in pinned), None)
        out.append(replace(g, frozen=why) if why and g.frozen is None else g)
    return out


# -- factor resolution ---------------------------------------------------------------------------

def _resolve_factors(c: Coupling) -> None:
    """Couple each reshape to one of its parts: the first part (row-major) not frozen elsewhere.
    The other parts are frozen, because one flat index cannot follow two independent prunings."""
    g = c.graph
    uf = nx.utils.UnionFind(g.nodes)
    for u, v, d in g.edges(data=True):
        if d["maps"]:
            uf.union(u, v)
    frozen = {uf[s] for s in g.nodes if g.nodes[s]["frozen"]}
    for f in c.factors:
        live = [p for p, n in zip(f.parts, f.sizes) if n > 1]
        pick = None if uf[f.whole] in frozen else next((p for p in live if uf[p] not in frozen), None)
        for p in live:
            if p != pick:
                g.nodes[p]["frozen"].append(f"only one factor of a reshape can be pruned: {f.why}")
                frozen.add(uf[p])
        if pick is None:
            g.nodes[f.whole]["frozen"].append(f"no prunable factor in reshape: {f.why}")
            frozen.add(uf[f.whole])
            continue
        stride = math.prod(f.sizes[f.parts.index(pick) + 1:])
        idx = np.arange(g.nodes[f.whole]["size"])
        g.edges[f.whole, pick]["maps"].append((f.whole, idx, (idx // stride) % g.nodes[pick]["size"]))
        was_frozen = uf[f.whole] in frozen or uf[pick] in frozen
        uf.union(f.whole, pick)
        if was_frozen:
            frozen.add(uf[pick])


# -- channel-level union-find -------------------------------------------------------------------

def _relevant_slots(c: Coupling) -> tuple[list[Slot], dict[Slot, int]]:
    """Slots of components that hold a parameter, buffer or bound attribute; spatial, batch and
    token dims never do, so the channel-level pass stays small."""
    g = c.graph
    active = nx.Graph((u, v) for u, v, d in g.edges(data=True) if d["maps"])
    active.add_nodes_from(g.nodes)
    bound = {b.slot for b in c.bindings}
    slots: list[Slot] = []
    for comp in nx.connected_components(active):
        if any(g.nodes[s]["fqn"] or s in bound for s in comp):
            slots.extend(comp)
    slots.sort(key=str)
    base, total = {}, 0
    for s in slots:
        base[s], total = total, total + g.nodes[s]["size"]
    return slots, base


def _channel_labels(c: Coupling, slots: list[Slot], base: dict[Slot, int]) -> np.ndarray:
    a_parts, b_parts = [], []
    for u, v, d in c.graph.subgraph(slots).edges(data=True):
        for first, ia, ib in d["maps"]:
            second = v if first == u else u
            a_parts.append(base[first] + ia)
            b_parts.append(base[second] + ib)
    n = sum(c.graph.nodes[s]["size"] for s in slots)
    if not a_parts:
        return np.arange(n)
    return connected_labels(n, np.concatenate(a_parts), np.concatenate(b_parts))


def connected_labels(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Label every id in ``range(n)`` with the smallest id of its component (hook and compress).

    >>> connected_labels(5, np.array([0, 3]), np.array([1, 4])).tolist()
    [0, 0, 2, 3, 3]
    """
    labels = np.arange(n)
    while True:
        la, lb = labels[a], labels[b]
        low = np.minimum(la, lb)
        if (la == lb).all():
            return labels
        np.minimum.at(labels, la, low)
        np.minimum.at(labels, lb, low)
        while True:
            jumped = labels[labels]
            if (jumped == labels).all():
                break
            labels = jumped


# -- groups ---------------------------------------------------------------------------------------

def _make_groups(c: Coupling, slots: list[Slot], base: dict[Slot, int], labels: np.ndarray) -> list[Group]:
    g = c.graph
    frozen_why = _label_reasons(g, slots, base, labels, "frozen")
    inexact_why = _label_reasons(g, slots, base, labels, "inexact")
    unit_of = _label_reasons(g, slots, base, labels, "unit")
    align_of = _label_reasons(g, slots, base, labels, "align")
    bound: dict[Slot, list] = {}
    for bnd in c.bindings:
        bound.setdefault(bnd.slot, []).append(bnd)
    entries: dict[int, list[tuple[Any, np.ndarray]]] = {}
    for s in slots:
        keys = ([(g.nodes[s]["fqn"], s[1], tuple(sorted(g.nodes[s]["roles"])))] if g.nodes[s]["fqn"] else [])
        keys += [(bnd.fqn, bnd.attr, None) for bnd in bound.get(s, [])]
        if not keys:
            continue
        lab = labels[base[s]: base[s] + g.nodes[s]["size"]]
        order = np.argsort(lab, kind="stable")
        uniq, starts = np.unique(lab[order], return_index=True)
        for l, chunk in zip(uniq, np.split(order, starts[1:])):
            for key in keys:
                entries.setdefault(int(l), []).append((key, chunk))
    buckets: dict[tuple, list[int]] = {}
    for l, ents in entries.items():
        sig = (tuple(sorted((str(k), len(ix)) for k, ix in ents)), l in frozen_why)
        buckets.setdefault(sig, []).append(l)
    groups = []
    for labs in buckets.values():
        grp = _group(entries, labs, frozen_why, inexact_why, unit_of, align_of)
        if grp is not None:
            groups.append(grp)
    groups.sort(key=lambda gr: (gr.members[0].fqn, gr.members[0].dim, int(gr.members[0].indices.min())))
    return [Group(**{**gr.__dict__, "id": i}) for i, gr in enumerate(groups)]


def _label_reasons(g: nx.Graph, slots: list[Slot], base: dict[Slot, int], labels: np.ndarray,
                   key: str) -> dict[int, str]:
    out: dict[int, str] = {}
    for s in slots:
        if g.nodes[s][key]:
            for l in np.unique(labels[base[s]: base[s] + g.nodes[s]["size"]]).tolist():
                out.setdefault(l, g.nodes[s][key][0])
    return out


def _add_member(members: dict[tuple[str, int], Member], new: Member) -> None:
    """One member per tensor dim: a module registered under several names (coat's ``mlp2 = mlp3``)
    is lifted once per name, and counting it once per name would overstate what pruning removes."""
    key = (new.fqn, new.dim)
    m = members.get(key)
    members[key] = new if m is None else Member(m.fqn, m.dim, m.indices, tuple(sorted(set(m.roles) | set(new.roles))))


def _group(entries, labs, frozen_why, inexact_why, unit_of, align_of) -> Group | None:
    first = entries[labs[0]]
    params = [(k, ix) for k, ix in first if k[2] is not None]
    if not params:
        return None
    labs = sorted(labs, key=lambda l: int(min(ix.min() for k, ix in entries[l] if k == params[0][0])))
    # one dict per label, first occurrence wins (as a scan would): scanning entries[l] once per key
    # was quadratic in the number of members, seconds on a ViT's residual stream
    by_key: dict[int, dict] = {l: {} for l in labs}
    for l in labs:
        for k, ix in entries[l]:
            by_key[l].setdefault(k, ix)
    members: dict[tuple[str, int], Member] = {}
    attrs: list[AttrMember] = []
    # parameters producing the channels first, then consumers, then buffers: the table reads naturally
    first = sorted(first, key=lambda e: (e[0][2] is None, "out" not in (e[0][2] or ()), e[0][2] == (), str(e[0])))
    for key, _ in first:
        stacked = np.stack([by_key[l][key] for l in labs])
        if key[2] is None:
            # an attribute bound at both the split and the merge of one head dim counts once
            if all((a.fqn, a.attr) != key[:2] for a in attrs):
                attrs.append(AttrMember(key[0], key[1], stacked))
        else:
            _add_member(members, Member(key[0], key[1], stacked, key[2]))
    names = {a.attr.rsplit(".", 1)[-1] for a in attrs}
    unit = ("head" if names & set(HEAD_COUNT_ATTRS) or unit_of.get(labs[0]) == "head"
            else "group" if names & {"groups", "num_groups"} else "channel")
    return Group(id=-1, width=len(labs), unit=unit, members=tuple(members.values()), attrs=tuple(attrs),
                 frozen=frozen_why.get(labs[0]), inexact=inexact_why.get(labs[0]),
                 align=align_of[labs[0]][0] if labs[0] in align_of else 1)
