"""Tests for graphprune/rules/attention.py: SDPA heads, GQA, hand-written attention."""
from __future__ import annotations

import torch

import graphprune
from graphprune.testing import assert_prune_matches

from ..models import GQA, HandAttention

X = torch.randn(2, 5, 16)


def test_gqa_unit_is_a_kv_head_with_the_query_heads_reading_it() -> None:
    groups = graphprune.find_groups(GQA(), X)
    (heads,) = [g for g in groups.prunable if g.unit == "head"]
    q = next(m for m in heads.members if m.fqn == "q.weight").indices
    k = next(m for m in heads.members if m.fqn == "k.weight").indices
    assert heads.width == 2 and q.shape == (2, 8) and k.shape == (2, 4)
    assert q[1].tolist() == list(range(8, 16)) and k[1].tolist() == list(range(4, 8))
    assert_prune_matches(GQA(), X)


def test_head_dim_is_frozen_by_default() -> None:
    groups = graphprune.find_groups(GQA(), X)
    assert not any(g.width == 4 and g.unit == "channel" for g in groups.prunable)


def test_hand_written_attention_heads() -> None:
    groups = graphprune.find_groups(HandAttention(), X)
    assert [g.structure for g in groups.prunable] == ["4 heads x4"]
    assert_prune_matches(HandAttention(), X)
