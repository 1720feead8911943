"""Tests for graphprune/schedule/iterative.py and rounds.py: shrink(..., steps=N) reaches each
round's share of the ORIGINAL model, re-scores between rounds, composes one re-appliable plan, and
rolls an in-place model back when a later round fails."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import graphprune
from graphprune.errors import ConfigError, SurgeryError
from graphprune.schedule import iterative

from ..calib_models import Mlp
from ..models import TOYS


class Deep(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 48),
                                  nn.ReLU())
        self.head = nn.Linear(48, 4)

    def forward(self, x):
        return self.head(self.body(x))


X = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))


def _data(n=3):
    g = torch.Generator().manual_seed(2)
    return [torch.randn(32, 16, generator=g) for _ in range(n)]


@pytest.mark.parametrize("target", ["params", "macs"])
def test_each_round_reaches_its_share_of_the_original(target) -> None:
    model = Deep()
    small, report = graphprune.shrink(model, 0.5, steps=4, example_inputs=X, target=target, return_report=True)
    got = [r.params_ratio if target == "params" else r.macs_ratio for r in report.rounds]
    assert [r.step for r in report.rounds] == [1, 2, 3, 4]
    for k, ratio in enumerate(got, 1):
        assert abs(ratio - 0.5 * k / 4) <= 0.5 / 4 / 2 + 1e-9, got  # half a round of slack between rounds
    assert abs(got[-1] - 0.5) <= 0.01 and got == sorted(got)
    assert "rounds (of the original): 1: -" in str(report) and "round 4:" in "\n".join(report.pruned)
    assert sum(p.numel() for p in model.parameters()) == report.params_before  # the original is untouched


def test_rounds_rescore_and_recalibrate_on_the_pruned_model() -> None:
    model = Deep()
    batches = (x for x in _data())  # a generator: kept, so every round can read it again
    _, report = graphprune.shrink(model, 0.4, steps=3, example_inputs=X, scorer="activation",
                                  calibration=batches, compensate="mean", return_report=True)
    assert report.calibration_batches == 3 * 3 and report.criterion == "activation"
    rounds = [r.plan for r in report.rounds]
    assert len({len(p.keep["body.2.weight"][0]) for p in rounds if "body.2.weight" in p.keep}) > 1


@pytest.mark.parametrize("inplace", [False, True])
def test_later_rounds_calibrate_against_the_original_model(monkeypatch, inplace: bool) -> None:
    """Round 1 needs no reference (the model is the original); later ones get the original (a copy
    of it when pruning in place), with fc outputs lined up through the rounds' kept indices."""
    import graphprune.api as api

    seen, calibrate = [], api.calibrate

    def spy(model, groups, batches, **kw):
        widths = {n: m.out_features for n, m in model.named_modules() if isinstance(m, nn.Linear)}
        seen.append((model, kw.get("reference"), widths))
        return calibrate(model, groups, batches, **kw)

    monkeypatch.setattr(api, "calibrate", spy)
    model = Deep()
    before = copy.deepcopy(model)
    small = graphprune.shrink(model, 0.4, steps=3, example_inputs=X, scorer="activation", calibration=_data(),
                              inplace=inplace)
    assert len(seen) == 3 and seen[0][1] is None
    for current, ref, widths in seen[1:]:
        assert current is small and ref.model is not small
        assert all(torch.equal(a, b) for a, b in zip(ref.model.state_dict().values(), before.state_dict().values()))
        for fqn, rows in ref.rows.items():  # the original's output rows each module then still wrote
            assert len(rows) == widths[fqn]
    assert any(len(rows) < before.get_submodule(f).out_features for f, rows in seen[2][1].rows.items())


@pytest.mark.parametrize("options", [dict(scorer="activation", round_reference="current"),
                                     dict(scorer="hessian"), dict(scorer="l2", compensate="lstsq")])
def test_no_reference_where_nothing_reads_it(monkeypatch, options) -> None:
    """round_reference='current', or a criterion that reads no drift (compensation does not either):
    the original model is not run beside the pruned one."""
    import graphprune.api as api

    seen, calibrate = [], api.calibrate
    monkeypatch.setattr(api, "calibrate", lambda *a, **kw: seen.append(kw.get("reference")) or calibrate(*a, **kw))
    graphprune.shrink(Deep(), 0.4, steps=3, example_inputs=X, calibration=_data(), **options)
    assert seen == [None, None, None]


def test_a_bad_round_reference_is_refused() -> None:
    with pytest.raises(ConfigError, match="round_reference='first' is not one of"):
        graphprune.shrink(Deep(), 0.4, steps=3, example_inputs=X, round_reference="first")


def test_composed_plan_rebuilds_the_same_model_from_the_original() -> None:
    model = Deep()
    small, report = graphprune.shrink(model, 0.5, steps=3, example_inputs=X, return_report=True)
    fresh = copy.deepcopy(model)
    graphprune.apply_plan_(fresh, graphprune.Plan.from_json(report.plan.to_json()), X)
    assert report.plan.config["steps"] == 3 and report.plan.config["ratio"] == 0.5
    for (name, a), b in zip(small.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    torch.testing.assert_close(small(X), fresh(X))


def test_iterative_is_no_worse_than_one_shot_on_data_aware_criteria() -> None:
    model = Mlp()
    data = Mlp.data(4)
    ref = torch.cat([model(x) for x in data]).detach()
    err = {}
    for steps in (1, 4):
        small = graphprune.shrink(model, 0.3, example_inputs=data[0], steps=steps, scorer="activation",
                                  calibration=data, tolerance=0.05)
        err[steps] = float((torch.cat([small(x) for x in data]).detach() - ref).square().mean())
    assert err[4] <= err[1] * 1.0001


def test_bad_steps_are_refused() -> None:
    for steps in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="steps="):
            graphprune.shrink(Deep(), 0.3, steps=steps, example_inputs=X)


def test_a_failing_later_round_puts_an_inplace_model_back(monkeypatch) -> None:
    model = Deep()
    before = copy.deepcopy(model.state_dict())
    first_linear = model.body[0]
    real = iterative.prune_round_

    def second_fails(m, base, config, step, *args):
        if step == 2:
            raise SurgeryError("round 2 broke")
        return real(m, base, config, step, *args)
    monkeypatch.setattr(iterative, "prune_round_", second_fails)
    with pytest.raises(SurgeryError, match="round 2"):
        graphprune.shrink(model, 0.5, steps=3, example_inputs=X, inplace=True)
    assert model.body[0] is first_linear and model.body[0].out_features == 64
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), before.values()))
    model(X)


@pytest.mark.parametrize("toy", TOYS, ids=[t.name for t in TOYS])
def test_composed_plan_matches_the_rounds_on_every_toy(toy) -> None:
    model, x = toy.build().eval(), toy.inputs()
    # coarse toys (two key/value heads) reach few ratios: a wide tolerance, the composition is the point
    small, report = graphprune.shrink(model, 0.3, steps=3, example_inputs=x, tolerance=0.2, return_report=True)
    assert len(report.rounds) == 3 and abs(report.rounds[-1].params_ratio - 0.3) <= 0.2
    fresh = graphprune.apply_plan_(copy.deepcopy(model), graphprune.Plan.from_json(report.plan.to_json()), x)
    assert fresh.state_dict().keys() == small.state_dict().keys()
    for (name, a), b in zip(small.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(a, b), name
    torch.testing.assert_close(graphprune.inputs.first_tensor(small(x)), graphprune.inputs.first_tensor(fresh(x)))


def test_iterative_hf_model_reloads_with_its_per_layer_widths(tmp_path) -> None:
    import transformers
    cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=200, use_cache=False)
    model = transformers.LlamaForCausalLM(cfg).eval()
    small = graphprune.shrink(model, 0.4, steps=2)
    small.save_pretrained(tmp_path)
    again = graphprune.from_pretrained(str(tmp_path))
    ids = torch.tensor([[1, 2, 3, 4]])
    assert torch.equal(again.generate(ids, max_new_tokens=4), small.generate(ids, max_new_tokens=4))


def test_a_round_coarse_units_cannot_reach_is_skipped_and_the_next_catches_up() -> None:
    toy = next(t for t in TOYS if t.name == "gqa")  # two key/value heads: ~0 or ~0.48 of it goes at once
    with pytest.warns(UserWarning) as seen:
        _, report = graphprune.shrink(toy.build().eval(), 0.45, steps=3, example_inputs=toy.inputs(),
                                      tolerance=0.05, return_report=True)
    skipped = [str(w.message) for w in seen if "skipped" in str(w.message)]
    assert [m.split(" skipped")[0] for m in skipped] == ["graphprune: round 1 of 3", "graphprune: round 2 of 3"]
    assert "ratio=0.15 cannot be met within +-0.075" in skipped[0], skipped[0]
    ratios = [r.params_ratio for r in report.rounds]
    assert ratios[0] == ratios[1] == 0 and abs(ratios[2] - 0.45) <= 0.05
