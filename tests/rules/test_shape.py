"""Tests for graphprune/rules/shape.py: reshape factors (heads), flatten -> linear, permute."""
from __future__ import annotations

import torch
from torch import nn

import graphprune
from graphprune.rules.shape import match_dims
from graphprune.testing import assert_prune_matches

from ..models import FlattenFC, FusedQKV


def test_match_dims_pairs_runs_of_equal_product() -> None:
    assert match_dims((1, 197, 576), (1, 197, 3, 6, 32)) == [([1], [1]), ([2], [2, 3, 4])]
    assert match_dims((2, 3, 4), (6, 4)) == [([0, 1], [0]), ([2], [1])]
    assert match_dims((6, 4), (4, 6)) == [([0, 1], [0, 1])]


def test_split_into_qkv_heads_picks_the_heads_factor_and_binds_num_heads() -> None:
    model, x = FusedQKV(), torch.randn(2, 5, 16)
    heads = [g for g in graphprune.find_groups(model, x).prunable if g.unit == "head"]
    assert len(heads) == 1 and heads[0].width == 4
    qkv_rows = next(m for m in heads[0].members if m.fqn == "qkv.weight").indices
    assert qkv_rows.shape == (4, 12) and qkv_rows[1].tolist() == [4, 5, 6, 7, 20, 21, 22, 23, 36, 37, 38, 39]
    small = graphprune.shrink(model, 0.3, example_inputs=x, tolerance=0.2)
    assert small.num_heads == small.qkv.out_features // (3 * small.head_dim) < 4


def test_flatten_couples_channels_to_blocks_of_linear_inputs() -> None:
    model, x = FlattenFC(), torch.randn(2, 3, 8, 8)
    group = graphprune.find_groups(model, x).prunable[0]
    cols = next(m for m in group.members if m.fqn == "fc.weight").indices
    assert cols.shape == (8, 16) and cols[2].tolist() == list(range(32, 48))
    assert_prune_matches(model, x)


def test_permute_and_transpose_carry_channels() -> None:
    class Perm(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 6), nn.Conv1d(6, 2, 1)

        def forward(self, x):
            return self.b(self.a(x).permute(0, 2, 1))

    assert_prune_matches(Perm(), torch.randn(2, 5, 4))


class QueryPool(nn.Module):
    """Hiera: ``q.view(B, self.heads, n, self.q_stride, -1, d)`` where heads == q_stride == 2; only
    the attribute written at the heads position may follow head pruning."""

    def __init__(self):
        super().__init__()
        self.heads, self.q_stride, self.head_dim = 2, 2, 4
        self.qkv, self.proj = nn.Linear(8, 24), nn.Linear(8, 8)

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q = q.view(B, self.heads, self.q_stride, -1, self.head_dim).amax(dim=2)
        k = k.view(B, self.heads, self.q_stride, -1, self.head_dim).amax(dim=2)
        v = v.view(B, self.heads, self.q_stride, -1, self.head_dim).amax(dim=2)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        return self.proj(y.reshape(B, -1, self.heads * self.head_dim))


def test_a_view_binds_only_the_attribute_written_at_the_dims_position() -> None:
    x = torch.randn(1, 8, 8)
    heads = [g for g in graphprune.find_groups(QueryPool(), x) if g.unit == "head"]
    assert heads and all("q_stride" not in {a.attr for a in g.attrs} for g in heads)
    assert {"heads"} <= {a.attr for g in heads for a in g.attrs}


class MergeToInputWidth(nn.Module):
    """pvt_v2 / CoaT: ``B, N, C = x.shape`` and the heads are merged back with ``reshape(B, N, C)``."""

    def __init__(self, dim: int = 16, heads: int = 4):
        super().__init__()
        self.num_heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(y.transpose(1, 2).reshape(B, N, C))


class InputWidthBlock(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.attn, self.head = nn.Linear(8, 16), MergeToInputWidth(), nn.Linear(16, 2)

    def forward(self, x):
        x = self.embed(x)
        return self.head(x + self.attn(x))


def test_a_size_read_from_the_input_shape_couples_the_dim_to_that_input() -> None:
    x = torch.randn(1, 5, 8)
    groups = graphprune.find_groups(InputWidthBlock(), x)
    heads = [g for g in groups.prunable if g.unit == "head"]
    assert len(heads) == 1  # heads and the residual stream they are merged to the width of, together
    assert {"embed.weight", "attn.proj.weight", "attn.qkv.weight"} <= {m.fqn for m in heads[0].members}
    small = graphprune.shrink(InputWidthBlock().eval(), 0.4, example_inputs=x, tolerance=0.05)  # one head
    assert small.attn.num_heads < 4 and small(torch.randn(2, 3, 8)).shape == (2, 3, 2)
    assert_prune_matches(InputWidthBlock(), x)
