"""Plan stage: ratio accuracy, reachability, round_to, ignore, MACs target, JSON round trip."""
from __future__ import annotations

import pytest
import timm
import torch

import graphprune
from graphprune.errors import PlanError


@pytest.fixture(scope="module")
def resnet():
    model = timm.create_model("resnet18").eval()
    return model, graphprune.find_groups(model)


@pytest.mark.parametrize("ratio", [0.1, 0.3, 0.5, 0.7])
def test_achieved_ratio_within_one_point(resnet, ratio: float) -> None:
    model, groups = resnet
    plan = graphprune.make_plan(model, groups, graphprune.ShrinkConfig(ratio=ratio))
    assert abs(plan.ratio - ratio) <= 0.01
    pruned = graphprune.apply_plan_(__import__("copy").deepcopy(model), plan, groups.traced.inputs)
    assert graphprune.count_params(pruned) == plan.params_after


def test_zero_ratio_is_an_empty_plan(resnet) -> None:
    model, groups = resnet
    plan = graphprune.make_plan(model, groups, graphprune.ShrinkConfig(ratio=0.0))
    assert plan.keep == {} and plan.params_after == plan.params_before


def test_round_to_keeps_multiples(resnet) -> None:
    model, groups = resnet
    plan = graphprune.make_plan(model, groups, graphprune.ShrinkConfig(ratio=0.4, round_to=8))
    widths = {len(ix) for dims in plan.keep.values() for d, ix in dims.items()
              if not any(f"conv1.weight" == f and d == 1 for f in plan.keep)}
    assert widths and all(w % 8 == 0 for w in widths), widths


def test_ignore_by_fqn_and_by_type(resnet) -> None:
    model, groups = resnet
    plan = graphprune.make_plan(model, groups, graphprune.ShrinkConfig(ratio=0.15, ignore=("layer4",)))
    assert not any(f.startswith("layer4.0.conv1.") for f in plan.keep)


class Keep(torch.nn.Linear):
    """A module class a user wants left alone."""


def test_ignore_by_type_freezes_groups_touching_that_type() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.ReLU(), torch.nn.Linear(16, 16), torch.nn.ReLU(),
                                Keep(16, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2))
    groups = graphprune.find_groups(model, torch.randn(2, 4))
    plan = graphprune.make_plan(model, groups, graphprune.ShrinkConfig(ratio=0.2, ignore=(Keep,), tolerance=0.1))
    assert set(plan.keep) == {"0.weight", "0.bias", "2.weight"} and list(plan.keep["2.weight"]) == [1]


def test_unreachable_ratio_raises_with_largest_reachable(resnet) -> None:
    model, groups = resnet
    with pytest.raises(PlanError, match=r"largest reachable ratio is 0\.[0-8]\d+ .*min_keep"):
        graphprune.make_plan(model, groups, graphprune.ShrinkConfig(ratio=0.95, min_keep=256))


def test_macs_target_removes_macs_not_params(resnet) -> None:
    model, groups = resnet
    small = graphprune.shrink(model, 0.5, target="macs")
    inputs = groups.traced.inputs
    macs = graphprune.count_macs(small, inputs) / graphprune.count_macs(model, inputs)
    assert abs(macs - 0.5) <= 0.05, macs


def test_plan_json_file_round_trip(resnet, tmp_path) -> None:
    model, groups = resnet
    plan = graphprune.make_plan(model, groups, graphprune.ShrinkConfig(ratio=0.3))
    path = tmp_path / "plan.json"
    plan.to_json(str(path))
    assert graphprune.Plan.from_json(str(path)) == plan


def test_config_round_trip_and_unknown_keys() -> None:
    config = graphprune.ShrinkConfig(ratio=0.25, ignore=(torch.nn.Linear, "head"), round_to=4)
    assert graphprune.ShrinkConfig.from_dict(config.to_dict()) == config
    with pytest.raises(graphprune.ConfigError, match="unknown config key 'ratoi' \\(did you mean 'ratio'\\?\\)"):
        graphprune.ShrinkConfig.from_dict({"ratio": 0.2, "ratoi": 0.3})


@pytest.mark.parametrize("scorer", ["l1", "l2", "random", lambda g, t: __import__("numpy").arange(g.width) + 1.0])
def test_scorers_change_which_units_go(resnet, scorer) -> None:
    model, groups = resnet
    plan = graphprune.make_plan(model, groups, graphprune.ShrinkConfig(ratio=0.3), scorer=scorer)
    assert abs(plan.ratio - 0.3) <= 0.01
    if callable(scorer):  # increasing scores: the first units of every group are the ones removed
        assert all(units == list(range(len(units))) for units in plan.removed.values())


def _fractions(plan, groups) -> dict[int, float]:
    width = {g.id: g.width for g in groups}
    return {gid: len(units) / width[gid] for gid, units in plan.removed.items()}


def test_local_scope_removes_the_same_fraction_of_every_group(resnet) -> None:
    model, groups = resnet
    plan = graphprune.make_plan(model, groups, graphprune.ShrinkConfig(ratio=0.3, scope="local"))
    fractions = _fractions(plan, groups)
    assert len(fractions) == len(groups.prunable) and abs(plan.ratio - 0.3) <= 0.01
    widths = {g.id: g.width for g in groups}
    # equal to within one unit of each group (the search stops inside a round of the merged ranking)
    assert max(fractions.values()) - min(fractions.values()) <= 1.5 / min(widths[i] for i in fractions)


def test_global_scope_is_uneven_and_max_fraction_caps_it(resnet) -> None:
    model, groups = resnet
    config = graphprune.ShrinkConfig(ratio=0.5, scope="global")
    free = _fractions(graphprune.make_plan(model, groups, config), groups)
    capped = _fractions(graphprune.make_plan(model, groups, __import__("dataclasses").replace(config, max_fraction=0.37)),
                        groups)
    assert max(free.values()) > 0.37 and max(capped.values()) <= 0.37


def test_given_scores_decide_and_are_not_recomputed(resnet) -> None:
    model, groups = resnet
    ones = graphprune.score(model, groups, lambda ctx: __import__("numpy").arange(ctx.group.width, 0, -1.0))
    plan = graphprune.make_plan(model, groups, graphprune.ShrinkConfig(ratio=0.3), scores=ones)
    # decreasing scores: the last units of every group are the ones removed
    width = {g.id: g.width for g in groups}
    assert all(units == list(range(width[gid] - len(units), width[gid])) for gid, units in plan.removed.items())


@pytest.mark.parametrize("normalize", ["mean", "max", "sum", "none"])
def test_normalisations_all_reach_the_ratio(resnet, normalize: str) -> None:
    model, groups = resnet
    plan = graphprune.make_plan(model, groups, graphprune.ShrinkConfig(ratio=0.3, normalize=normalize))
    assert abs(plan.ratio - 0.3) <= 0.01


@pytest.mark.parametrize("bad", [dict(scope="layer"), dict(max_fraction=0.0), dict(normalize="z"),
                                 dict(compensate="median"), dict(max_batches=0)])
def test_allocation_options_are_validated(bad) -> None:
    with pytest.raises(graphprune.ConfigError, match=next(iter(bad))):
        graphprune.ShrinkConfig(ratio=0.3, **bad)


def test_auto_scope_is_local_for_weight_criteria_and_global_for_data_aware_ones(resnet) -> None:
    model, groups = resnet
    config = graphprune.ShrinkConfig(ratio=0.3)
    plan = graphprune.make_plan(model, groups, config)
    assert (plan.config["scope"], plan.config["normalize"]) == ("local", "mean")
    fake = graphprune.Scores("activation", graphprune.score(model, groups, "l2").raw, needs=("inputs",))
    aware = graphprune.make_plan(model, groups, config, scores=fake).config
    assert (aware["scope"], aware["normalize"]) == ("global", "none")


def test_a_group_the_global_ranking_empties_is_reported(resnet) -> None:
    """Scores that make one wide group look worthless empty it under a global ranking: a warning
    names it and the fix; max_fraction (which caps it) and a local scope give none."""
    import dataclasses
    import warnings

    import numpy as np

    model, groups = resnet
    victim = min((g for g in groups.prunable if g.width >= 8), key=lambda g: g.width)  # cheap: emptied first
    scores = graphprune.Scores("x", {g.id: np.full(g.width, 1e-6 if g is victim else 1.0) + np.arange(g.width) * 1e-9
                                     for g in groups.prunable}, needs=("inputs",))
    config = graphprune.ShrinkConfig(ratio=0.05, scope="global")
    with pytest.warns(UserWarning, match=rf"{victim.module}.*\(1 of {victim.width} .*max_fraction="):
        plan = graphprune.make_plan(model, groups, config, scores=scores)
    assert len(plan.removed[victim.id]) == victim.width - 1
    for quiet in (dataclasses.replace(config, max_fraction=0.9), dataclasses.replace(config, scope="local")):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            graphprune.make_plan(model, groups, quiet, scores=scores)
