"""Tests for graphprune/ridge.py: the cross-validated lstsq damping against a brute-force refit on
explicit rows, what it picks when refitting helps and when it only fits noise, and how the folds
come out of calibration."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import graphprune
from graphprune.compensate import _refit, compensation
from graphprune.moments import InputStats
from graphprune.plan import plan_from_units
from graphprune.ridge import GRID, RIDGE, choose_ridge


def _moments(x: torch.Tensor) -> InputStats:
    x = x.double()
    return InputStats(len(x), x.sum(0).numpy(), x.pow(2).sum(0).numpy(), (x.T @ x).numpy())


def _with_fold(x: torch.Tensor, odd: torch.Tensor) -> InputStats:
    whole = _moments(x)
    return InputStats(whole.count, whole.sum, whole.sumsq, whole.gram, fold=_moments(odd))


def _held_out_error(w, b, fit: torch.Tensor, test: torch.Tensor, keep, ridge, with_bias: bool) -> float:
    """Refit with compensate's own solver on ``fit``'s moments; the squared error on ``test``'s rows."""
    w_new, b_new = _refit(w, b, _moments(fit), keep, ridge, with_bias=with_bias)
    target = test.double() @ w.T + (b if b is not None else 0.0)
    got = test.double()[:, keep] @ w_new[:, keep].T + (b_new if with_bias else 0.0)
    return float((target - got).pow(2).sum())


def _data(rows: int, width: int, seed: int) -> torch.Tensor:
    """Channels that are noisy mixtures of a few factors (partly predictable from each other)."""
    g = torch.Generator().manual_seed(seed)
    factors = torch.randn(rows, 4, generator=g)
    return factors @ torch.randn(4, width, generator=g) + 0.5 * torch.randn(rows, width, generator=g) + 1.0


@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("rows", [24, 400])
def test_the_choice_is_the_least_two_fold_error_of_the_refit_on_explicit_rows(rows: int, with_bias: bool) -> None:
    x = _data(rows, 16, seed=rows)
    even, odd = x[0::2], x[1::2]
    g = torch.Generator().manual_seed(3)
    w, b = torch.randn(5, 16, generator=g).double(), torch.randn(5, generator=g).double()
    b = b if with_bias else None
    keep = np.arange(0, 16, 2)
    brute = [_held_out_error(w, b, even, odd, keep, r, with_bias) + _held_out_error(w, b, odd, even, keep, r, with_bias)
             for r in GRID]
    assert max(brute) > 1.01 * min(brute)  # the damping matters here
    assert choose_ridge(w, _with_fold(x, odd), keep, with_bias) == GRID[int(np.argmin(brute))]


def test_noise_is_damped_fully_and_copies_are_refit_freely() -> None:
    """Removed channels that nothing kept predicts: a refit only fits noise, so the damping is the
    grid's largest. Removed channels that copy kept ones: the refit recovers them, barely damped."""
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 40, generator=g).double()
    keep = np.arange(20)
    noise = torch.randn(60, 40, generator=g)
    assert choose_ridge(w, _with_fold(noise, noise[1::2]), keep) == GRID[-1]
    base = torch.randn(2000, 20, generator=g)
    copies = torch.cat([base, base + 1e-3 * torch.randn(2000, 20, generator=g)], 1)
    assert choose_ridge(w, _with_fold(copies, copies[1::2]), keep) <= GRID[1]


def test_calibration_keeps_the_odd_batches_apart_and_one_batch_has_no_fold() -> None:
    mlp = nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 3))
    groups = graphprune.find_groups(mlp, torch.randn(2, 4))
    batches = [torch.randn(n, 4) for n in (8, 5, 8, 7)]
    seen = graphprune.calibrate(mlp, groups, batches, needs=("gram",)).inputs["2"]
    h = torch.relu(mlp[0](torch.cat([batches[1], batches[3]]))).detach().double()
    assert seen.fold.count == 12 and seen.count == 28
    np.testing.assert_allclose(seen.fold.gram, (h.T @ h).numpy(), rtol=1e-6, atol=1e-8)
    one = graphprune.calibrate(mlp, groups, batches[:1], needs=("gram",)).inputs["2"]
    assert one.fold is None
    assert choose_ridge(mlp[2].weight.detach().double(), one, np.arange(5)) == RIDGE


def test_compensation_reports_the_dampings_it_chose() -> None:
    mlp = nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 3))
    groups = graphprune.find_groups(mlp, torch.randn(2, 4))
    (g,) = groups.prunable
    plan = plan_from_units(mlp, [(g, [1, 4])], {}, groups)
    stats = graphprune.calibrate(mlp, groups, [torch.randn(16, 4) for _ in range(4)], needs=("gram",))
    auto = compensation(mlp, plan, groups, stats, "lstsq")
    assert set(auto.ridges) == {"2"} and auto.ridges["2"] in GRID
    assert any("cross-validation" in n for n in auto.notes)
    fixed = compensation(mlp, plan, groups, stats, "lstsq", ridge=0.01)
    assert dict(fixed.ridges) == {"2": 0.01} and not any("cross-validation" in n for n in fixed.notes)


def test_shrink_passes_a_fixed_ridge_through_and_refuses_a_bad_one() -> None:
    mlp = nn.Sequential(nn.Linear(4, 40), nn.ReLU(), nn.Linear(40, 3))
    batches = [torch.randn(16, 4) for _ in range(4)]
    outputs = {}
    for ridge in (None, 0.5):
        small, report = graphprune.shrink(mlp, 0.3, tolerance=0.05, example_inputs=batches[0], calibration=batches, scorer="activation",
                                          compensate="lstsq", ridge=ridge, return_report=True)
        outputs[ridge] = small(batches[0])
        assert any("cross-validation" in n for n in report.notes) is (ridge is None)
    groups = graphprune.find_groups(mlp, batches[0])
    stats = graphprune.calibrate(mlp, groups, batches, needs=("gram",))
    plan = graphprune.shrink(mlp, 0.3, tolerance=0.05, example_inputs=batches[0], calibration=batches, scorer="activation",
                             compensate="lstsq", ridge=0.5, return_report=True)[1].plan
    want = graphprune.apply_plan_(copy.deepcopy(mlp), plan, groups.traced.inputs,
                                  compensation=compensation(mlp, plan, groups, stats, "lstsq", ridge=0.5))
    torch.testing.assert_close(outputs[0.5], want(batches[0]))
    for bad in (-1.0, "big", True):
        with pytest.raises(graphprune.ConfigError, match=r"ridge=.* must be a number >= 0"):
            graphprune.shrink(mlp, 0.3, tolerance=0.05, example_inputs=batches[0], calibration=batches, compensate="lstsq", ridge=bad)
