"""Tests for graphprune/calibrate.py and moments.py: the statistics they collect, and bad input
leaving the model as it was."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import transformers
from torch.utils.data import DataLoader, TensorDataset

import graphprune
from graphprune.moments import consumer_of

from .calib_models import Mlp


@pytest.fixture
def mlp():
    model = Mlp()
    return model, graphprune.find_groups(model, torch.randn(2, 4))


def _untouched(model, before) -> None:
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), before.state_dict().values()))
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())
    assert [p.requires_grad for p in model.parameters()] == [p.requires_grad for p in before.parameters()]


def test_input_moments_equal_the_ones_computed_directly(mlp) -> None:
    model, groups = mlp
    stats = graphprune.calibrate(model, groups, Mlp.data(), needs=("gram",))
    h = torch.relu(model.fc1(torch.cat(Mlp.data()))).double()
    seen = stats.inputs["fc2"]
    assert seen.count == h.shape[0]
    np.testing.assert_allclose(seen.mean, h.mean(0).detach().numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(seen.gram, (h.T @ h).detach().numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(seen.var, h.var(0, unbiased=False).detach().numpy(), rtol=1e-5, atol=1e-9)


def test_stats_are_read_only_and_repeatable(mlp) -> None:
    model, groups = mlp
    a = graphprune.calibrate(model, groups, Mlp.data(), needs=("inputs", "grads"))
    b = graphprune.calibrate(model, groups, Mlp.data(), needs=("inputs", "grads"))
    with pytest.raises(ValueError):
        a.inputs["fc2"].sum[0] = 1.0
    with pytest.raises(TypeError):
        a.inputs["x"] = None  # type: ignore[index]
    np.testing.assert_array_equal(a.inputs["fc2"].sumsq, b.inputs["fc2"].sumsq)
    np.testing.assert_array_equal(next(iter(a.taylor.values())), next(iter(b.taylor.values())))


def test_data_loader_and_max_batches(mlp) -> None:
    model, groups = mlp
    loader = DataLoader(TensorDataset(torch.randn(40, 4)), batch_size=8)
    stats = graphprune.calibrate(model, groups, loader, max_batches=3)
    assert stats.batches == 3 and stats.inputs["fc2"].count == 24


def test_model_is_left_as_it_was_even_with_frozen_parameters(mlp) -> None:
    model, groups = mlp
    model.fc1.weight.requires_grad_(False)
    before = copy.deepcopy(model)
    model.train()
    graphprune.calibrate(model, groups, Mlp.data(), needs=("inputs", "grads"))
    assert model.training and model.fc2.training
    _untouched(model, before)


@pytest.mark.parametrize("batches,match", [
    ([], "no batches"),
    ([torch.randn(4, 5)], r"batch 0 \(Tensor\(4, 5\)\) does not fit Mlp.forward"),
    ([torch.randn(4, 4), "text"], "batch 1"),
])
def test_bad_batches_raise_and_leave_the_model_untouched(mlp, batches, match: str) -> None:
    model, groups = mlp
    before = copy.deepcopy(model)
    with pytest.raises(graphprune.CalibrationError, match=match):
        graphprune.calibrate(model, groups, batches, needs=("inputs", "grads"))
    _untouched(model, before)


def test_a_loss_that_is_no_scalar_is_refused(mlp) -> None:
    model, groups = mlp
    before = copy.deepcopy(model)
    with pytest.raises(graphprune.CalibrationError, match=r"gave \(32, 3\); it must be a scalar"):
        graphprune.calibrate(model, groups, Mlp.data(), needs=("grads",), loss_fn=lambda out, batch: out)
    _untouched(model, before)


def test_unknown_needs_and_bad_max_batches(mlp) -> None:
    model, groups = mlp
    with pytest.raises(graphprune.CalibrationError, match="hessians"):
        graphprune.calibrate(model, groups, Mlp.data(), needs=("hessians",))
    with pytest.raises(graphprune.CalibrationError, match="max_batches=0"):
        graphprune.calibrate(model, groups, Mlp.data(), max_batches=0)


def test_causal_lm_gradients_come_from_its_own_loss() -> None:
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=64, use_cache=False)
    model = transformers.LlamaForCausalLM(config).eval()
    groups = graphprune.find_groups(model)
    ids = [{"input_ids": torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(i))} for i in range(2)]
    stats = graphprune.calibrate(model, groups, ids, needs=("grads", "inputs"))
    assert stats.loss == "the model's own loss" and stats.taylor
    assert "model.layers.0.mlp.down_proj" in stats.inputs and "model.layers.0.self_attn.o_proj" in stats.inputs


def test_consumers_are_leaf_modules_that_multiply_their_input(mlp) -> None:
    model, groups = mlp
    (g,) = [g for g in groups.prunable if g.width == 10]
    where = {m.fqn: consumer_of(model, m) for m in g.members}
    assert where == {"fc1.weight": None, "fc1.bias": None, "fc2.weight": ("fc2", -1)}


def test_non_finite_batches_are_named_as_the_cause() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    bad = torch.randn(4, 8)
    bad[0, 0] = float("nan")
    with pytest.raises(graphprune.CalibrationError, match="calibration statistics hold NaN or inf.*isfinite"):
        graphprune.shrink(model, 0.3, example_inputs=torch.randn(4, 8), calibration=[bad], scorer="activation",
                          tolerance=0.2)
