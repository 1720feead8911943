"""Tests for graphprune/testing.py: the oracle itself must be able to fail."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from graphprune.testing import assert_prune_matches


class TwoOutputs(nn.Module):
    """The second output reads the hidden width as a number: exact for the first output only."""

    def __init__(self, scaled: bool):
        super().__init__()
        torch.manual_seed(0)
        self.scaled, self.a, self.b, self.c = scaled, nn.Linear(8, 16), nn.Linear(16, 4), nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h), self.c(h) * (h.shape[1] if self.scaled else 16)


def test_the_oracle_compares_every_output_not_only_the_first() -> None:
    assert assert_prune_matches(TwoOutputs(scaled=False).eval(), torch.randn(4, 8)).groups_checked == 1
    with pytest.raises(AssertionError, match="pruned output differs by 0.25 of the output scale"):
        assert_prune_matches(TwoOutputs(scaled=True).eval(), torch.randn(4, 8))
