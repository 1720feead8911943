"""Layout rules: dims that expand and repeat make, checked by the oracle."""
from __future__ import annotations

import torch
from torch import nn

import graphprune
from graphprune.testing import assert_prune_matches

X = torch.randn(2, 5, 8)


class Tiled(nn.Module):
    """``h.repeat(1, 1, 3)``: each hidden unit is read three times, at j, j + 6 and j + 12."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 6), nn.Linear(18, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)).repeat(1, 1, 3))


class Broadcast(nn.Module):
    """A per-unit gate added to a one-row bias grown to the units' width: by ``h.size(-1)``, which
    follows pruning, or by a number, which does not."""

    def __init__(self, written: str):
        super().__init__()
        self.written = written
        self.fc1, self.fc2 = nn.Linear(8, 6), nn.Linear(6, 3)
        self.bias = nn.Parameter(torch.randn(1))

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        if self.written == "shape":
            return self.fc2(h * self.bias.expand(h.size(-1)))
        return self.fc2(h * self.bias.expand(6))


def _fc1_group(model: nn.Module):
    groups = graphprune.find_groups(model, X)
    return next(g for g in groups if any(m.fqn == "fc1.weight" for m in g.members))


def test_a_repeated_dim_removes_every_copy_of_a_unit() -> None:
    group = _fc1_group(Tiled())
    assert group.prunable and group.width == 6
    fc2 = next(m for m in group.members if m.fqn == "fc2.weight")
    assert fc2.indices.tolist() == [[j, j + 6, j + 12] for j in range(6)]
    assert assert_prune_matches(Tiled().eval(), X, fraction=0.5).groups_checked == 1
    small = graphprune.shrink(Tiled().eval(), 0.3, example_inputs=X, tolerance=0.2)
    assert small.fc2.in_features == 3 * small.fc1.out_features < 18


def test_a_dim_grown_from_one_follows_a_size_read_from_a_shape() -> None:
    assert _fc1_group(Broadcast("shape")).prunable
    assert assert_prune_matches(Broadcast("shape").eval(), X, fraction=0.5).groups_checked == 1


def test_a_dim_grown_to_a_written_number_keeps_its_units() -> None:
    group = _fc1_group(Broadcast("number"))
    assert not group.prunable and "not handled by rule aten.expand" in group.frozen
