"""Tests for graphprune/rules/norm.py: batch norm with batch statistics (timm's weight-standardised
``ScaledStdConv2d`` normalises each filter over its inputs) is inexact along the averaged dims."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import graphprune
from graphprune.testing import assert_prune_matches


class StdConv2d(nn.Conv2d):
    def forward(self, x):
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True,
                         momentum=0.0, eps=1e-5).reshape_as(self.weight)
        return F.conv2d(x, w, self.bias, padding=1)


def model() -> nn.Module:
    return nn.Sequential(StdConv2d(3, 32, 3), nn.ReLU(), StdConv2d(32, 24, 3), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, 5)).eval()


X = torch.randn(1, 3, 8, 8)


def test_filters_standardised_over_their_inputs_are_inexact():
    groups = graphprune.find_groups(model(), X)
    hidden = next(g for g in groups if any(m.fqn == "0.weight" and m.dim == 0 for m in g.members))
    assert hidden.prunable and "statistics over this dim" in (hidden.inexact or "")
    last = next(g for g in groups if any(m.fqn == "2.weight" and m.dim == 0 for m in g.members))
    assert last.prunable and last.inexact is None  # a filter's own statistics go with it


def test_shrink_and_oracle():
    m = model()
    small = graphprune.shrink(m, 0.3, example_inputs=X)
    assert small(X).shape == (1, 5)
    assert abs(1 - graphprune.count_params(small) / graphprune.count_params(m) - 0.3) <= 0.01
    assert assert_prune_matches(m, X).groups_checked >= 1
