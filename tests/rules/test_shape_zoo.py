"""Tests for graphprune/rules/shape.py: ``reshape_as`` / ``view_as`` couple the template's dims
(timm LeViT's ``self.bn(x.flatten(0, 1)).reshape_as(x)``)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import graphprune
from graphprune.testing import assert_prune_matches


class LinearNorm(nn.Module):
    def __init__(self, cin: int, cout: int, as_view: bool):
        super().__init__()
        self.linear, self.bn, self.as_view = nn.Linear(cin, cout, bias=False), nn.BatchNorm1d(cout), as_view

    def forward(self, x):
        x = self.linear(x)
        y = self.bn(x.flatten(0, 1))
        return y.view_as(x) if self.as_view else y.reshape_as(x)


def tower(as_view: bool) -> nn.Module:
    model = nn.Sequential(LinearNorm(8, 64, as_view), nn.GELU(), LinearNorm(64, 4, as_view))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm1d):  # non-trivial running stats so the oracle sees a difference
            m.running_mean.uniform_(-1, 1), m.running_var.uniform_(0.5, 2)
    return model.eval()


X = torch.randn(2, 5, 8)


@pytest.mark.parametrize("as_view", [False, True])
def test_template_dims_are_coupled(as_view):
    model = tower(as_view)
    (hidden,) = graphprune.find_groups(model, X).prunable
    assert hidden.width == 64
    small = graphprune.shrink(model, 0.3, example_inputs=X)
    assert small(X).shape == (2, 5, 4)
    assert abs(1 - graphprune.count_params(small) / graphprune.count_params(model) - 0.3) <= 0.01
    assert_prune_matches(model, X)
