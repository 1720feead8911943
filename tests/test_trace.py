"""Tests for graphprune/trace.py: no forward run, module state left as it was, meta-device models."""
from __future__ import annotations

import torch
from torch import nn

import graphprune
from graphprune.inputs import output_shapes, run_model
from tests.models import TOYS


class CachesInEval(nn.Module):
    """Caches a tensor derived from a parameter on its first eval forward (timm LeViT's attention
    biases): a trace must not leave export's fake tensor in the cache."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.bias = nn.Parameter(torch.randn(8))
        self.cache: dict[str, torch.Tensor] = {}
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if "b" not in self.cache:
            self.cache["b"] = self.bias * 2
        return {"out": self.fc(x) + self.cache["b"], "aux": [x.sum(-1)]}


def test_trace_leaves_module_state_as_it_was():
    model = CachesInEval().eval()
    traced = graphprune.trace(model, torch.randn(3, 6))
    assert model.cache == {} and model.calls == 0
    assert traced.output_shapes == tuple(output_shapes(run_model(model, traced.inputs))) == ((3, 8), (3,))


def test_meta_models_group_as_real_ones():
    for toy in TOYS[:6]:
        real = graphprune.find_groups(toy.build().eval(), toy.inputs())
        with torch.device("meta"):
            meta = toy.build().eval()
        inputs = toy.inputs().to("meta") if toy.inputs().is_floating_point() else toy.inputs()
        assert graphprune.find_groups(meta, inputs).to_json() == real.to_json(), toy.name
