"""Stage 3 helper, channels: give every channel of the coupled slots an id and label coupled ones.

Slots joined by identity couplings (one tensor dim seen by a chain of ops) share one *space* of
channel ids, so the number of ids grows with the distinct channel spaces, not with every
activation in the graph. The other couplings (offsets, blocks, reshape factors) become edges
between ids; their connected components (``scipy.sparse.csgraph``) label the channels that must
be removed together. Every step is an array operation or one pass over the graph's edges.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from .coupling import Coupling, Slot


@dataclass(frozen=True, eq=False)
class Channels:
    """Labelled channel ids of the slots that matter (those coupled to a tensor or an attribute).

    ``slots`` are sorted by name; slot ``i`` lives in space ``space[i]``, whose ids are
    ``base[k] .. base[k] + size[k] - 1``; ``labels[id]`` is the smallest id coupled to ``id``.
    """

    slots: tuple[Slot, ...]
    space: np.ndarray
    base: np.ndarray
    size: np.ndarray
    labels: np.ndarray

    def space_labels(self, k: int) -> np.ndarray:
        """Labels of the channels of space ``k``, by position."""
        return self.labels[self.base[k]: self.base[k] + self.size[k]]


def channels(c: Coupling) -> Channels:
    """Channel ids and labels of every slot in a component holding a tensor or a bound attribute;
    spatial, batch and token dims never do, so they are left out.

    >>> import torch
    >>> from graphprune.coupling import build_coupling
    >>> from graphprune.trace import trace
    >>> ch = channels(build_coupling(trace(torch.nn.Linear(3, 4), torch.zeros(2, 3))))
    >>> len(ch.labels), len(ch.slots)   # 4 output channels (weight rows, bias, output) + 3 inputs
    (7, 5)
    """
    g = c.graph
    nodes = sorted(g.nodes, key=str)
    index = {s: i for i, s in enumerate(nodes)}
    same, other = _edges(g, index)
    n = len(nodes)
    relevant = _relevant(c, nodes, same, other)
    _, space = _components(n, *same.T)  # identity couplings: one space of ids
    keep = np.flatnonzero(relevant)
    _, first, space = np.unique(space[keep], return_index=True, return_inverse=True)
    space = np.argsort(np.argsort(first))[space]  # spaces numbered in the order of their first slot
    size = np.zeros(len(first), dtype=np.int64)
    size[space] = [g.nodes[nodes[i]]["size"] for i in keep]
    base = np.concatenate([[0], np.cumsum(size)[:-1]]).astype(np.int64)
    space_of = np.full(n, -1)
    space_of[keep] = space
    labels = _labels(int(size.sum()), base, space_of, other)
    return Channels(tuple(nodes[i] for i in keep), space, base, size, labels)


def _edges(g: nx.Graph, index: dict[Slot, int]) -> tuple[np.ndarray, list]:
    """Identity couplings as slot pairs; the others as (slot, slot, ids, ids) in their direction."""
    same, other = [], []
    for u, v, d in g.edges(data=True):
        for first, ia, ib in d["maps"]:
            second = v if first == u else u
            if ia is None:
                same.append((index[u], index[v]))
            else:
                other.append((index[first], index[second], ia, ib))
    return np.array(same, dtype=np.int64).reshape(-1, 2), other


def _components(n: int, a: np.ndarray, b: np.ndarray) -> tuple[int, np.ndarray]:
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)


def _relevant(c: Coupling, nodes: list[Slot], same: np.ndarray, other: list) -> np.ndarray:
    """Slots whose component (over every coupling) holds a parameter, buffer or bound attribute."""
    g = c.graph
    pairs = np.array([(a, b) for a, b, _, _ in other], dtype=np.int64).reshape(-1, 2)
    both = np.concatenate([same, pairs])
    _, comp = _components(len(nodes), *both.T)
    bound = {b.slot for b in c.bindings}
    marks = [i for i, s in enumerate(nodes) if g.nodes[s]["fqn"] or s in bound]
    return np.isin(comp, comp[marks])


def _labels(n: int, base: np.ndarray, space_of: np.ndarray, other: list) -> np.ndarray:
    """The smallest id of each id's component over the non-identity couplings."""
    other = [m for m in other if space_of[m[0]] >= 0]  # couplings inside the relevant slots
    if not other:
        return np.arange(n)
    a = np.concatenate([base[space_of[i]] + ia for i, _, ia, _ in other])
    b = np.concatenate([base[space_of[j]] + ib for _, j, _, ib in other])
    _, comp = _components(n, a, b)
    _, first = np.unique(comp, return_index=True)  # first id of each component, in id order
    return first[comp]


# -- labels to groups -------------------------------------------------------------------------------

@dataclass(frozen=True, eq=False)
class Space:
    """A space's channels sorted by label (``order``), per label its first row and count, and the
    keys (tensor dims, bound attributes) of its slots as ``(slot index, key)``."""

    order: np.ndarray
    uniq: np.ndarray
    start: np.ndarray
    count: np.ndarray
    keys: tuple[tuple[int, tuple], ...]

    def rows(self, labels: np.ndarray, count: int) -> np.ndarray:
        """Positions of each of ``labels`` (each present ``count`` times), one row per label."""
        at = self.start[np.searchsorted(self.uniq, labels)]
        return self.order[at[:, None] + np.arange(count)]


def keyed_spaces(c: Coupling, ch: Channels) -> dict[int, Space]:
    """The spaces holding a parameter or buffer dim, or a slot a module attribute is bound to."""
    g = c.graph
    bound: dict[Slot, list[tuple]] = {}
    for b in c.bindings:
        bound.setdefault(b.slot, []).append((b.fqn, b.attr, None))
    keys: dict[int, list[tuple[int, tuple]]] = {}
    for i, s in enumerate(ch.slots):
        fqn = g.nodes[s]["fqn"]
        found = ([(fqn, s[1], tuple(sorted(g.nodes[s]["roles"])))] if fqn else []) + bound.get(s, [])
        keys.setdefault(int(ch.space[i]), []).extend((i, k) for k in found)
    out = {}
    for k, found in sorted(keys.items()):
        if found:
            lab = ch.space_labels(k)
            # labels are smallest ids, so a space whose channels are not tied to each other is sorted
            order = np.arange(len(lab)) if bool((lab[1:] >= lab[:-1]).all()) else np.argsort(lab, kind="stable")
            out[k] = Space(order, *_runs(lab[order]), tuple(found))
    return out


def _runs(values: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct values of a sorted array, where each run starts and its length (no sort needed)."""
    if not len(values):  # a zero-width dim (nn.Linear(16, 0)): no channels, no runs
        return values, np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    start = np.flatnonzero(np.concatenate([[True], values[1:] != values[:-1]]))
    return values[start], start, np.diff(np.append(start, len(values)))


def label_classes(spaces: dict[int, Space], flag: np.ndarray) -> list[tuple[tuple, bool, np.ndarray]]:
    """Labels that occur in the same spaces the same number of times each (and agree on ``flag``):
    ``[((space, count), ...), flag, labels]``, found with sorts over all labels at once.

    >>> sp = Space(np.arange(3), np.array([0, 1, 2]), np.arange(3), np.ones(3, int), ())
    >>> [(seq, labs.tolist()) for seq, _, labs in label_classes({0: sp}, np.array([0, 0, 1]))]
    [(((0, 1),), [0, 1]), (((0, 1),), [2])]
    """
    if not spaces:
        return []
    lab = np.concatenate([sp.uniq for sp in spaces.values()])
    sid = np.concatenate([np.full(len(sp.uniq), k) for k, sp in spaces.items()])
    cnt = np.concatenate([sp.count for sp in spaces.values()])
    order = np.lexsort((sid, lab))
    m = int(cnt.max()) + 1
    lab, code = lab[order], sid[order] * m + cnt[order]  # (space, count) as one number
    labels, start, length = _runs(lab)
    out = []
    for n in np.unique(length).tolist():  # one table per number of spaces a label occurs in
        sel = np.flatnonzero(length == n)
        table = np.concatenate([code[start[sel][:, None] + np.arange(n)], flag[labels[sel]][:, None]], axis=1)
        if n == 1:  # most labels: one number per row, a plain unique instead of a sort of rows
            uniq, inverse = np.unique(table[:, 0] * 2 + table[:, 1], return_inverse=True)
            rows = np.stack([uniq // 2, uniq % 2], axis=1)
        else:
            rows, inverse = np.unique(table, axis=0, return_inverse=True)
        by_row = np.argsort(inverse.ravel(), kind="stable")
        for row, members in zip(rows.tolist(), np.split(sel[by_row], np.cumsum(np.bincount(inverse.ravel()))[:-1])):
            out.append((tuple(divmod(c, m) for c in row[:n]), bool(row[-1]), labels[members]))
    return out


def label_reasons(g: nx.Graph, ch: Channels, key: str) -> tuple[np.ndarray, list]:
    """For one node attribute (``frozen``, ``inexact``, ``unit``, ``align``): per label, the index
    into the returned list of the first value of the first slot (in name order) carrying one."""
    which = np.full(len(ch.labels), -1)
    values: list = []
    seen: dict[int, np.ndarray] = {}
    for i, s in enumerate(ch.slots):
        found = g.nodes[s][key]
        if found:
            k = int(ch.space[i])
            labs = seen[k] if k in seen else seen.setdefault(k, np.unique(ch.space_labels(k)))
            new = labs[which[labs] < 0]
            which[new] = len(values)
            values.append(found[0])
    return which, values
