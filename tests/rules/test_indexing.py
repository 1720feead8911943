"""Tests for graphprune/rules/indexing.py: indexed dims are fixed, the rest couple (right-aligned)."""
from __future__ import annotations

import torch
from torch import nn

import graphprune
from graphprune.testing import assert_prune_matches

X = torch.randn(4, 3, 8)


class ScatterChannels(nn.Module):
    """``out[idx] = v`` with ``v`` of lower rank: ``v``'s channels broadcast into the last dim."""

    def __init__(self):
        super().__init__()
        self.proj, self.head = nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = self.proj(x)
        out = torch.zeros_like(h)
        out[torch.tensor([1, 2])] = h.sum((0, 1))
        return self.head(out + h)


def test_index_put_values_broadcast_right_aligned_into_the_written_dims() -> None:
    groups = graphprune.find_groups(ScatterChannels(), X)
    proj = next(g for g in groups if any(m.fqn == "proj.weight" and m.dim == 0 for m in g.members))
    assert proj.prunable, proj.frozen
    assert any(m.fqn == "head.weight" and m.dim == 1 for m in proj.members)
    assert_prune_matches(ScatterChannels(), X)
