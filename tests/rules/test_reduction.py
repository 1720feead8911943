"""Tests for graphprune/rules/reduction.py and pooling.py: kept dims couple, reduced dims inexact."""
from __future__ import annotations

import pytest
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


class LastToken(nn.Module):
    """HF sequence classifiers: the last non-pad position per row, found with argmax over tokens."""

    def __init__(self):
        super().__init__()
        self.proj, self.score = nn.Linear(6, 10), nn.Linear(10, 3)

    def forward(self, x):
        h = self.proj(x)
        last = (x[..., 0] > 0).int().argmax(-1)
        return self.score(h[torch.arange(h.shape[0]), last])


def test_argmax_fixes_the_reduced_dim_and_passes_the_others() -> None:
    x = torch.randn(2, 5, 6)
    groups = graphprune.find_groups(LastToken(), x)
    assert groups.coupling.unsupported == []
    (hidden,) = groups.prunable
    assert {(m.fqn, m.dim) for m in hidden.members} >= {("proj.weight", 0), ("score.weight", 1)}
    assert_prune_matches(LastToken(), x)


class HandNorm(nn.Module):
    """A residual stream normalised by a hand-written RMS norm (HF's LlamaRMSNorm) or layer norm."""

    def __init__(self, how: str):
        super().__init__()
        self.how, self.up, self.down, self.head = how, nn.Linear(6, 8), nn.Linear(8, 8), nn.Linear(8, 3)
        self.scale = nn.Parameter(torch.ones(8))

    def norm(self, h):
        if self.how == "rms":
            return self.scale * (h * torch.rsqrt(h.float().pow(2).mean(-1, keepdim=True) + 1e-6))
        var, mean = torch.var_mean(h, -1, keepdim=True, unbiased=False)
        return self.scale * (h - mean) / torch.sqrt(var + 1e-5)

    def forward(self, x):
        h = self.up(x)
        h = h + self.down(torch.relu(self.norm(h)))
        return self.head(self.norm(h))


@pytest.mark.parametrize("how", ["rms", "layer"])
def test_a_hand_written_norm_makes_its_channels_the_hidden_stream(how: str) -> None:
    (group,) = graphprune.find_groups(HandNorm(how), torch.randn(2, 6)).prunable
    assert group.kind == "hidden" and group.width == 8


def test_a_statistic_that_is_not_applied_back_leaves_the_channels_mlp() -> None:
    (group,) = graphprune.find_groups(MeanOverChannels(), torch.randn(3, 4)).prunable
    assert group.kind == "mlp"
