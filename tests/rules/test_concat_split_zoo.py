"""Tests for graphprune/rules/concat_split.py: split with a constant size vs. chunk."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import graphprune
from graphprune.testing import assert_prune_matches


class CrossStage(nn.Module):
    """timm CSP style: expand, cut in two halves, transform one, concatenate, fuse."""

    def __init__(self, chunk: bool, width: int = 32):
        super().__init__()
        self.chunk, self.width = chunk, width
        self.conv_exp = nn.Conv2d(3, width, 1)
        self.block = nn.Sequential(nn.Conv2d(width // 2, 48, 3, padding=1), nn.ReLU(), nn.Conv2d(48, width // 2, 1))
        self.fuse = nn.Conv2d(width, 40, 1)
        self.head = nn.Conv2d(40, 5, 1)

    def forward(self, x):
        x = self.conv_exp(x)
        # split size: a constant computed in the code (timm's `self.expand_chs // 2`), no attribute holds it
        a, b = x.chunk(2, dim=1) if self.chunk else x.split(self.width // 2, dim=1)
        return self.head(torch.relu(self.fuse(torch.cat([self.block(a), b], dim=1))))


X = torch.randn(1, 3, 8, 8)


def _expand_group(model):
    groups = graphprune.find_groups(model, X)
    return next(g for g in groups if any(m.fqn == "conv_exp.weight" and m.dim == 0 for m in g.members))


def test_constant_split_freezes_its_input_channels():
    assert "split sizes are fixed" in (_expand_group(CrossStage(chunk=False)).frozen or "")


def test_chunk_pieces_are_pruned_in_parallel():
    group = _expand_group(CrossStage(chunk=True))
    assert group.prunable and group.width == 16  # channel i of both halves is one unit


@pytest.mark.parametrize("chunk", [False, True])
def test_shrink_split_and_chunk(chunk):
    model = CrossStage(chunk).eval()
    small = graphprune.shrink(model, 0.3, example_inputs=X)
    assert small(X).shape == model(X).shape
    ratio = 1 - graphprune.count_params(small) / graphprune.count_params(model)
    assert abs(ratio - 0.3) <= 0.01
    assert_prune_matches(model, X)
