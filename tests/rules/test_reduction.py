"""Tests for graphprune/rules/reduction.py and pooling.py: kept dims couple, reduced dims inexact."""
from __future__ import annotations

import torch
from torch import nn

import graphprune
from graphprune.testing import assert_prune_matches


class MeanOverChannels(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(1, 2)

    def forward(self, x):
        return self.b(self.a(x).mean(-1, keepdim=True))


def test_mean_over_channels_marks_them_inexact() -> None:
    (group,) = graphprune.find_groups(MeanOverChannels(), torch.randn(3, 4)).prunable
    assert "reduced over by mean" in group.inexact


def test_global_pool_keeps_channels_exact() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 2))
    (group,) = graphprune.find_groups(model, torch.randn(2, 3, 8, 8)).prunable
    assert group.inexact is None
    assert_prune_matches(model, torch.randn(2, 3, 8, 8))
