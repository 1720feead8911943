"""Tests for graphprune/rules/shape.py: reshape factors (heads), flatten -> linear, permute."""
from __future__ import annotations

import torch
from torch import nn

import graphprune
from graphprune.rules.shape import match_dims
from graphprune.testing import assert_prune_matches

from ..models import FlattenFC, FoldedHeads, FusedQKV


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


def test_common_refinement_of_an_n_to_m_reshape() -> None:
    from graphprune.rules.shape import fine_sizes

    assert fine_sizes([5, 16], [20, 4]) == [5, 4, 4]  # (L, B*H...) style: both sides merge (5, 4, 4)
    assert fine_sizes([6, 4], [4, 6]) is None  # indices mix: frozen


class SequenceFirstHeads(nn.Module):
    """torch's own layout: (L, B, E) viewed as (L, B * heads, head_dim) -- an n:m reshape."""

    def __init__(self):
        super().__init__()
        self.heads, self.head_dim = 4, 4
        self.qkv, self.proj = nn.Linear(8, 48), nn.Linear(16, 3)

    def forward(self, x):
        L, B, _ = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k, v = (t.reshape(L, B * self.heads, self.head_dim).transpose(0, 1) for t in (q, k, v))
        y = torch.bmm((q @ k.transpose(1, 2)).softmax(-1), v)
        return self.proj(y.transpose(0, 1).reshape(L, B, self.heads * self.head_dim))


def test_an_n_to_m_reshape_of_batch_and_heads_prunes_heads() -> None:
    x = torch.randn(5, 2, 8)
    heads = [g for g in graphprune.find_groups(SequenceFirstHeads(), x).prunable if g.unit == "head"]
    assert len(heads) == 1 and heads[0].width == 4
    assert ("", "heads") in {(a.fqn, a.attr) for a in heads[0].attrs}
    assert_prune_matches(SequenceFirstHeads(), x)


def test_repeat_interleave_and_expand_gqa_prune_kv_groups_exactly() -> None:
    from ..models import HandGQA

    x = torch.randn(2, 6, 32)
    for repeat in ("interleave", "expand"):
        (heads,) = [g for g in graphprune.find_groups(HandGQA(repeat=repeat), x).prunable if g.unit == "head"]
        q = next(m for m in heads.members if m.fqn == "q_proj.weight").indices
        k = next(m for m in heads.members if m.fqn == "k_proj.weight").indices
        assert heads.width == 2 and q.shape == (2, 16) and k.shape == (2, 8)  # a kv head and its 2 query heads
        assert assert_prune_matches(HandGQA(repeat=repeat), x, kinds=("heads",)).groups_checked == 1
        small = graphprune.shrink(HandGQA(repeat=repeat).eval(), 0.2, example_inputs=x, tolerance=0.1, prune=("heads",))
        assert small.k_proj.out_features == 8 and small.q_proj.out_features == 16 and small(x).shape == (2, 6, 3)


class InputWidthAttention(nn.Module):
    """Swin and older timm: ``reshape(B, N, 3, heads, C // heads)`` with C the input's width."""

    def __init__(self):
        super().__init__()
        self.num_heads = 4
        self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 16)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2)
        return self.proj(y.reshape(B, N, -1))


class InputWidthHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.attn, self.head = nn.Linear(6, 16), InputWidthAttention(), nn.Linear(16, 2)

    def forward(self, x):
        x = self.embed(x)
        return self.head(x + self.attn(x))


def test_a_head_size_computed_from_the_input_width_couples_heads_to_it() -> None:
    x = torch.randn(2, 5, 6)
    heads = [g for g in graphprune.find_groups(InputWidthHeads(), x).prunable if g.unit == "head"]
    assert len(heads) == 1 and "embed.weight" in {m.fqn for m in heads[0].members}  # 4 channels of C per head
    small = graphprune.shrink(InputWidthHeads().eval(), 0.3, example_inputs=x, tolerance=0.2)
    assert small.attn.num_heads * 4 == small.embed.out_features < 16 and small(x).shape == (2, 5, 2)
    assert_prune_matches(InputWidthHeads(), x)


def test_heads_folded_into_a_batch_of_the_same_size_still_prune() -> None:
    # (B, H) -> B*H with B == H: the merge's parts are batch and heads, not (heads, head_dim), so no
    # head count is bound to the batch by value (which froze the heads)
    model, x = FoldedHeads(dim=8, heads=2).eval(), torch.randn(2, 5, 8)
    heads = [g for g in graphprune.find_groups(model, x).prunable if g.unit == "head"]
    assert [g.width for g in heads] == [2]
    assert assert_prune_matches(model, x, fraction=0.5).groups_checked == 1


class UnflattenHeads(nn.Module):
    """Heads made by ``unflatten``; ``sizes`` is the code's head split, ``keyword`` spells the call
    as ``torch.unflatten(t, dim=-1, sizes=...)``."""

    def __init__(self, sizes: str, keyword: bool = False):
        super().__init__()
        self.num_heads, self.sizes, self.keyword = 4, sizes, keyword
        self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 16)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        if self.sizes == "number" and self.keyword:
            q, k, v = (torch.unflatten(t, dim=-1, sizes=(4, -1)).transpose(1, 2) for t in (q, k, v))
        elif self.sizes == "number":
            q, k, v = (t.unflatten(-1, (4, -1)).transpose(1, 2) for t in (q, k, v))
        elif self.keyword:
            q, k, v = (torch.unflatten(t, dim=-1, sizes=(self.num_heads, -1)).transpose(1, 2) for t in (q, k, v))
        else:
            q, k, v = (t.unflatten(-1, (self.num_heads, -1)).transpose(1, 2) for t in (q, k, v))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return x + self.proj(y.transpose(1, 2).flatten(2))


def test_unflatten_sizes_are_read_like_a_views() -> None:
    """``unflatten(-1, (4, -1))`` after removing a head would split into 4 heads of the wrong size:
    the 4 stays. ``(self.num_heads, -1)`` binds the attribute, and the heads prune exactly."""
    x = torch.randn(2, 5, 16)
    for keyword in (False, True):
        fixed = graphprune.find_groups(UnflattenHeads("number", keyword), x)
        frozen = [g for g in fixed if any(m.fqn == "qkv.weight" and m.dim == 0 for m in g.members)]
        assert frozen and all("a number written in the model's code" in (g.frozen or "") for g in frozen)
        assert not [g for g in fixed.prunable if g.unit == "head"]
        model = UnflattenHeads("attribute", keyword)
        heads = [g for g in graphprune.find_groups(model, x).prunable if g.unit == "head"]
        assert len(heads) == 1 and [a.attr for a in heads[0].attrs] == ["num_heads"]
        assert_prune_matches(model, x)


class SpatialUnflatten(nn.Module):
    """``(B, C, H*W) -> (B, C, H, W)``: the channels pass through an unflatten of another dim."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv1d(3, 8, 1), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        return self.b(self.a(x).unflatten(2, (4, 4)))


def test_unflatten_leaves_the_dims_it_does_not_split_prunable_even_unread() -> None:
    for read_source in (True, False):
        groups = graphprune.find_groups(SpatialUnflatten(), torch.randn(2, 3, 16), read_source=read_source)
        assert [g.width for g in groups.prunable] == [8]
    assert_prune_matches(SpatialUnflatten(), torch.randn(2, 3, 16))


def _rotate_pairs(x):
    """GPT-J's rotary: (.., d) as d/2 pairs, each turned; ``flatten(-2)`` merges (d/2, 2) back."""
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


class PairRotary(nn.Module):
    """Partial rotary over 8 of each head's 16 dims: its flatten merges 4 pairs, and 4 is also the
    head count, which no code near that flatten names."""

    def __init__(self):
        super().__init__()
        self.num_heads, self.head_dim, self.rotary = 4, 16, 8
        self.qkv, self.proj = nn.Linear(64, 192), nn.Linear(64, 64)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q = torch.cat([_rotate_pairs(q[..., :self.rotary]), q[..., self.rotary:]], dim=-1)
        k = torch.cat([_rotate_pairs(k[..., :self.rotary]), k[..., self.rotary:]], dim=-1)
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return x + self.proj(y.transpose(1, 2).reshape(B, T, -1))


def test_a_flatten_binds_no_head_count_the_code_around_it_does_not_name() -> None:
    model, x = PairRotary(), torch.randn(2, 5, 64)
    prunable = graphprune.find_groups(model, x).prunable  # the residual stream is the output: it stays
    assert [(g.unit, g.width) for g in prunable] == [("head", 4)]
    assert assert_prune_matches(model, x).groups_checked == 1


class PropertyHeads(nn.Module):
    """The head count is a read-only property: surgery could not write a pruned count to it."""

    def __init__(self):
        super().__init__()
        self._heads = (4,)
        self.qkv, self.proj = nn.Linear(16, 48), nn.Linear(16, 16)
        self.up, self.down = nn.Linear(16, 32), nn.Linear(32, 16)

    @property
    def heads(self):
        return self._heads[0]

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        x = x + self.proj(torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(B, N, -1))
        return x + self.down(torch.relu(self.up(x)))


def test_a_head_count_read_through_a_read_only_property_keeps_the_heads_and_the_rest_prunes() -> None:
    model, x = PropertyHeads().eval(), torch.randn(2, 5, 16)
    groups = graphprune.find_groups(model, x)
    assert not [g for g in groups.prunable if g.unit == "head"]
    assert any("heads is a read-only property: pruning could not update it" in (g.frozen or "") for g in groups)
    small = graphprune.shrink(model, 0.2, example_inputs=x, tolerance=0.1)  # before: a PlanError about attrs
    assert small.qkv.out_features == 48 and small.up.out_features < 32
