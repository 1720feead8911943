"""Zoo tier: ``shrink(m, 0.5)`` on the smallest model of every timm family (see families.py)."""
from __future__ import annotations

import pytest
import timm
import torch

import graphprune
from graphprune.inputs import output_shapes, run_model

from .exclusions import EXCLUDED
from .families import SMOKE_FAMILIES, timm_cases

RATIO, TOLERANCE = 0.5, 0.01


def _param(case: dict):
    smoke = case["family"] in SMOKE_FAMILIES
    marks = [pytest.mark.timm, pytest.mark.smoke if smoke else pytest.mark.slow,
             pytest.mark.timeout(120 if smoke else 300)]
    return pytest.param(case["family"], case["model"], marks=marks, id=case["model"])


@pytest.mark.parametrize("family,name", [_param(c) for c in timm_cases()])
def test_shrink_half(family: str, name: str, zoo_case: dict) -> None:
    zoo_case.update(family=family, model=name)
    if name in EXCLUDED:
        pytest.skip(EXCLUDED[name])
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = timm.create_model(name).eval()
    args, kwargs = graphprune.inputs.default_inputs(model)
    before = output_shapes(run_model(model, (args, kwargs)))
    small, report = graphprune.shrink(model, RATIO, return_report=True)
    n_before, n_after = graphprune.count_params(model), graphprune.count_params(small)
    zoo_case.update(params_before=n_before, params_after=n_after, ratio=1 - n_after / n_before)
    assert type(small) is type(model)
    assert output_shapes(run_model(small.eval(), (args, kwargs))) == before
    assert (report.params_before, report.params_after) == (n_before, n_after)
    assert abs(zoo_case["ratio"] - RATIO) <= TOLERANCE, f"removed {zoo_case['ratio']:.4f} of the parameters"
