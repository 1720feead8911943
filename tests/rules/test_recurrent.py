"""Tests for graphprune/rules/recurrent.py and the nn.RNNBase slicer (timm's Sequencer uses LSTMs)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import graphprune
from graphprune.testing import assert_prune_matches


class RecurrentTower(nn.Module):
    def __init__(self, kind: type, bidirectional: bool):
        super().__init__()
        self.fc1 = nn.Linear(6, 48)
        self.rnn = kind(48, 16, num_layers=2, batch_first=True, bidirectional=bidirectional)
        self.fc2 = nn.Linear(32 if bidirectional else 16, 3)

    def forward(self, x):
        return self.fc2(self.rnn(self.fc1(x))[0])


X = torch.randn(2, 7, 6)
CASES = [(nn.LSTM, True), (nn.LSTM, False), (nn.GRU, True)]


@pytest.mark.parametrize("kind,bidirectional", CASES)
def test_input_features_couple_to_first_layer_input_weights(kind, bidirectional):
    groups = graphprune.find_groups(RecurrentTower(kind, bidirectional).eval(), X)
    (group,) = groups.prunable  # fc1's outputs; the hidden sizes stay frozen
    names = {m.fqn for m in group.members}
    assert "rnn.weight_ih_l0" in names and ("rnn.weight_ih_l0_reverse" in names) == bidirectional
    assert "rnn.weight_ih_l1" not in names


@pytest.mark.parametrize("kind,bidirectional", CASES)
def test_shrink_and_oracle(kind, bidirectional):
    model = RecurrentTower(kind, bidirectional).eval()
    small = graphprune.shrink(model, 0.1, example_inputs=X, tolerance=0.02)
    assert small.rnn.input_size == small.fc1.out_features < 48
    assert small(X).shape == model(X).shape
    assert_prune_matches(model, X)
