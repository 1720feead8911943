"""Tests for graphprune/report.py."""
from __future__ import annotations

import torch
from torch import nn

from graphprune.report import count_macs


class ClassToken(nn.Module):
    """A parameter's view passed into a submodule (timm's ``cls_token.expand(B, -1, -1)``)."""

    def __init__(self):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 4))
        self.blk = nn.Linear(4, 3)

    def forward(self, x):
        return self.blk(self.cls_token.expand(x.shape[0], -1, -1)) + x.sum()


def test_count_macs_with_a_parameter_view_as_module_input():
    model = ClassToken()
    assert count_macs(model, ((torch.zeros(2, 5),), {})) == 2 * 4 * 3
    assert model.cls_token.requires_grad  # flags restored


def test_report_lists_every_change_up_to_max_rows_then_says_how_many_more() -> None:
    import json

    import timm

    import graphprune

    _, report = graphprune.shrink(timm.create_model("test_resnet").eval(), 0.3, return_report=True)
    n = len(report.pruned)
    assert n > 3
    short = report.format(max_rows=3)
    assert short.count("  pruned: ") == 3 and f"... {n - 3} more pruned" in short
    full = report.format(max_rows=None)
    assert all(f"  pruned: {line}" in full for line in report.pruned) and "more pruned" not in full
    data = json.loads(report.to_json())
    assert data["pruned"] == list(report.pruned) and data["params_after"] == report.params_after
    assert "plan" not in data
