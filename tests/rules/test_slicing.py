"""Tests for graphprune/rules/slicing.py: slices that tile a dim are pieces when their cuts follow
width attributes (Phi-3's fused qkv cut at config.num_attention_heads * head_dim)."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphprune
from graphprune.testing import assert_prune_matches

X = torch.randn(2, 5, 16)


class Config:
    """The shape of a Hugging Face config: one object every layer holds and reads."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def to_dict(self):
        return dict(self.__dict__)


class Phi3LikeAttention(nn.Module):
    """Query heads counted by the shared config, kv heads by the module, as in Phi-3."""

    def __init__(self, config: Config):
        super().__init__()
        self.config, self.head_dim, self.num_kv_heads = config, 4, config.num_kv_heads
        width = (config.num_heads + 2 * config.num_kv_heads) * self.head_dim
        self.qkv = nn.Linear(16, width)
        self.o = nn.Linear(config.num_heads * self.head_dim, 16)

    def forward(self, x):
        qkv = self.qkv(x)
        query_pos = self.config.num_heads * self.head_dim
        q = qkv[..., :query_pos]
        k = qkv[..., query_pos: query_pos + self.num_kv_heads * self.head_dim]
        v = qkv[..., query_pos + self.num_kv_heads * self.head_dim:]
        q, k, v = (t.view(*t.shape[:-1], -1, self.head_dim).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, enable_gqa=True).transpose(1, 2)
        return x + self.o(y.reshape(*y.shape[:-2], -1))


class Phi3Like(nn.Module):
    def __init__(self):
        super().__init__()
        self.config = Config(num_heads=4, num_kv_heads=2)
        self.layers = nn.ModuleList([Phi3LikeAttention(self.config) for _ in range(2)])
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return self.head(x)


class LiteralCuts(nn.Module):
    """The same tiling, cut at literals: no attribute follows, so the dim stays fixed."""

    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(16, 24), nn.Linear(8, 3)

    def forward(self, x):
        y = self.up(x)
        return self.down(y[..., :8] * y[..., 8:16] + y[..., 16:])


class AttributeCut(nn.Module):
    """``y[..., :self.gate_dim]`` and an open ``y[..., self.gate_dim:]``: only the first cut needs an attribute."""

    def __init__(self):
        super().__init__()
        self.gate_dim = 8
        self.up, self.gate, self.rest = nn.Linear(16, 24), nn.Linear(8, 3), nn.Linear(16, 3)

    def forward(self, x):
        y = self.up(x)
        return self.gate(y[..., :self.gate_dim]) + self.rest(y[..., self.gate_dim:])


def _heads(model):
    return [g for g in graphprune.find_groups(model, X).prunable if g.unit == "head"]


def test_slices_cut_at_config_widths_are_heads_bound_to_the_shared_config() -> None:
    heads = _heads(Phi3Like())
    assert len(heads) == 2 and all(g.width == 2 for g in heads)  # kv heads, each with its 2 query heads
    attrs = {(a.fqn, a.attr) for g in heads for a in g.attrs}
    assert {("layers.0", "config.num_heads"), ("layers.1", "config.num_heads"),
            ("layers.0", "num_kv_heads")} <= attrs
    rows = next(m for m in heads[0].members if m.fqn == "layers.0.qkv.weight").indices
    assert rows[1].tolist() == [*range(8, 16), *range(20, 24), *range(28, 32)]  # q heads 2-3, kv head 1 twice


def test_heads_read_from_a_shared_config_keep_one_count_in_every_layer() -> None:
    small = graphprune.shrink(Phi3Like().eval(), 0.45, example_inputs=X, tolerance=0.05, prune=("heads",))
    assert small.config.num_heads == 2 and [l.num_kv_heads for l in small.layers] == [1, 1]
    assert [l.qkv.out_features for l in small.layers] == [16, 16]
    assert small(torch.randn(3, 7, 16)).shape == (3, 7, 3)
    assert_prune_matches(Phi3Like(), X)


def test_slices_cut_at_literals_stay_frozen_and_say_why() -> None:
    groups = graphprune.find_groups(LiteralCuts(), X)
    up = next(g for g in groups if any(m.fqn == "up.weight" and m.dim == 0 for m in g.members))
    assert "not every cut follows a width attribute" in (up.frozen or "")


def test_a_cut_at_an_attribute_with_an_open_last_piece_prunes_both_pieces() -> None:
    groups = graphprune.find_groups(AttributeCut(), X)
    pieces = [g for g in groups.prunable if any(m.fqn == "up.weight" for m in g.members)]
    assert sorted(g.width for g in pieces) == [8, 16]
    assert [(a.fqn, a.attr) for g in pieces for a in g.attrs] == [("", "gate_dim")]
    small = graphprune.shrink(AttributeCut().eval(), 0.3, example_inputs=X, tolerance=0.1)
    assert small.gate_dim == small.gate.in_features and small.up.out_features == small.gate_dim + small.rest.in_features
    assert_prune_matches(AttributeCut(), X)


def test_one_layer_alone_cannot_lose_a_head_its_shared_config_counts() -> None:
    # a kv head of one layer is about a quarter of the parameters; untied, that alone would be a plan
    with pytest.raises(graphprune.PlanError, match="nearest reachable ratios are 0.0000 and 0.4"):
        graphprune.shrink(Phi3Like().eval(), 0.24, example_inputs=X, tolerance=0.05, prune=("heads",))


def test_a_layer_left_unpruned_holds_the_shared_count_for_every_layer() -> None:
    # layer 1 is ignored, so config.num_heads must stay: layer 0's heads cannot go either
    with pytest.warns(UserWarning, match="bind an attribute shared"), pytest.raises(graphprune.PlanError):
        graphprune.shrink(Phi3Like().eval(), 0.2, example_inputs=X, prune=("heads",), ignore=("layers.1",))


def test_a_failed_surgery_restores_the_shared_config() -> None:
    model = Phi3Like().eval()
    groups = graphprune.find_groups(model, X)
    plan = graphprune.make_plan(model, groups, graphprune.ShrinkConfig(ratio=0.45, tolerance=0.05, prune=("heads",)))
    broken = dataclasses.replace(plan, output_shapes=[[9, 9, 9]])  # the shape check fails after the config was set
    with pytest.raises(graphprune.SurgeryError):
        graphprune.apply_plan_(model, broken, X)
    assert model.config.num_heads == 4 and model.layers[0].qkv.out_features == 32
