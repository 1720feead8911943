"""Tests for graphprune/criteria/gradient.py and activation.py on a toy whose answers are known."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import graphprune

from ..calib_models import BIG, CONSTANT, DEAD, Mlp


@pytest.fixture(scope="module")
def mlp():
    model = Mlp()
    groups = graphprune.find_groups(model, torch.randn(2, 4))
    (g,) = [g for g in groups.prunable if g.width == 10]
    stats = graphprune.calibrate(model, groups, Mlp.data(), needs=("inputs", "grads"))
    return model, groups, g, stats


def _raw(mlp, scorer: str) -> np.ndarray:
    model, groups, g, stats = mlp
    return graphprune.score(model, groups, scorer, stats).raw[g.id]


def test_large_weights_but_zero_activations_score_lowest_under_activation(mlp) -> None:
    assert int(np.argmax(_raw(mlp, "l2"))) == DEAD  # the magnitude criterion keeps the dead unit
    raw = _raw(mlp, "activation")
    assert raw[DEAD] == 0.0 and (np.delete(raw, DEAD) > 0).all()


@pytest.mark.parametrize("scorer", ["taylor", "hessian"])
def test_zero_gradient_scores_lowest_under_gradient_criteria(mlp, scorer: str) -> None:
    raw = _raw(mlp, scorer)
    assert raw[DEAD] == 0.0
    assert (np.delete(raw, [DEAD, CONSTANT]) > 0).all()


def test_constant_unit_scores_zero_under_fluctuation_but_not_activation(mlp) -> None:
    assert _raw(mlp, "fluctuation")[CONSTANT] < 1e-12
    assert _raw(mlp, "activation")[CONSTANT] > 0


def test_activation_is_input_norm_times_column_norm(mlp) -> None:
    model, _, _, _ = mlp
    h = torch.relu(model.fc1(torch.cat(Mlp.data())))
    want = h.norm(dim=0) * model.fc2.weight.norm(dim=0)
    np.testing.assert_allclose(_raw(mlp, "activation"), want.detach().numpy(), rtol=1e-5)


def test_taylor_is_the_mean_over_batches_of_abs_unit_sums_of_w_times_grad(mlp) -> None:
    model, groups, g, _ = mlp
    loss = lambda out, batch: out.pow(2).sum()
    stats = graphprune.calibrate(model, groups, Mlp.data(), needs=("grads",), loss_fn=loss)
    total = np.zeros(10)
    for x in Mlp.data():
        model.zero_grad()
        model(x).pow(2).sum().backward()
        wg = ((model.fc1.weight * model.fc1.weight.grad).sum(1) + model.fc1.bias * model.fc1.bias.grad
              + (model.fc2.weight * model.fc2.weight.grad).sum(0))
        total += wg.abs().detach().numpy()
    model.zero_grad(set_to_none=True)
    np.testing.assert_allclose(stats.taylor[g.id], total / 4, rtol=1e-6, atol=1e-9)


def test_data_aware_criterion_without_data_says_what_to_pass(mlp) -> None:
    model, groups, _, _ = mlp
    with pytest.raises(graphprune.CalibrationError, match="calibration="):
        graphprune.score(model, groups, "activation")
    with pytest.raises(graphprune.CalibrationError, match="calibration="):
        graphprune.shrink(model, 0.2, scorer="taylor", example_inputs=torch.randn(2, 4))


def test_every_criterion_is_listed() -> None:
    assert {"l1", "l2", "random", "bn_scale", "taylor", "hessian", "activation", "fluctuation"} <= set(
        graphprune.list_scorers())


def test_big_unit_outranks_others_under_l2(mlp) -> None:
    raw = _raw(mlp, "l2")
    assert raw[BIG] > np.median(raw)


class BareBranch(torch.nn.Module):
    """Two hidden layers of 16 units: ``fc`` is read by a Linear (activation judges it), ``w1``'s
    units by a bare parameter (activation cannot), with weights 100x larger than the other's."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = torch.nn.Linear(4, 16), torch.nn.Linear(16, 4)
        self.w1 = torch.nn.Parameter(100 * torch.randn(4, 16))
        self.w2 = torch.nn.Parameter(100 * torch.randn(16, 4))

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x))) + torch.relu(x @ self.w1) @ self.w2 * 1e-4


def test_a_group_the_criterion_cannot_judge_ranks_at_the_judged_scale() -> None:
    model, x = BareBranch(), [torch.randn(8, 4) for _ in range(2)]
    groups = graphprune.find_groups(model, x[0])
    stats = graphprune.calibrate(model, groups, x, needs=("inputs",))
    scores = graphprune.score(model, groups, "activation", stats)
    (bare,) = scores.fallback
    (judged,) = set(scores.raw) - {bare}
    assert scores.raw[bare].mean() == pytest.approx(scores.raw[judged].mean())
    # ranked globally with raw l2 values the bare-parameter group would never lose a unit
    plan = graphprune.make_plan(model, groups, graphprune.ShrinkConfig(ratio=0.4, scope="global"), scores=scores)
    assert set(plan.removed) == {bare, judged}


class IntoRecurrent(torch.nn.Module):
    """fc's outputs feed a bidirectional LSTM, or a GRU cell stepped over the tokens; fc's unit 2
    is always zero (ReLU of a large negative bias)."""

    def __init__(self, cell: bool):
        super().__init__()
        torch.manual_seed(0)
        self.cell, self.fc = cell, torch.nn.Linear(4, 6)
        self.rnn = torch.nn.GRUCell(6, 5) if cell else torch.nn.LSTM(6, 5, batch_first=True, bidirectional=True)
        self.out = torch.nn.Linear(5 if cell else 10, 2)
        with torch.no_grad():
            self.fc.bias[2] = -100.0

    def forward(self, x):
        h = torch.relu(self.fc(x))
        if not self.cell:
            return self.out(self.rnn(h)[0])
        state = None
        for t in range(h.shape[1]):
            state = self.rnn(h[:, t], state)
        return self.out(state)


@pytest.mark.parametrize("cell", [False, True])
def test_activation_judges_what_feeds_a_recurrent_layer_by_its_input_and_input_weights(cell: bool) -> None:
    model, batches = IntoRecurrent(cell).eval(), [torch.randn(3, 7, 4) for _ in range(4)]
    groups = graphprune.find_groups(model, batches[0])
    g = next(g for g in groups.prunable if any(m.fqn == "fc.weight" for m in g.members))
    stats = graphprune.calibrate(model, groups, batches, needs=("inputs",))
    scores = graphprune.score(model, groups, "activation", stats)
    assert g.id not in scores.fallback  # judged from the data, not ranked by l2
    h = torch.relu(model.fc(torch.cat(batches))).flatten(0, 1)
    weights = [model.rnn.weight_ih] if cell else [model.rnn.weight_ih_l0, model.rnn.weight_ih_l0_reverse]
    want = sum(h.norm(dim=0) * w.norm(dim=0) for w in weights)  # one term per reading weight
    np.testing.assert_allclose(scores.raw[g.id], want.detach().numpy(), rtol=1e-5)
    assert scores.raw[g.id][2] == 0.0
