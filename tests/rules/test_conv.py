"""Tests for graphprune/rules/conv.py: grouped, depthwise (with multiplier) and transposed convs."""
from __future__ import annotations

import torch
from torch import nn

import graphprune
from graphprune.testing import assert_prune_matches

X = torch.randn(2, 4, 8, 8)


def _net(groups: int, mult: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(4, 8, 1), nn.ReLU(), nn.Conv2d(8, 8 * mult, 3, padding=1, groups=groups),
                         nn.ReLU(), nn.Conv2d(8 * mult, 3, 1))


def test_grouped_conv_prunes_whole_groups_and_sets_groups() -> None:
    model = _net(groups=4)
    unit = [g for g in graphprune.find_groups(model, X).prunable if g.unit == "group"]
    assert len(unit) == 1 and unit[0].width == 4
    small = graphprune.shrink(model, 0.3, example_inputs=X, tolerance=0.2)
    assert small[2].groups == small[2].out_channels // 2 == small[0].out_channels // 2
    assert_prune_matches(model, X)


def test_depthwise_multiplier_couples_each_input_to_its_outputs() -> None:
    model = _net(groups=8, mult=2)
    group = next(g for g in graphprune.find_groups(model, X).prunable if g.unit == "group")
    rows = next(m for m in group.members if m.fqn == "2.weight" and m.dim == 0).indices
    assert rows.tolist()[:2] == [[0, 1], [2, 3]]
    assert_prune_matches(model, X)


def test_transposed_conv_in_and_out_channels() -> None:
    model = nn.Sequential(nn.Conv2d(4, 8, 1), nn.ReLU(), nn.ConvTranspose2d(8, 6, 2, stride=2), nn.ReLU(),
                          nn.Conv2d(6, 2, 1))
    small = graphprune.shrink(model, 0.4, example_inputs=X, tolerance=0.2)
    assert small[2].in_channels == small[0].out_channels and small[2].out_channels == small[4].in_channels
    assert_prune_matches(model, X)
