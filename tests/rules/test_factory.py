"""Tests for graphprune/rules/factory.py: created tensors sized by a module attribute."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import graphprune
from graphprune.testing import assert_prune_matches

X = torch.randn(2, 5, 16)


class SharedBiasAttention(nn.Module):
    """T5 cross-attention style: the first layer makes ``zeros((1, self.n_heads, n, n))`` as the
    position bias and every later layer adds that same tensor to its scores. ``alibi`` makes
    ALiBi-like per-head slopes with ``arange(self.n_heads)`` instead, whose values depend on the index."""

    def __init__(self, dim: int = 16, heads: int = 4, alibi: bool = False):
        super().__init__()
        self.n_heads, self.head_dim, self.alibi = heads, dim // heads, alibi
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))

    def forward(self, x, bias=None):
        b, n, _ = x.shape
        if bias is None and self.alibi:
            bias = torch.arange(self.n_heads, dtype=x.dtype).view(1, -1, 1, 1).expand(1, -1, n, n)
        elif bias is None:
            bias = torch.zeros((1, self.n_heads, n, n), dtype=x.dtype)
        q, k, v = (p(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2) for p in (self.q, self.k, self.v))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias).transpose(1, 2).reshape(b, n, -1)
        return x + self.o(y), bias


class Stack(nn.Module):
    def __init__(self, alibi: bool = False):
        super().__init__()
        self.layers = nn.ModuleList(SharedBiasAttention(alibi=alibi) for _ in range(2))
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        bias = None
        for layer in self.layers:
            x, bias = layer(x, bias)
        return self.fc(x)


def _head_groups(model):
    return [g for g in graphprune.find_groups(model, X) if any(a.attr == "n_heads" for a in g.attrs)]


def test_zeros_sized_by_an_attribute_binds_it_and_couples_the_layers_sharing_it() -> None:
    (heads,) = _head_groups(Stack())
    assert heads.prunable and heads.width == 4
    assert {a.fqn for a in heads.attrs if a.attr == "n_heads"} == {"layers.0", "layers.1"}
    small = graphprune.shrink(Stack().eval(), 0.25, example_inputs=X, tolerance=0.05)
    assert [layer.n_heads for layer in small.layers] == [3, 3]
    assert small(torch.randn(1, 7, 16)).shape == (1, 7, 2)
    assert_prune_matches(Stack(), X)


def test_arange_sized_by_an_attribute_stays_fixed() -> None:
    groups = graphprune.find_groups(Stack(alibi=True), X)
    assert not [g for g in groups.prunable if g.unit == "head"]
    q = next(g for g in groups if any((m.fqn, m.dim) == ("layers.0.q.weight", 0) for m in g.members))
    assert "no prunable factor" in (q.frozen or "")  # the heads factor is frozen by the arange
