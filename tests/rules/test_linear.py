"""Tests for graphprune/rules/linear.py: linear, matmul with a bare weight, einsum."""
from __future__ import annotations

import torch
from torch import nn

import graphprune
from graphprune.testing import assert_prune_matches

from ..models import SwiGLU


def test_gated_mlp_couples_gate_up_and_down() -> None:
    (group,) = graphprune.find_groups(SwiGLU(), torch.randn(2, 5, 12)).prunable
    assert {(m.fqn, m.dim) for m in group.members} == {("gate.weight", 0), ("up.weight", 0), ("down.weight", 1)}
    assert_prune_matches(SwiGLU(), torch.randn(2, 5, 12))


class Einsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(4, 10))
        self.w2 = nn.Parameter(torch.randn(10, 3))

    def forward(self, x):
        return torch.einsum("bh,ho->bo", torch.relu(torch.einsum("bi,ih->bh", x, self.w1)), self.w2)


def test_einsum_letters_couple_bare_parameters() -> None:
    (group,) = graphprune.find_groups(Einsum(), torch.randn(2, 4)).prunable
    assert {(m.fqn, m.dim) for m in group.members} == {("w1", 1), ("w2", 0)}
    small = graphprune.shrink(Einsum(), 0.3, example_inputs=torch.randn(2, 4), tolerance=0.2)
    assert small.w1.shape[1] == small.w2.shape[0] < 10
