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


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_the_oracle_copies_a_model_whose_old_weight_norm_left_a_non_leaf_weight() -> None:
    # torch.nn.utils.weight_norm keeps `weight` with autograd history after a forward; shrink copies
    # such a model, so its oracle must too (copy.deepcopy refuses it)
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 4))
    nn.utils.weight_norm(m[2])
    x = torch.randn(5, 8)
    m(x)
    assert m[2].weight.grad_fn is not None
    result = assert_prune_matches(m, x)  # layer 2's input columns sit under the row norm: not exact
    assert result.groups_checked == 1 and result.params_removed == 4 * (1 + 32 + 1 + 4)  # 4 of 16: g, v, b, next
