"""Tests for graphprune/groups.py."""
from __future__ import annotations

import torch
from torch import nn

import graphprune


class SharedUnderTwoNames(nn.Module):
    """coat style: one MLP registered as ``mlp2`` and ``mlp3`` and applied to two inputs."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.mlp2 = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 8))
        self.mlp3 = self.mlp2
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        h = self.inp(x)
        return self.out(self.mlp2(h) + self.mlp3(2 * h))


X = torch.randn(3, 6)


def test_a_tensor_under_two_names_is_one_member():
    for g in graphprune.find_groups(SharedUnderTwoNames(), X):
        dims = [(m.fqn, m.dim) for m in g.members]
        assert len(dims) == len(set(dims)), g


def test_shared_module_ratio_is_counted_once():
    model = SharedUnderTwoNames().eval()
    small = graphprune.shrink(model, 0.3, example_inputs=X)
    ratio = 1 - graphprune.count_params(small) / graphprune.count_params(model)
    assert abs(ratio - 0.3) <= 0.01
    assert small.mlp2 is small.mlp3 and small(X).shape == (3, 2)


class TiedOutsideForward(nn.Module):
    """``aux.weight`` is ``body_a.weight``, but only ``embed()`` runs ``aux``: its bias is not in the
    graph, so slicing the tie would leave ``aux`` half cut."""

    def __init__(self):
        super().__init__()
        self.body_a, self.body_b, self.aux = nn.Linear(8, 32), nn.Linear(32, 8), nn.Linear(8, 32)
        self.aux.weight = self.body_a.weight

    def forward(self, x):
        return self.body_b(torch.relu(self.body_a(x)))

    def embed(self, x):
        return self.aux(x)


def test_a_tie_to_a_module_the_forward_never_runs_is_frozen() -> None:
    groups = graphprune.find_groups(TiedOutsideForward(), torch.randn(2, 8))
    (hidden,) = [g for g in groups if any(m.fqn == "body_b.weight" and m.dim == 1 for m in g.members)]
    assert hidden.frozen and "tied to aux.weight, whose module aux the traced forward never runs" in hidden.frozen
