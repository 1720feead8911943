"""Tests for graphprune/partial.py: pruning the submodules of a model that does not trace whole."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import graphprune

from .models import cbr


class Detector(nn.Module):
    """A traceable backbone and a head with data-dependent control flow (as a detector's box
    filtering): the whole model does not trace."""

    def __init__(self):
        super().__init__()
        self.backbone = nn.Sequential(cbr(3, 16), cbr(16, 32), cbr(32, 8))
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        scores = self.head(self.backbone(x)).amax((2, 3))
        keep = scores[scores.sum(1) > 0]  # data-dependent size
        return keep if keep.numel() else scores


X = torch.randn(2, 3, 8, 8)


def test_a_model_that_does_not_trace_names_the_line_and_the_submodules_that_do(capsys) -> None:
    with pytest.raises(graphprune.TraceError) as err:
        graphprune.find_groups(Detector(), X)
    message = str(err.value)
    assert "\n" not in message and "test_partial.py" in message and "'backbone'" in message
    assert "submodules=('backbone',)" in message
    assert "def forward" not in capsys.readouterr().err  # no graph dump


def test_submodules_prunes_the_backbone_and_the_model_still_runs() -> None:
    model = Detector().eval()
    small, report = graphprune.shrink(model, 0.4, example_inputs=X, submodules=("backbone",),
                                      return_report=True, tolerance=0.05)
    before, after = graphprune.count_params(model.backbone), graphprune.count_params(small.backbone)
    assert abs(1 - after / before - 0.4) <= 0.05
    assert small.backbone[2][0].out_channels == 8 and small.head.weight.shape == model.head.weight.shape
    assert small(X).shape[-1] == 4
    assert report.params_before == graphprune.count_params(model) and any(p.startswith("backbone: ") for p in report.pruned)
    assert graphprune.count_params(model.backbone) == before  # the original is untouched


def test_submodules_must_name_modules_the_forward_runs() -> None:
    with pytest.raises(graphprune.ConfigError, match="not a submodule"):
        graphprune.shrink(Detector(), 0.3, example_inputs=X, submodules=("neck",))
    with pytest.raises(graphprune.ConfigError, match="lies inside"):
        graphprune.shrink(Detector(), 0.3, example_inputs=X, submodules=("backbone", "backbone.0"))
    with pytest.raises(graphprune.ConfigError, match="calibration="):
        graphprune.shrink(Detector(), 0.3, example_inputs=X, submodules=("backbone",), calibration=[X])
    with pytest.raises(graphprune.ConfigError, match=r"recalibrate_bn=True with submodules=.*recalibrate_bn_\(small"):
        graphprune.shrink(Detector(), 0.3, example_inputs=X, submodules=("backbone",), recalibrate_bn=True)


def test_inplace_failure_restores_every_submodule() -> None:
    class Breaks(Detector):
        def forward(self, x):
            y = self.backbone(x)
            if y.shape[1] != 8 or self.backbone[1][0].out_channels != 32:
                raise RuntimeError("the head expects the backbone's original widths")
            return self.head(y).amax((2, 3))

    model = Breaks().eval()
    weight = model.backbone[1][0].weight
    with pytest.raises(graphprune.SurgeryError, match="no longer runs"):
        graphprune.shrink(model, 0.4, example_inputs=X, submodules=("backbone",), inplace=True, tolerance=0.05)
    assert model.backbone[1][0].weight is weight and model(X).shape == (2, 4)


class Body(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c, self.d = nn.Linear(8, 32), nn.Linear(32, 8), nn.Linear(8, 24), nn.Linear(24, 8)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))) + self.d(torch.relu(self.c(x)))


class TiedOutside(nn.Module):
    """``aux`` (outside the pruned body, run only by ``embed()``) holds ``body.a``'s weight."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body, self.aux, self.head = Body(), nn.Linear(8, 32), nn.Linear(8, 2)
        self.aux.weight = self.body.a.weight

    def forward(self, x):
        return self.head(self.body(x))

    def embed(self, x):
        return self.aux(x)


@pytest.mark.parametrize("inplace", [False, True])
def test_a_tensor_tied_outside_the_submodule_stays_whole(inplace: bool) -> None:
    model, x = TiedOutside().eval(), torch.randn(4, 8)
    with pytest.warns(UserWarning, match="body.a holds a tensor tied to a module outside 'body'; left unpruned"):
        small = graphprune.shrink(model, 0.2, submodules=("body",), example_inputs=x, tolerance=0.15, inplace=inplace)
    assert small.body.a.out_features == 32 and small.body.c.out_features < 24
    assert small.aux.weight is small.body.a.weight and small.embed(x).shape == (4, 32)


def test_the_report_holds_one_plan_that_re_applies_to_a_fresh_model(tmp_path) -> None:
    model = Detector().eval()
    small, report = graphprune.shrink(model, 0.4, example_inputs=X, submodules=("backbone",), return_report=True,
                                      tolerance=0.05)
    report.plan.to_json(str(tmp_path / "plan.json"))
    plan = graphprune.Plan.from_json(tmp_path / "plan.json")
    assert plan.config["submodules"] == ["backbone"] and all(f.startswith("backbone.") for f in plan.keep)
    fresh = Detector().eval()
    fresh.load_state_dict(model.state_dict())
    with pytest.warns(UserWarning, match="not checked against the model's coupled units, since the model does not trace"):
        again = graphprune.apply_plan_(fresh, plan, X)
    assert torch.equal(again(X), small(X))
    assert [p.shape for p in again.parameters()] == [p.shape for p in small.parameters()]
    with pytest.raises(graphprune.PlanError, match="made for another model"):
        graphprune.apply_plan_(nn.Sequential(nn.Linear(2, 2)), plan)
