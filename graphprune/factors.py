"""Stage 3a, factors: couple every reshape's merged dim to one of its parts, before grouping.

A reshape (or a grouped conv, whose channels are (groups, per-group)) records its dims as
*factors*; pruning can follow one part of each, the first (row-major) nothing froze. Factors of
one choice resolve together, and equal factorisations of one dim share their parts.
"""
from __future__ import annotations

import math

import networkx as nx
import numpy as np

from .coupling import Coupling, Factor, Slot


def resolve_factors(c: Coupling) -> None:
    """Couple each reshape to one of its parts: the first part (row-major) not frozen elsewhere.
    The other parts are frozen, because one flat index cannot follow two independent prunings.
    Factors of one choice (a grouped conv's two sides) pick alike; equal factorisations of one
    dim (a grouped conv's output, then a view of it into (radix, channels)) share their parts."""
    g = c.graph
    uf = nx.utils.UnionFind(g.nodes)
    for u, v, d in g.edges(data=True):
        if d["maps"]:
            uf.union(u, v)
    _share_equal_factorisations(c, uf)
    frozen: dict = {}  # component root -> why it stays
    for s in g.nodes:
        if g.nodes[s]["frozen"]:
            frozen.setdefault(uf[s], g.nodes[s]["frozen"][0])
    choices: dict[int, list[Factor]] = {}
    for f in c.factors:
        choices.setdefault(f.choice, []).append(f)
    for f in c.factors:
        if f.choice < 0:
            _resolve(g, uf, frozen, f, [p for p, n in zip(f.parts, f.sizes) if n > 1])
        elif choices[f.choice][0] is f:
            _resolve_choice(g, uf, frozen, choices[f.choice])


def _resolve_choice(g: nx.Graph, uf, frozen: dict, factors: list[Factor]) -> None:
    """The option under which most factors pick a live part nothing froze (the first such option:
    options come in order of preference)."""
    def usable(f: Factor, k: int) -> bool:
        part = f.parts[f.picks[k]]
        return g.nodes[part]["size"] > 1 and uf[part] not in frozen and uf[f.whole] not in frozen
    counts = [sum(usable(f, k) for f in factors) for k in range(len(factors[0].picks))]
    k = counts.index(max(counts))
    for f in factors:
        _resolve(g, uf, frozen, f, [f.parts[f.picks[k]]])


def _resolve(g: nx.Graph, uf, frozen: dict, f: Factor, order: list) -> None:
    """Couple ``f.whole`` to the first part of ``order`` nothing froze; freeze its other live parts."""
    live = [p for p, n in zip(f.parts, f.sizes) if n > 1]
    pick = None if uf[f.whole] in frozen else next((p for p in order if p in live and uf[p] not in frozen), None)
    because = next((frozen[uf[p]] for p in order if p in live and uf[p] in frozen), None)
    for p in live:
        if p != pick:
            g.nodes[p]["frozen"].append(f"only one factor of a reshape can be pruned: {f.why}")
            frozen.setdefault(uf[p], g.nodes[p]["frozen"][-1])
    if pick is None:
        why = f"no prunable factor in reshape: {f.why}" + (f"; the factor that could be: {because}" if because else "")
        g.nodes[f.whole]["frozen"].append(why)
        frozen.setdefault(uf[f.whole], why)
        return
    stride = math.prod(f.sizes[f.parts.index(pick) + 1:])
    idx = np.arange(g.nodes[f.whole]["size"])
    g.edges[f.whole, pick]["maps"].append((f.whole, idx, (idx // stride) % g.nodes[pick]["size"]))
    was_frozen = frozen.get(uf[f.whole]) or frozen.get(uf[pick])
    uf.union(f.whole, pick)
    if was_frozen:
        frozen.setdefault(uf[pick], was_frozen)


def _share_equal_factorisations(c: Coupling, uf) -> None:
    """Two factors of dims that are the same channels (coupled index for index) into the same
    sizes describe one factorisation: their parts are coupled, so they resolve alike."""
    g = c.graph
    buckets: dict[tuple, list[Factor]] = {}
    for f in c.factors:
        live = tuple(n for n in f.sizes if n > 1)
        if len(live) > 1:
            buckets.setdefault((uf[f.whole], live), []).append(f)
    pairs = [(fs[0], f) for fs in buckets.values() for f in fs[1:]]
    if not pairs:
        return
    active = nx.Graph((u, v) for u, v, d in g.edges(data=True) if d["maps"] and u != v)
    for a, b in pairs:
        if a.whole == b.whole or _same_channels(g, active, a.whole, b.whole):
            for p, q in zip(*[[x for x, n in zip(f.parts, f.sizes) if n > 1] for f in (a, b)]):
                if p != q:
                    maps = g.edges[p, q]["maps"] if g.has_edge(p, q) else []
                    g.add_edge(p, q, maps=[*maps, (p, None, None)], why=f"equal factorisations: {a.why}; {b.why}")
                    uf.union(p, q)


def _same_channels(g: nx.Graph, active: nx.Graph, a: Slot, b: Slot) -> bool:
    """Whether channel i of ``a`` is channel i of ``b`` along a shortest chain of couplings."""
    try:
        path = nx.shortest_path(active, a, b)
    except (nx.NetworkXNoPath, nx.NodeNotFound):
        return False
    idx = np.arange(g.nodes[a]["size"])
    for u, v in zip(path, path[1:]):
        step = np.full(g.nodes[u]["size"], -1)
        for first, ia, ib in g.edges[u, v]["maps"]:
            if ia is None:  # the identity (coupling.Builder._map)
                ia = ib = np.arange(len(step))
            src, dst = (ia, ib) if first == u else (ib, ia)
            step[src] = dst
        idx = step[idx]
        if (idx < 0).any():
            return False
    return g.nodes[b]["size"] == len(idx) and bool((idx == np.arange(len(idx))).all())
