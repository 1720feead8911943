"""Tests for graphprune/rules/concat_split.py: split sizes read from module attributes follow the pruning."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import graphprune
from graphprune.testing import assert_prune_matches

X = torch.randn(2, 5, 16)


class SplitSizeAttention(nn.Module):
    """GPT-2 style: one fused projection cut by ``split(self.split_size)``, heads from ``view(.., -1, hd)``."""

    def __init__(self, dim: int = 16, heads: int = 4):
        super().__init__()
        self.num_heads, self.head_dim, self.split_size = heads, dim // heads, dim
        self.c_attn, self.c_proj, self.fc = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), nn.Linear(dim, 2)

    def forward(self, x):
        q, k, v = self.c_attn(x).split(self.split_size, dim=2)
        q, k, v = (t.view(*t.shape[:-1], -1, self.head_dim).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        return self.fc(x + self.c_proj(y.reshape(*y.shape[:-2], -1)))


class SplitSizesGQA(nn.Module):
    """vLLM / Qwen style: ``split([self.q_size, self.kv_size, self.kv_size])``, grouped-query SDPA."""

    def __init__(self, dim: int = 16, heads: int = 4, kv_heads: int = 2):
        super().__init__()
        self.head_dim = dim // heads
        self.q_size, self.kv_size = heads * self.head_dim, kv_heads * self.head_dim
        self.qkv = nn.Linear(dim, self.q_size + 2 * self.kv_size)
        self.o, self.fc = nn.Linear(self.q_size, dim), nn.Linear(dim, 2)

    def forward(self, x):
        q, k, v = self.qkv(x).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q, k, v = (t.unflatten(-1, (-1, self.head_dim)).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, enable_gqa=True).transpose(1, 2).flatten(2)
        return self.fc(x + self.o(y))


class SplitByUnnamedValue(nn.Module):
    """An attribute has the piece size, but the split does not read it: a value match is no proof."""

    def __init__(self):
        super().__init__()
        self.width = 8
        self.up, self.down = nn.Linear(16, 16), nn.Linear(8, 2)

    def forward(self, x):
        a, b = self.up(x).split(8, dim=-1)
        return self.down(a * b)


def _heads(model):
    return [g for g in graphprune.find_groups(model, X).prunable if g.unit == "head"]


def test_split_size_attribute_is_bound_and_pieces_prune_in_parallel() -> None:
    (heads,) = _heads(SplitSizeAttention())
    assert {(a.fqn, a.attr) for a in heads.attrs} == {("", "split_size"), ("", "num_heads")}
    rows = next(m for m in heads.members if m.fqn == "c_attn.weight").indices
    assert rows[1].tolist() == [*range(4, 8), *range(20, 24), *range(36, 40)]  # head 1 of q, k and v
    assert_prune_matches(SplitSizeAttention(), X)


def test_split_size_attribute_follows_the_kept_width() -> None:
    model = SplitSizeAttention().eval()
    small = graphprune.shrink(model, 0.25, example_inputs=X, tolerance=0.05)  # one head
    assert small.split_size == small.c_proj.in_features < 16
    assert small.c_attn.out_features == 3 * small.split_size
    assert small(torch.randn(3, 7, 16)).shape == (3, 7, 2)


def test_split_sizes_from_two_attributes_prune_kv_heads_with_their_query_heads() -> None:
    (heads,) = _heads(SplitSizesGQA())
    assert heads.width == 2 and {a.attr for a in heads.attrs} >= {"q_size", "kv_size"}
    model = SplitSizesGQA().eval()
    small = graphprune.shrink(model, 0.45, example_inputs=X, tolerance=0.05)
    assert (small.q_size, small.kv_size) == (8, 4)  # one kv head and its two query heads removed
    assert small(torch.randn(1, 3, 16)).shape == (1, 3, 2)
    assert_prune_matches(SplitSizesGQA(), X)


def test_split_by_a_literal_stays_frozen_even_if_an_attribute_has_that_value() -> None:
    groups = graphprune.find_groups(SplitByUnnamedValue(), X)
    up = next(g for g in groups if any(m.fqn == "up.weight" and m.dim == 0 for m in g.members))
    assert "split sizes are fixed" in (up.frozen or "") and not up.attrs


class SplitWithDerivedRest(nn.Module):
    """shvit: ``split(x, [self.pdim, self.dim - self.pdim])`` fixes the stream, and the same ``pdim``
    sizes a piece of a fused projection elsewhere."""

    def __init__(self):
        super().__init__()
        self.dim, self.pdim = 16, 4
        self.qkv, self.out = nn.Linear(4, 12), nn.Linear(16, 2)

    def forward(self, x):
        x1, x2 = torch.split(x, [self.pdim, self.dim - self.pdim], dim=-1)
        q, k, v = torch.split(self.qkv(x1), [self.pdim, self.pdim, self.pdim], dim=-1)
        return self.out(torch.cat([v * (q * k).sum(-1, keepdim=True), x2], dim=-1))


def test_an_attribute_also_read_by_a_fixed_split_freezes_the_groups_binding_it() -> None:
    groups = graphprune.find_groups(SplitWithDerivedRest(), X)
    bound = [g for g in groups if any(a.attr == "pdim" for a in g.attrs)]
    assert bound and all("pdim is also read where split sizes are fixed" in (g.frozen or "") for g in bound)


class EmptyPass(nn.Module):
    """Full rotary: ``cat([rotated, x[..., d:]])`` with an empty pass-through part."""

    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(16, 8), nn.Linear(8, 2)
        self.pairs, self.width = 2, 4  # read, not written as numbers: those would stay (test_shape)

    def forward(self, x):
        y = self.up(x).unflatten(-1, (self.pairs, self.width))
        return self.down(torch.cat([y.sin(), y[..., 4:]], dim=-1).flatten(-2))


def test_an_empty_part_of_a_cat_still_couples_its_other_dims() -> None:
    groups = graphprune.find_groups(EmptyPass(), X)
    assert not [g.frozen for g in groups if any(m.fqn == "up.weight" and m.dim == 0 for m in g.members) and g.frozen]
