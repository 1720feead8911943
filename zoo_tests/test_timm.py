"""Zoo tier: ``shrink(m, 0.5)`` on the smallest model of every timm family (see families.py)."""
from __future__ import annotations

import pytest
import timm
import torch

import graphprune
from graphprune.inputs import default_inputs, output_shapes, run_model
from graphprune.testing import assert_prune_matches

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
    args, kwargs = default_inputs(model)
    before = output_shapes(run_model(model, (args, kwargs)))
    small, report = graphprune.shrink(model, RATIO, return_report=True)
    n_before, n_after = graphprune.count_params(model), graphprune.count_params(small)
    zoo_case.update(params_before=n_before, params_after=n_after, ratio=1 - n_after / n_before)
    assert type(small) is type(model)
    assert output_shapes(run_model(small.eval(), (args, kwargs))) == before
    assert (report.params_before, report.params_after) == (n_before, n_after)
    assert abs(zoo_case["ratio"] - RATIO) <= TOLERANCE, f"removed {zoo_case['ratio']:.4f} of the parameters"
    zoo_case["oracle"] = oracle(model)


def oracle(model: torch.nn.Module) -> str:
    """Zero what pruning removes, prune, compare outputs: a mismatch (a silently wrong model) fails
    the case. An oracle plan whose forward breaks is loud, not silent, so it is only noted."""
    try:
        result = assert_prune_matches(model)
    except graphprune.GraphPruneError as err:
        return f"n/a: {type(err).__name__}"
    except AssertionError as err:
        if "no group of this model can be checked" in str(err):
            return "n/a: no exact group"
        raise AssertionError(f"oracle: {err}") from err
    return f"exact ({result.groups_checked} groups)"
