"""Property tests over the toy-model table: oracle, shrink, plan round trip, golden group dumps."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

import graphprune
from graphprune.testing import assert_prune_matches

from .models import TOYS, Toy

GOLDEN = Path(__file__).parent / "golden"


@pytest.fixture(params=TOYS, ids=[t.name for t in TOYS])
def toy(request) -> Toy:
    return request.param


def test_oracle_zeroed_units_prune_exactly(toy: Toy) -> None:
    result = assert_prune_matches(toy.build().eval(), toy.inputs())
    assert result.groups_checked >= 1 and result.params_removed >= 1


def test_shrink_keeps_class_forward_and_shape(toy: Toy) -> None:
    model, x = toy.build().eval(), toy.inputs()
    before = graphprune.count_params(model)
    # toys have few, coarse units: the default +-1 point tolerance is for real models
    small, report = graphprune.shrink(model, 0.3, example_inputs=x, return_report=True, tolerance=0.5)
    assert type(small) is type(model)
    assert small(x).shape == model(x).shape
    assert graphprune.count_params(small) == report.params_after < before
    assert graphprune.count_params(model) == before, "the original model must be left untouched"


def test_plan_json_round_trip_reapplies_identically(toy: Toy) -> None:
    model, x = toy.build().eval(), toy.inputs()
    config = graphprune.ShrinkConfig(ratio=0.2, tolerance=0.5)
    plan = graphprune.make_plan(model, graphprune.find_groups(model, x), config)
    again = graphprune.Plan.from_json(plan.to_json())
    assert again == plan
    a = graphprune.apply_plan_(copy.deepcopy(model), plan, x)
    b = graphprune.apply_plan_(copy.deepcopy(model), again, x)
    torch.testing.assert_close(a(x), b(x), rtol=0, atol=0)
    assert graphprune.count_params(a) == plan.params_after


def test_group_dump_matches_golden(toy: Toy, update_golden: bool) -> None:
    groups = graphprune.find_groups(toy.build().eval(), toy.inputs())
    dump = str(groups) + "\n"
    path = GOLDEN / f"{toy.name}.txt"
    if update_golden:
        path.write_text(dump)
        pytest.skip(f"wrote {path.name}")
    assert path.exists(), f"no golden file {path}; create it with pytest --update-golden"
    assert dump == path.read_text(), f"group dump of {toy.name} changed; run pytest --update-golden if intended"
