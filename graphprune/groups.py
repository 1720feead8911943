"""Stage 3, groups: resolve reshape factors, then split the coupling graph into prunable groups.

Channel ids and labels come from ``channels`` (connected components over the couplings, with
slots joined by identity couplings sharing ids); labels that carry the same members, with the
same number of positions each, form one ``Group`` whose units are removed together. The work is
sorts and array operations over all labels at once, plus one step per group.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from typing import Any, Iterator

import numpy as np
from torch import nn

from .attrs import owner_key, one_width_per_attr
from .channels import Channels, Space, channels, keyed_spaces, label_classes, label_reasons
from .coupling import HEAD_COUNT_ATTRS, Coupling, build_coupling
from .factors import resolve_factors
from .schema import write_text
from .trace import Traced, aliases_of, trace

GROUP_CHANNEL = "group-channel"  # the unit of a grouped conv pruned inside its groups: one position in each


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
    kind: str = "mlp"  # what prune= calls it: "heads", "hidden" (normalised by a layer/RMS norm) or "mlp"

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
            "id": self.id, "width": self.width, "unit": self.unit, "kind": self.kind, "frozen": self.frozen,
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
                           "unsupported": self.coupling.unsupported,
                           "rule_errors": self.coupling.rule_errors}, indent=1)
        return _written(text, path)


def _written(text: str, path: str | None) -> str:
    if path is not None:
        write_text(path, text, "the groups")
    return text


def find_groups(model: Any, example_inputs: Any = None, strict: bool = False, read_source: bool = True) -> Groups:
    """Trace ``model`` and return its groups of coupled channels. ``strict``: an op without a rule,
    or a rule that fails, raises instead of freezing what it touches; ``read_source=False``: the
    rules decide from the graph alone, never reading the model's code (see ``graphprune.source``).

    >>> import timm
    >>> groups = find_groups(timm.create_model("resnet18"))
    >>> sum(g.prunable for g in groups) > 5
    True
    """
    traced = model if isinstance(model, Traced) else trace(model, example_inputs)
    return groups_from_coupling(build_coupling(traced, strict=strict, read_source=read_source))


def groups_from_coupling(c: Coupling) -> Groups:
    resolve_factors(c)
    ch = channels(c)
    return Groups(tuple(_unrun_ties(_pin(one_width_per_attr(_make_groups(c, ch), c, ch), c), c)), c)


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


def _unrun_ties(groups: list[Group], c: Coupling) -> list[Group]:
    """Freeze groups slicing a tensor that is tied to a module the traced forward never runs (an
    ``embed()`` path) when that module holds other tensors: the graph says nothing of them, so they
    would keep the old width next to the sliced tie."""
    model = c.traced.model
    ran = {c.traced.module_path(n) for n in c.traced.graph.nodes}
    names = aliases_of(model)
    stale: dict[str, str] = {}
    for fqn_list in (n for n in names.values() if len(n) > 1):
        for alias in fqn_list:
            owner = alias.rpartition(".")[0]
            if owner and owner not in ran and _holds_more(model.get_submodule(owner), names, fqn_list):
                stale.update({f: f"tied to {alias}, whose module {owner} the traced forward never runs (its "
                                 f"other tensors would keep their width)" for f in fqn_list})
    return [replace(g, frozen=next((stale[m.fqn] for m in g.members if m.fqn in stale), None))
            if g.frozen is None and any(m.fqn in stale for m in g.members) else g for g in groups]


def _holds_more(mod: nn.Module, names: dict[int, list[str]], tied: list[str]) -> bool:
    own = [t for t in [*mod.parameters(recurse=False), *mod.buffers(recurse=False)] if t is not None]
    return any(names.get(id(t)) != tied for t in own)


# -- groups ---------------------------------------------------------------------------------------

Key = tuple  # (fqn, dim, roles) of a tensor dim, or (fqn, attr, None) of a bound attribute


def _make_groups(c: Coupling, ch: Channels) -> list[Group]:
    """Channels whose labels carry the same members (keys, and positions per key) form one group."""
    why = {k: label_reasons(c.graph, ch, k) for k in ("frozen", "inexact", "unit", "align", "kind")}
    spaces = keyed_spaces(c, ch)
    names = {k: [str(key) for _, key in sp.keys] for k, sp in spaces.items()}
    buckets: dict[tuple, list[tuple[tuple, np.ndarray]]] = {}
    for seq, frozen, labs in label_classes(spaces, why["frozen"][0] >= 0):
        sig = tuple(sorted((name, cnt) for k, cnt in seq for name in names[k]))
        buckets.setdefault((sig, frozen), []).append((seq, labs))
    groups = [grp for bucket in buckets.values() if (grp := _group(bucket, spaces, why)) is not None]
    groups.sort(key=lambda gr: (gr.members[0].fqn, gr.members[0].dim, int(gr.members[0].indices.min())))
    return [replace(gr, id=i) for i, gr in enumerate(groups)]


def _add_member(members: dict[tuple[str, int], Member], new: Member) -> None:
    """One member per tensor dim: a module registered under several names (coat's ``mlp2 = mlp3``)
    is lifted once per name, and counting it once per name would overstate what pruning removes."""
    key = (new.fqn, new.dim)
    m = members.get(key)
    members[key] = new if m is None else Member(m.fqn, m.dim, m.indices, tuple(sorted(set(m.roles) | set(new.roles))))


def _positions(bucket: list[tuple[tuple, np.ndarray]], spaces: dict[int, Space]) -> tuple[dict, np.ndarray]:
    """Per key, each label's positions (one row per label of the bucket). A key is read where its
    first slot holding the label is; keys read from the same spaces share one read-only array."""
    routes: dict[Key, list[int]] = {}
    for seq, _ in bucket:
        source: dict[Key, tuple[int, int]] = {}
        for k, _ in seq:
            for i, key in spaces[k].keys:
                if key not in source or i < source[key][0]:
                    source[key] = (i, k)
        for key, (_, k) in source.items():
            routes.setdefault(key, []).append(k)
    stacked: dict[tuple[int, ...], np.ndarray] = {}
    for route in {tuple(r) for r in routes.values()}:
        stacked[route] = np.concatenate([spaces[k].rows(labs, dict(seq)[k]) for k, (seq, labs) in zip(route, bucket)])
    return {key: stacked[tuple(r)] for key, r in routes.items()}, np.concatenate([labs for _, labs in bucket])


def _group(bucket: list[tuple[tuple, np.ndarray]], spaces: dict[int, Space], why: dict) -> Group | None:
    keys = [key for k, _ in bucket[0][0] for _, key in spaces[k].keys]
    params = [(i, key) for k, _ in bucket[0][0] for i, key in spaces[k].keys if key[2] is not None]
    if not params:
        return None
    rows, labs = _positions(bucket, spaces)
    order = np.argsort(rows[min(params)[1]][:, 0], kind="stable")  # labels by their first position
    shared = {id(r): _frozen_array(r[order]) for r in rows.values()}
    rows = {key: shared[id(r)] for key, r in rows.items()}
    members: dict[tuple[str, int], Member] = {}
    attrs: list[AttrMember] = []
    # parameters producing the channels first, then consumers, then buffers: the table reads naturally
    for key in sorted(keys, key=lambda k: (k[2] is None, "out" not in (k[2] or ()), k[2] == (), str(k))):
        if key[2] is None:
            # an attribute bound at both the split and the merge of one head dim counts once
            if all((a.fqn, a.attr) != key[:2] for a in attrs):
                attrs.append(AttrMember(key[0], key[1], rows[key]))
        else:
            _add_member(members, Member(key[0], key[1], rows[key], key[2]))
    first = int(labs[order[0]])
    reason = lambda kind: why[kind][1][why[kind][0][first]] if why[kind][0][first] >= 0 else None
    names = {a.attr.rsplit(".", 1)[-1].split("[")[0] for a in attrs}
    tag = reason("unit")
    unit = ("head" if names & set(HEAD_COUNT_ATTRS) or tag == "head"
            else "group" if names & {"groups", "num_groups"} else tag if tag == GROUP_CHANNEL else "channel")
    kind = "heads" if unit == "head" else reason("kind") or "mlp"
    return Group(id=-1, width=len(labs), unit=unit, members=tuple(members.values()), attrs=tuple(attrs),
                 frozen=reason("frozen"), inexact=reason("inexact"), align=reason("align")[0] if reason("align") else 1,
                 kind=kind)


def _frozen_array(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False  # shared by every member read from one space
    return a
