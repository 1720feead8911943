"""Tests for graphprune/schedule/pruner.py and optim.py: Pruner.step() inside a plain AdamW loop
runs to the end at the requested ratio, and the optimizer state of every kept unit is the state it
had before the step; wrong optimizers are refused before anything changes."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphprune
from graphprune.errors import OptimizerError, PlanError

from ..calib_models import ConvBn


class Net(nn.Module):
    """conv -> BN -> ReLU -> conv -> BN -> ReLU -> pool -> linear: channels, BN gammas, a head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.b1 = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.c2, self.b2 = nn.Conv2d(16, 24, 3, padding=1, bias=False), nn.BatchNorm2d(24)
        self.fc = nn.Linear(24, 5)

    def forward(self, x):
        x = F.relu(self.b2(self.c2(F.relu(self.b1(self.c1(x))))))
        return self.fc(x.mean((2, 3)))


def _batches(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 3, 6, 6, generator=g), torch.randint(0, 5, (8,), generator=g)) for _ in range(n)]


EXAMPLE = torch.randn(1, 3, 6, 6)


def _train_steps(model, opt, batches, pruner=None, reg=0.0):
    model.train()
    for x, y in batches:
        loss = F.cross_entropy(model(x), y) + (reg * pruner.regularizer() if reg else 0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()


def test_step_in_an_adamw_loop_keeps_the_state_of_kept_units() -> None:
    model = Net()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.05)
    pruner = graphprune.Pruner(model, 0.5, steps=3, example_inputs=EXAMPLE, optimizer=opt)
    for epoch in range(3):
        _train_steps(model, opt, _batches(3, epoch))
        names = {id(p): n for n, p in model.named_parameters()}
        before = {names[id(p)]: {k: v.clone() for k, v in s.items()} for p, s in opt.state.items()}
        step = pruner.step()
        assert step.step == epoch + 1 and step.plan is not None
        params = dict(model.named_parameters())
        assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in params.values()}
        for name, state in before.items():
            now = opt.state[params[name]]
            keep = step.plan.keep.get(name, {})
            for key in ("exp_avg", "exp_avg_sq"):
                want = state[key]
                for d, ix in keep.items():
                    want = want.index_select(d, torch.tensor(ix))
                assert torch.equal(now[key], want), (name, key)
            assert torch.equal(now["step"], state["step"])
        assert len(step.params.replaced) > 0
    _train_steps(model, opt, _batches(2, 9))  # training goes on with the remapped optimizer
    assert pruner.done and abs(pruner.ratio - 0.5) <= 0.01
    assert [round(r.params_ratio, 2) for r in pruner.history][-1] == 0.5
    with pytest.raises(PlanError, match="all 3 steps"):
        pruner.step()


def test_sgd_momentum_and_grads_follow_the_slicing() -> None:
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train_steps(model, opt, _batches(2))
    x, y = _batches(1, 5)[0]
    F.cross_entropy(model(x), y).backward()  # a gradient is pending when the step comes
    old_grad = model.c2.weight.grad.clone()
    step = graphprune.Pruner(model, 0.3, example_inputs=EXAMPLE).step(opt)
    keep = step.plan.keep["c2.weight"]
    want = old_grad
    for d, ix in keep.items():
        want = want.index_select(d, torch.tensor(ix))
    assert torch.equal(model.c2.weight.grad, want)
    assert opt.state[model.c2.weight]["momentum_buffer"].shape == model.c2.weight.shape
    opt.step()


def test_an_optimizer_of_another_model_is_refused_before_anything_changes() -> None:
    model = Net()
    other = torch.optim.AdamW(copy.deepcopy(model).parameters())
    with pytest.raises(OptimizerError, match="not a parameter of this Net"):
        graphprune.Pruner(model, 0.3, example_inputs=EXAMPLE, optimizer=other)
    pruner = graphprune.Pruner(model, 0.3, example_inputs=EXAMPLE)
    with pytest.raises(OptimizerError, match="model.parameters()"):
        pruner.step(other)
    assert model.c1.out_channels == 16 and not pruner.history


def test_state_that_cannot_be_sliced_is_refused_before_surgery() -> None:
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    opt.state[model.c1.weight]["factored"] = torch.ones(16)  # e.g. Adafactor's row statistics
    with pytest.raises(OptimizerError, match="'factored' of c1.weight"):
        graphprune.Pruner(model, 0.3, example_inputs=EXAMPLE, optimizer=opt)
    assert model.c1.out_channels == 16


def test_ratio_and_steps_errors() -> None:
    with pytest.raises(graphprune.ConfigError, match="ratio=1.2 is outside"):
        graphprune.Pruner(Net(), 1.2, example_inputs=EXAMPLE)
    with pytest.raises(graphprune.ConfigError, match="steps=0"):
        graphprune.Pruner(Net(), 0.3, steps=0, example_inputs=EXAMPLE)
    with pytest.raises(graphprune.OptimizerError, match="optimizer='adam' is not a torch.optim.Optimizer"):
        graphprune.Pruner(Net(), 0.3, example_inputs=EXAMPLE, optimizer="adam")


def test_group_lasso_is_the_sum_of_unit_norms() -> None:
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 3))
    pruner = graphprune.Pruner(model, 0.3, example_inputs=torch.randn(2, 4))
    w1, b1, w2 = model[0].weight, model[0].bias, model[2].weight
    want = (w1.square().sum(1) + b1.square() + w2.square().sum(0)).sqrt().sum()
    got = pruner.regularizer()
    torch.testing.assert_close(got, want)
    got.backward()
    assert model[0].weight.grad is not None and model[2].bias.grad is None  # the head's bias is no unit's


def test_bn_l1_is_the_l1_of_the_prunable_gammas() -> None:
    model = ConvBn()
    pruner = graphprune.Pruner(model, 0.3, scorer="bn_scale", example_inputs=torch.randn(1, 3, 5, 5))
    torch.testing.assert_close(pruner.regularizer(), model.bn.weight.abs().sum())
    with pytest.raises(graphprune.ConfigError, match="group_lasso"):
        pruner.regularizer("l3")


def test_regularizer_follows_the_pruned_model_and_shrinks_groups() -> None:
    model = Net()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    pruner = graphprune.Pruner(model, 0.4, steps=2, example_inputs=EXAMPLE, optimizer=opt)
    start = float(pruner.regularizer().detach())
    _train_steps(model, opt, _batches(6), pruner, reg=0.05)
    assert float(pruner.regularizer().detach()) < start
    pruner.step()
    pruned = float(pruner.regularizer().detach())  # re-found on the pruned model: fewer units
    _train_steps(model, opt, _batches(2), pruner, reg=0.05)
    assert pruned < start and np.isfinite(pruned)


def test_pruning_at_initialisation_with_a_gradient_criterion() -> None:
    model = Net()
    data = _batches(3)
    pruner = graphprune.Pruner(model, 0.4, scorer="taylor", calibration=[x for x, _ in data],
                               loss_fn=lambda out, x: out.logsumexp(1).mean(), example_inputs=EXAMPLE)
    step = pruner.step()
    assert abs(step.params_ratio - 0.4) <= 0.01 and step.plan.config["scorer"] == "taylor"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    _train_steps(model, opt, data)


def test_biases_compensation_creates_join_the_optimizer() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 12), nn.ReLU(), nn.Linear(12, 3, bias=False))
    opt = torch.optim.AdamW(model.parameters())
    data = [torch.randn(16, 4) for _ in range(2)]
    step = graphprune.Pruner(model, 0.3, example_inputs=data[0], calibration=data, scorer="activation",
                             compensate="mean", optimizer=opt, tolerance=0.1).step()
    assert model[2].bias is not None and len(step.params.added) == 1
    assert any(p is model[2].bias for g in opt.param_groups for p in g["params"])


def test_a_model_in_training_mode_keeps_its_batchnorm_statistics() -> None:
    model = Net()
    _train_steps(model, torch.optim.SGD(model.parameters(), lr=0.01), _batches(2))  # leaves it in train mode
    stats = model.b1.running_mean.clone(), int(model.b1.num_batches_tracked)
    pruner = graphprune.Pruner(model, 0.3, example_inputs=EXAMPLE, target="macs")
    step = pruner.step()
    keep = torch.tensor(step.plan.keep["b1.running_mean"][0])
    assert model.training and int(model.b1.num_batches_tracked) == stats[1]
    assert torch.equal(model.b1.running_mean, stats[0][keep])
