"""Tests for graphprune/rules/recurrent.py and the nn.RNNBase / nn.RNNCellBase slicers (timm's
Sequencer uses LSTMs)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import graphprune
from graphprune.testing import assert_prune_matches


class RecurrentTower(nn.Module):
    def __init__(self, kind: type, bidirectional: bool, **options):
        super().__init__()
        self.fc1 = nn.Linear(6, 48)
        self.rnn = kind(48, 16, num_layers=2, batch_first=True, bidirectional=bidirectional, **options)
        out = options.get("proj_size") or 16
        self.fc2 = nn.Linear(2 * out if bidirectional else out, 3)

    def forward(self, x):
        return self.fc2(self.rnn(self.fc1(x))[0])


class FinalStates(nn.Module):
    """Reads the last layer's hidden state and the first layer's cell state (time first)."""

    def __init__(self):
        super().__init__()
        self.rnn, self.fc = nn.LSTM(8, 16, num_layers=2), nn.Linear(16, 3)

    def forward(self, x):
        _, (h, c) = self.rnn(x)
        return self.fc(h[-1] + c[0])


class CellLoop(nn.Module):
    def __init__(self, kind: type):
        super().__init__()
        self.cell, self.fc = kind(8, 16), nn.Linear(16, 3)

    def forward(self, x):
        state = None
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)
        return self.fc(state[0] if isinstance(state, tuple) else state)


class GivenState(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn, self.fc = nn.LSTM(8, 16), nn.Linear(16, 3)

    def forward(self, x, h, c):
        return self.fc(self.rnn(x, (h, c))[0])


X = torch.randn(2, 7, 6)
CASES = [(nn.LSTM, True), (nn.LSTM, False), (nn.GRU, True), (nn.GRU, False), (nn.RNN, True)]


def _group_of(groups, fqn: str, dim: int):
    return next(g for g in groups if any(m.fqn == fqn and m.dim == dim for m in g.members))


@pytest.mark.parametrize("kind,bidirectional", CASES)
def test_input_features_couple_to_first_layer_input_weights(kind, bidirectional):
    groups = graphprune.find_groups(RecurrentTower(kind, bidirectional).eval(), X)
    group = _group_of(groups, "fc1.weight", 0)
    names = {m.fqn for m in group.members}
    assert group.frozen is None and group.width == 48
    assert "rnn.weight_ih_l0" in names and ("rnn.weight_ih_l0_reverse" in names) == bidirectional
    assert "rnn.weight_ih_l1" not in names


@pytest.mark.parametrize("kind,bidirectional", CASES)
def test_hidden_units_couple_every_layer_direction_gate_and_reader(kind, bidirectional):
    group = _group_of(graphprune.find_groups(RecurrentTower(kind, bidirectional).eval(), X), "rnn.weight_hh_l0", 1)
    gates = {nn.LSTM: 4, nn.GRU: 3, nn.RNN: 1}[kind]
    assert group.frozen is None and group.width == 16
    dirs = ("", "_reverse") if bidirectional else ("",)
    for layer in (0, 1):
        for d in dirs:
            rows = next(m for m in group.members if m.fqn == f"rnn.weight_ih_l{layer}{d}" and m.dim == 0)
            assert rows.indices.shape == (16, gates)  # unit j owns row j of every gate
            assert rows.indices[3].tolist() == [3 + 16 * k for k in range(gates)]
    reads = next(m for m in group.members if m.fqn == "fc2.weight")
    assert reads.indices[3].tolist() == ([3, 19] if bidirectional else [3])


@pytest.mark.parametrize("kind,bidirectional", CASES)
def test_shrink_and_oracle(kind, bidirectional):
    model = RecurrentTower(kind, bidirectional).eval()
    small = graphprune.shrink(model, 0.3, example_inputs=X, tolerance=0.05)
    assert small.rnn.input_size == small.fc1.out_features
    assert small.rnn.hidden_size == small.rnn.weight_hh_l1.shape[1] < 16
    longer = torch.randn(5, 11, 6)  # the default zero states follow hidden_size at any batch and length
    assert small(longer).shape == model(longer).shape
    assert assert_prune_matches(model, X).groups_checked == 2


def test_final_states_read_after_the_sequence_couple_too():
    model, x = FinalStates().eval(), torch.randn(7, 2, 8)
    assert assert_prune_matches(model, x).groups_checked == 1
    small = graphprune.shrink(model, 0.3, example_inputs=x, tolerance=0.05)
    assert small.rnn.hidden_size == small.fc.in_features < 16


@pytest.mark.parametrize("kind", [nn.LSTMCell, nn.GRUCell, nn.RNNCell])
def test_cells_stepped_in_a_loop_prune_their_hidden_units(kind):
    model, x = CellLoop(kind).eval(), torch.randn(2, 5, 8)
    assert assert_prune_matches(model, x).groups_checked == 1
    small = graphprune.shrink(model, 0.3, example_inputs=x, tolerance=0.05)
    assert small.cell.hidden_size == small.cell.weight_hh.shape[1] == small.fc.in_features < 16
    assert small(torch.randn(3, 4, 8)).shape == (3, 3)


class ProjectedStates(nn.Module):
    """An LSTM with proj_size whose final hidden state (projected) and cell state are both read."""

    def __init__(self):
        super().__init__()
        self.rnn = nn.LSTM(8, 16, num_layers=2, proj_size=6, bidirectional=True)
        self.fc, self.fc_cell = nn.Linear(12, 3), nn.Linear(16, 3)

    def forward(self, x):
        y, (h, c) = self.rnn(x)
        return self.fc(y[-1]) + self.fc_cell(c[-1]) + self.fc(torch.cat([h[-1], h[-2]], -1))


@pytest.mark.parametrize("bidirectional", [True, False])
def test_a_projected_lstm_prunes_its_cell_units_and_its_projection_apart(bidirectional):
    model = RecurrentTower(nn.LSTM, bidirectional, proj_size=6).eval()
    groups = graphprune.find_groups(model, X)
    cell, emitted = _group_of(groups, "rnn.weight_hr_l0", 1), _group_of(groups, "rnn.weight_hr_l0", 0)
    assert cell is not emitted and cell.frozen is None and emitted.frozen is None
    assert (cell.width, emitted.width) == (16, 6)
    assert {m.fqn for m in emitted.members} >= {"rnn.weight_hh_l1", "rnn.weight_ih_l1", "fc2.weight"}
    assert assert_prune_matches(model, X).groups_checked == 3
    small = graphprune.shrink(model, 0.3, example_inputs=X, tolerance=0.05)
    assert (small.rnn.hidden_size, small.rnn.proj_size) == tuple(small.rnn.weight_hr_l0.shape[::-1])
    assert small.rnn.proj_size * (2 if bidirectional else 1) == small.fc2.in_features
    assert small(torch.randn(3, 5, 6)).shape == (3, 5, 3)


def test_a_projected_lstm_couples_its_final_hidden_and_cell_states_to_their_own_units():
    model, x = ProjectedStates().eval(), torch.randn(7, 2, 8)
    assert assert_prune_matches(model, x).groups_checked == 2
    small = graphprune.shrink(model, 0.3, example_inputs=x, tolerance=0.1)
    assert small.rnn.hidden_size == small.fc_cell.in_features and 2 * small.rnn.proj_size == small.fc.in_features


def test_states_the_caller_passes_keep_the_hidden_size():
    inputs = (torch.randn(7, 2, 8), torch.zeros(1, 2, 16), torch.zeros(1, 2, 16))
    group = _group_of(graphprune.find_groups(GivenState().eval(), inputs), "rnn.weight_hh_l0", 1)
    assert group.frozen.startswith("model input")


class Seq2Seq(nn.Module):
    """The decoder starts from the encoder's final states: both lose the same hidden units."""

    def __init__(self):
        super().__init__()
        self.enc = nn.LSTM(8, 16, num_layers=2, batch_first=True)
        self.dec = nn.LSTM(5, 16, num_layers=2, batch_first=True)
        self.fc = nn.Linear(16, 5)

    def forward(self, x, y):
        _, state = self.enc(x)
        return self.fc(self.dec(y, state)[0])


def test_a_decoder_started_from_the_encoder_states_couples_with_it():
    model, inputs = Seq2Seq().eval(), (torch.randn(2, 6, 8), torch.randn(2, 4, 5))
    group = _group_of(graphprune.find_groups(model, inputs), "enc.weight_hh_l0", 1)
    assert {m.fqn.split(".")[0] for m in group.members} == {"enc", "dec", "fc"}
    assert assert_prune_matches(model, inputs).groups_checked == 1
    small = graphprune.shrink(model, 0.3, example_inputs=inputs, tolerance=0.05)
    assert small.enc.hidden_size == small.dec.hidden_size == small.fc.in_features < 16
