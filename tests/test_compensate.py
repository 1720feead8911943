"""Tests for graphprune/compensate.py: the zero-then-prune oracle generalised to constant units,
the least-squares refit against torch.linalg.lstsq, norms and biases."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import transformers
from torch import nn

import graphprune
from graphprune.compensate import compensation
from graphprune.plan import plan_from_units

from .calib_models import CONSTANT, DEAD, ConvBn, Mlp

X = torch.randn(2, 4)


def _prune(model, units, method=None, needs=("gram",), batches=None, ridge=1e-3):
    """Remove ``units`` of the width-10 group, compensating with ``method``; returns the pruned copy."""
    groups = graphprune.find_groups(model, X)
    (g,) = [g for g in groups.prunable if g.width == 10]
    plan = plan_from_units(model, [(g, units)], {}, groups)
    target = copy.deepcopy(model)
    comp = None
    if method:
        stats = graphprune.calibrate(model, groups, batches or Mlp.data(), needs=needs)
        comp = compensation(model, plan, groups, stats, method, ridge=ridge)
    return graphprune.apply_plan_(target, plan, groups.traced.inputs, compensation=comp), comp


@pytest.mark.parametrize("method", ["mean", "lstsq"])
def test_removing_a_constant_unit_with_compensation_leaves_the_output_unchanged(method: str) -> None:
    model = Mlp()
    x = torch.cat(Mlp.data())
    plain, _ = _prune(model, [CONSTANT])
    compensated, _ = _prune(model, [CONSTANT], method, ridge=0.0)
    assert (plain(x) - model(x)).abs().max() > 1e-2  # without compensation the constant is lost
    torch.testing.assert_close(compensated(x), model(x), rtol=1e-5, atol=1e-5)


def test_lstsq_equals_torch_linalg_lstsq_on_the_consumer() -> None:
    model = nn.Sequential(nn.Linear(4, 10), nn.Tanh(), nn.Linear(10, 3))
    batches = [torch.randn(64, 4, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    drop = [1, 4, 8]
    groups = graphprune.find_groups(model, X)
    (g,) = [g for g in groups.prunable if g.width == 10]
    plan = plan_from_units(model, [(g, drop)], {}, groups)
    stats = graphprune.calibrate(model, groups, batches, needs=("gram",))
    comp = compensation(model, plan, groups, stats, "lstsq", ridge=0.0)
    h = model[1](model[0](torch.cat(batches))).detach().double()
    keep = [i for i in range(10) if i not in drop]
    z = torch.cat([h[:, keep], torch.ones(h.shape[0], 1, dtype=torch.float64)], 1)
    target = h @ model[2].weight.detach().double().T + model[2].bias.detach().double()
    want = torch.linalg.lstsq(z, target).solution.T  # (3, 8): kept columns, then the bias
    torch.testing.assert_close(comp.updates["2.weight"][:, keep].double(), want[:, :-1].float().double(),
                               rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(comp.updates["2.bias"].double(), want[:, -1].float().double(), rtol=1e-4, atol=1e-5)


def test_mean_compensation_folds_into_the_next_batch_norm_when_the_conv_has_no_bias() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.Conv2d(8, 6, 1, bias=False), nn.BatchNorm2d(6),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2)).eval()
    x = torch.randn(2, 3, 4, 4)
    groups = graphprune.find_groups(model, x)
    (g,) = [g for g in groups.prunable if any((m.fqn, m.dim) == ("2.weight", 1) for m in g.members)]
    plan = plan_from_units(model, [(g, [0, 3])], {}, groups)
    const = [torch.full((4, 3, 4, 4), 0.7)]  # constant inputs: what the removed channels fed is a constant
    stats = graphprune.calibrate(model, groups, const)
    comp = compensation(model, plan, groups, stats, "mean")
    assert set(comp.updates) == {"3.running_mean"} and not comp.new_biases
    pruned = graphprune.apply_plan_(copy.deepcopy(model), plan, groups.traced.inputs, compensation=comp)
    torch.testing.assert_close(pruned(const[0]), model(const[0]), rtol=1e-5, atol=1e-5)


def test_a_linear_without_bias_gains_one_outside_hugging_face() -> None:
    model = Mlp()
    model.fc2.bias = None
    compensated, comp = _prune(model, [CONSTANT], "mean", needs=("inputs",))
    assert "fc2" in comp.new_biases and compensated.fc2.bias.shape == (3,)
    x = torch.cat(Mlp.data())
    torch.testing.assert_close(compensated(x), model(x), rtol=1e-5, atol=1e-5)


def test_hugging_face_linears_without_bias_are_reported_not_changed() -> None:
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=64, use_cache=False)
    model = transformers.LlamaForCausalLM(config).eval()
    ids = [{"input_ids": torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(i))} for i in range(2)]
    small, report = graphprune.shrink(model, 0.2, calibration=ids, scorer="activation", compensate="mean",
                                      prune=("mlp",), return_report=True, tolerance=0.05)
    assert small.model.layers[0].mlp.down_proj.bias is None
    assert any("down_proj has no bias" in n for n in report.notes)
    assert report.compensate == "mean" and report.calibration_batches == 2


def test_failed_surgery_rolls_the_compensation_back() -> None:
    model = Mlp()
    groups = graphprune.find_groups(model, X)
    (g,) = [g for g in groups.prunable if g.width == 10]
    plan = plan_from_units(model, [(g, [CONSTANT])], {}, groups)
    stats = graphprune.calibrate(model, groups, Mlp.data())
    comp = compensation(model, plan, groups, stats, "mean")
    bad = type(plan)(**{**plan.__dict__, "output_shapes": [[9, 9]]})  # the shape check fails after slicing
    target = copy.deepcopy(model)
    with pytest.raises(graphprune.SurgeryError):
        graphprune.apply_plan_(target, bad, groups.traced.inputs, compensation=comp)
    assert torch.equal(target.fc2.bias, model.fc2.bias) and target.fc2.weight.shape == (3, 10)


def test_shrink_needs_data_for_compensation() -> None:
    with pytest.raises(graphprune.CalibrationError, match="calibration="):
        graphprune.shrink(Mlp(), 0.2, compensate="mean", example_inputs=X)


def test_dead_unit_removal_is_exact_without_data_but_lstsq_keeps_it_exact_too() -> None:
    model = Mlp()
    x = torch.cat(Mlp.data())
    pruned, _ = _prune(model, [DEAD], "lstsq")
    torch.testing.assert_close(pruned(x), model(x), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_less(0, pruned.fc2.weight.abs().sum().item())
