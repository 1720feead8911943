"""Tests for graphprune/rules/norm.py: batch norm exact, layer norm inexact, group norm by groups."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import graphprune
from graphprune.testing import assert_prune_matches

from ..models import GroupNormNet, Residual


def test_batch_norm_channels_are_exact_and_carry_running_stats() -> None:
    groups = graphprune.find_groups(Residual(), torch.randn(1, 3, 8, 8))
    stem = next(g for g in groups.prunable if any(m.fqn == "stem.1.running_var" for m in g.members))
    assert stem.inexact is None
    small = graphprune.shrink(Residual(), 0.3, example_inputs=torch.randn(1, 3, 8, 8), tolerance=0.2)
    assert small.stem[1].running_var.shape[0] == small.stem[1].num_features == small.stem[0].out_channels


def test_layer_norm_dim_is_prunable_but_inexact() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2))
    (group,) = graphprune.find_groups(model, torch.randn(3, 4)).prunable
    assert "layer/RMS norm" in group.inexact
    small = graphprune.shrink(model, 0.3, example_inputs=torch.randn(3, 4), tolerance=0.2)
    assert small[1].normalized_shape == (small[0].out_features,)


def test_group_norm_removes_whole_groups() -> None:
    x = torch.randn(2, 3, 8, 8)
    (group,) = graphprune.find_groups(GroupNormNet(), x).prunable
    assert group.unit == "group" and group.width == 4 and group.inexact is None
    small = graphprune.shrink(GroupNormNet(), 0.3, example_inputs=x, tolerance=0.2)
    assert small.gn.num_groups * 4 == small.gn.num_channels == small.c1.out_channels
    assert_prune_matches(GroupNormNet(), x)


@pytest.mark.parametrize("dim, inexact", [(0, False), (None, True)])
def test_weight_norm_over_the_whole_weight_is_inexact_for_its_inputs(dim, inexact) -> None:
    """``weight_norm(m, dim=None)`` normalises all of v at once (torch passes dim=-1 for that), so
    dropping input columns rescales the kept ones; per output row (dim=0) it is inexact too, since
    each row's norm runs over the inputs. Only the output side of dim=0 is exact."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the old API, which HiFi-GAN-style code still uses
        reader = torch.nn.utils.weight_norm(nn.Linear(16, 4), dim=dim)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), reader).eval()
    (group,) = graphprune.find_groups(model, torch.randn(3, 8)).prunable
    assert group.width == 16 and "weight norm normalises over this dim" in group.inexact
    writer = torch.nn.utils.weight_norm(nn.Linear(8, 16), dim=dim)
    model = nn.Sequential(writer, nn.ReLU(), nn.Linear(16, 4)).eval()
    (group,) = graphprune.find_groups(model, torch.randn(3, 8)).prunable
    assert (group.inexact is not None) is inexact, group.inexact


def test_an_old_weight_norm_model_prunes_before_any_forward() -> None:
    """A freshly built old-API weight_norm module holds ``weight`` with autograd history, which
    ``copy.deepcopy`` refuses; the copy graphprune prunes holds it detached instead."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.manual_seed(0)
        model = nn.Sequential(torch.nn.utils.weight_norm(nn.Linear(8, 16)), nn.ReLU(), nn.Linear(16, 4)).eval()
    assert model[0].weight.grad_fn is not None
    x = torch.randn(4, 8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # export's note on the attribute the hook assigns
        small = graphprune.shrink(model, 0.3, example_inputs=x, tolerance=0.2)
    assert small[0].weight_v.shape[0] == small[0].weight_g.shape[0] == small[2].in_features < 16
    assert model[0].weight_v.shape[0] == 16 and small(x).shape == (4, 4)
