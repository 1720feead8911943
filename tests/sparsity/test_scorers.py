"""Tests for graphprune/sparsity/scorers.py: Wanda's score is |W| times the input norm read by
calibrate, and it keeps an input that magnitude would cut because its weights are small."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import graphprune
from graphprune.sparsity import MaskContext, layout_of
from graphprune.sparsity.scorers import input_norm_like, wanda

from .models import Mixed


def _loud_input_data() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    scale = torch.ones(16)
    scale[3] = 100.0  # one input channel carries large activations (an LLM's outlier feature)
    return [torch.randn(64, 16, generator=g) * scale for _ in range(4)]


def test_wanda_keeps_a_loud_input_that_magnitude_cuts() -> None:
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Linear(16, 8, bias=False))
    with torch.no_grad():
        layer[0].weight[:, 3] = 0.01  # small weights on the loud input (the others are up to 0.25)
    data = _loud_input_data()
    errors = {}
    for scorer in ("magnitude", "wanda"):
        m = graphprune.sparsify_(copy.deepcopy(layer), 0.5, scorer=scorer, calibration=data, head=True)
        with torch.no_grad():
            errors[scorer] = sum(float((m(x) - layer(x)).square().sum()) for x in data)
        kept = m[0].parametrizations.weight[0].mask[:, 3]
        assert kept.all() if scorer == "wanda" else not kept.any()
    assert errors["wanda"] < 0.5 * errors["magnitude"]


def test_wanda_score_is_weight_times_input_norm() -> None:
    model = Mixed().eval()
    stats = graphprune.calibrate(model, None, Mixed.data(), modules={"fc": -1, "grouped": 1})
    x = torch.relu(model.grouped(torch.relu(model.conv(torch.cat(Mixed.data())))))
    feats = model.norm(model.up(x)).mean((2, 3))
    norm = feats.detach().double().square().sum(0).sqrt()
    ctx = MaskContext("fc", model.fc, model.fc.weight.detach().double(), layout_of(model.fc), stats.inputs["fc"])
    torch.testing.assert_close(wanda(ctx), model.fc.weight.detach().double().abs() * norm[None, :])
    # a grouped conv's weight row o reads the input channels of its own group
    g = model.grouped
    placed = input_norm_like(g.weight, layout_of(g), torch.arange(16.0))
    assert placed.shape == (16, 8, 1, 1)
    assert placed[0, :, 0, 0].tolist() == list(range(8)) and placed[15, :, 0, 0].tolist() == list(range(8, 16))


def test_custom_criterion_is_called_with_the_masked_weight() -> None:
    seen = []

    def rows_first(ctx):
        seen.append(ctx.fqn)
        return torch.arange(ctx.weight.numel(), dtype=torch.float64).reshape(ctx.weight.shape)
    m = graphprune.sparsify_(nn.Sequential(nn.Linear(4, 2)), 0.5, scorer=rows_first, head=True)
    assert seen == ["0"] and m[0].parametrizations.weight[0].mask.tolist() == [[False] * 4, [True] * 4]
    with pytest.raises(graphprune.ConfigError, match="shaped like the weight"):
        graphprune.sparsify_(nn.Sequential(nn.Linear(4, 2)), 0.5, scorer=lambda ctx: torch.ones(3), head=True)
