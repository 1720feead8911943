"""Tests for graphprune/options.py and option checks: every option is validated before any work."""
from __future__ import annotations

import warnings

import pytest
import torch
import transformers
from torch import nn

import graphprune
from graphprune.errors import ConfigError, GraphPruneError, RuleError

from .models import Grouped

IMG = torch.randn(1, 3, 8, 8)


class Untraceable(Grouped):
    """Its forward fails, so an error that is not a TraceError came before tracing."""

    def forward(self, x):
        raise AssertionError("traced")


@pytest.mark.parametrize("ignore, match", [
    (("c2.1.weight",), r"ignore='c2.1.weight' names a parameter, not a module.*did you mean 'c2.1'"),
    (("c2.1.wieght",), r"ignore='c2.1.wieght' matches no module FQN or module class of Untraceable; closest: 'c2.1'"),
    (("c2.O",), r"closest: 'c2\.\d', 'c2\.\d', 'c2\.\d' \(a typo here would prune the module you meant to keep\)"),
    (("BatchNorm",), r"closest: 'BatchNorm2d'"),
    ((3,), r"ignore= takes module FQNs, module classes or filters"),
])
def test_unknown_ignore_names_are_refused_before_tracing(ignore, match) -> None:
    with pytest.raises(ConfigError, match=match):
        graphprune.shrink(Untraceable(), 0.3, example_inputs=IMG, ignore=ignore)


def test_an_ignore_filter_leaves_what_it_picks_and_the_plan_records_names() -> None:
    model = Grouped().eval()
    small, report = graphprune.shrink(model, 0.2, example_inputs=IMG, tolerance=0.2, return_report=True,
                                      ignore=lambda fqn, m: fqn.startswith("c2.") and not isinstance(m, nn.ReLU))
    assert report.plan.config["ignore"] == ["c2.0", "c2.1"]
    assert small.c2[0].weight.shape == model.c2[0].weight.shape and small.stem[0].out_channels < 8


@pytest.mark.parametrize("fn, match", [
    (lambda fqn, m: 1 / 0, r"ignore= filter .*<lambda> raised ZeroDivisionError for '<root>' \(Untraceable\)"),
    (lambda fqn, m: m, r"returned a Untraceable for '<root>'; it must return True"),
])
def test_a_broken_ignore_filter_is_a_config_error(fn, match) -> None:
    with pytest.raises(ConfigError, match=match):
        graphprune.shrink(Untraceable(), 0.3, example_inputs=IMG, ignore=(fn,))


def test_a_filter_that_picks_nothing_warns() -> None:
    with pytest.warns(UserWarning, match="picked no module"), pytest.raises(graphprune.TraceError, match="traced"):
        graphprune.shrink(Untraceable(), 0.3, example_inputs=IMG, ignore=lambda fqn, m: False)


@pytest.mark.parametrize("options, match", [
    ({"ratoi": 0.3}, r"unknown option 'ratoi' \(did you mean 'ratio'\?\)"),
    ({"example_input": IMG}, r"did you mean 'example_inputs'"),
    ({"round_to": 0}, r"round_to=0 must be an integer >= 1"),
    ({"uniform": True}, r"uniform=True cannot help Untraceable.*has no config"),
    ({"scorer": "l3"}, r"scorer='l3' is not a registered name"),
    ({"scorer": "taylor"}, r"scorer='taylor' reads calibration data; pass calibration="),
])
def test_bad_options_are_refused_before_tracing(options, match) -> None:
    options = {"example_inputs": IMG, **options} if "example_input" not in options else options
    with pytest.raises(ConfigError, match=match):
        graphprune.shrink(Untraceable(), 0.3, **options)


@pytest.mark.parametrize("calibration, match", [
    (IMG, r"calibration= is one Tensor\(1, 3, 8, 8\), which would be read row by row; pass a list of batches: \[x\]"),
    (5, r"calibration=5 is no iterable of batches"),
    ("batches.pt", r"calibration='batches.pt' is no iterable of batches"),
])
def test_calibration_that_is_no_list_of_batches_is_refused_before_tracing(calibration, match) -> None:
    with pytest.raises(graphprune.CalibrationError, match=match):
        graphprune.shrink(Untraceable(), 0.3, example_inputs=IMG, scorer="activation", calibration=calibration)


def test_numpy_numbers_are_numbers_and_the_plan_stores_them_as_python_ones() -> None:
    import numpy as np
    config = graphprune.ShrinkConfig(ratio=np.float64(0.3), steps=np.int64(2), tolerance=np.float32(0.25))
    assert (config.ratio, config.steps, type(config.steps), type(config.tolerance)) == (0.3, 2, int, float)
    small, report = graphprune.shrink(Grouped().eval(), np.float64(0.3), example_inputs=IMG, tolerance=0.2,
                                      return_report=True)
    assert '"ratio": 0.3' in report.plan.to_json() and graphprune.count_params(small) < graphprune.count_params(Grouped())


class Stack(nn.Module):
    """Layers of 16, 32, 64 and 128 channels, for round_to."""

    def __init__(self):
        super().__init__()
        chans = [3, 16, 32, 64, 128]
        self.convs = nn.Sequential(*[m for a, b in zip(chans, chans[1:]) for m in (nn.Conv2d(a, b, 3), nn.ReLU())])
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        return self.head(self.convs(x).mean((2, 3)))


@pytest.mark.parametrize("round_to", [8, 64, 100])
def test_round_to_keeps_a_multiple_or_the_whole_group(round_to: int) -> None:
    model = Stack().eval()
    try:
        small = graphprune.shrink(model, 0.2, example_inputs=torch.randn(1, 3, 16, 16), round_to=round_to,
                                  tolerance=0.2)
    except graphprune.PlanError as err:
        assert round_to == 100 and "largest reachable ratio is 0.0" in str(err)  # every group narrower than 100
        return
    for before, after in zip(model.convs[::2], small.convs[::2]):
        assert after.out_channels == before.out_channels or after.out_channels % round_to == 0
    assert graphprune.count_params(small) < graphprune.count_params(model)


def test_bert_uniform_heads_that_hidden_size_cannot_divide_are_left_out_with_a_reason() -> None:
    cfg = transformers.BertConfig(hidden_size=96, num_attention_heads=12, intermediate_size=192, num_hidden_layers=1,
                                  vocab_size=50)
    model = transformers.BertModel(cfg).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        small = graphprune.shrink(model, 0.1, uniform=True)
    why = " ".join(str(w.message) for w in caught)
    assert "cannot describe uniform pruning" in why and "cannot be built from that config" in why
    assert small.config.num_attention_heads == 12 and small.config.intermediate_size < 192
    assert not graphprune.config_mismatches(small)


def test_hf_swin_with_per_stage_head_lists_prunes() -> None:
    cfg = transformers.SwinConfig(image_size=32, patch_size=4, embed_dim=16, depths=[1, 1], num_heads=[2, 4],
                                  window_size=2, num_labels=3)
    model = transformers.SwinForImageClassification(cfg).eval()
    small = graphprune.shrink(model, 0.5, tolerance=0.05)
    assert type(small) is type(model) and small(torch.randn(1, 3, 32, 32)).logits.shape == (1, 3)
    assert graphprune.count_params(small) < 0.56 * graphprune.count_params(model)


class CumMax(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.b(torch.cummax(self.a(x), dim=0).values)


def test_a_failing_rule_freezes_its_op_or_raises_when_strict() -> None:
    key = torch.ops.aten.cummax.default

    @graphprune.register_rule(key)
    def broken(b, node):
        raise KeyError("a bug in the rule")

    try:
        groups = graphprune.find_groups(CumMax(), torch.randn(3, 4))
        (line,) = groups.coupling.rule_errors
        assert "coupling rule for aten.cummax" in line and "KeyError" in line and "override=True" in line
        assert all(g.frozen for g in groups if any(m.fqn.startswith("a.") and m.dim == 0 for m in g.members))
        with pytest.raises(RuleError, match=r"coupling rule for aten.cummax .*failed at node 'cummax'"):
            graphprune.find_groups(CumMax(), torch.randn(3, 4), strict=True)
    finally:
        graphprune.RULES._items.pop("aten.cummax")
    assert isinstance(RuleError("x"), GraphPruneError)
