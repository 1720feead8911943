"""Tests for graphprune/criteria/refit.py: structured OBS costs against a direct least-squares
refit, the greedy order on units that copy each other, and the zero-then-prune oracle with the
refit it assumes."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
import transformers
from torch import nn

import graphprune
from graphprune.compensate import compensation
from graphprune.criteria import refit
from graphprune.plan import plan_from_units

TWINS = 4  # units i and i + TWINS read the same row of fc1


class Twins(nn.Module):
    """x -> Linear(4, 8) -> ReLU -> Linear(8, 3), hidden units i and i + 4 identical on every input,
    each with large outgoing weights: fluctuation finds every unit costly, a refit finds half free."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(4, 2 * TWINS), nn.Linear(2 * TWINS, 3)
        with torch.no_grad():
            self.fc1.weight[TWINS:] = self.fc1.weight[:TWINS]
            self.fc1.bias[TWINS:] = self.fc1.bias[:TWINS] + 0.5
            self.fc1.bias[:TWINS] += 0.5  # every unit fires on most inputs
            self.fc2.weight.mul_(4.0)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))

    @staticmethod
    def data() -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(1)
        return [torch.randn(64, 4, generator=g) for _ in range(4)]


def _refit_error(x: torch.Tensor, w: torch.Tensor, drop: list[int]) -> float:
    """Summed squared error of refitting ``w``'s other columns (and a bias) for dropping ``drop``."""
    xc = x - x.mean(0)
    keep = [j for j in range(x.shape[1]) if j not in drop]
    target = xc @ w.T
    sol = torch.linalg.lstsq(xc[:, keep], target).solution
    return float((target - xc[:, keep] @ sol).pow(2).sum())


@pytest.mark.parametrize("per_unit", [1, 3])
def test_costs_are_the_refit_error_before_and_after_a_removal(monkeypatch, per_unit: int) -> None:
    monkeypatch.setattr(refit, "RIDGE", 0.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 12, generator=g, dtype=torch.float64) @ torch.randn(12, 12, generator=g, dtype=torch.float64)
    w = torch.randn(5, 12, generator=g, dtype=torch.float64)
    mean = x.mean(0)
    cov = x.T @ x / len(x) - torch.outer(mean, mean)
    idx = np.arange(12).reshape(-1, per_unit)
    layer = refit._Consumer(w, cov, idx, len(x))
    cols = lambda units: [int(j) for u in units for j in idx[u]]  # noqa: E731
    first = layer.costs(torch.arange(len(idx)))
    want = [_refit_error(x, w, cols([u])) for u in range(len(idx))]
    np.testing.assert_allclose(first.numpy(), want, rtol=1e-6)
    layer.remove(torch.tensor([1]))
    after = layer.costs(torch.tensor([u for u in range(len(idx)) if u != 1]))
    base = _refit_error(x, w, cols([1]))
    want = [_refit_error(x, w, cols([1, u])) - base for u in range(len(idx)) if u != 1]
    np.testing.assert_allclose(after.numpy(), want, rtol=1e-5)


def _scores(model: nn.Module, scorer: str) -> tuple[np.ndarray, object, object, object]:
    groups = graphprune.find_groups(model, torch.randn(2, 4))
    (group,) = groups.prunable
    stats = graphprune.calibrate(model, groups, Twins.data(), needs=("gram",))
    return graphprune.score(model, groups, scorer, stats).raw[group.id], groups, group, stats


def test_greedy_order_finds_one_of_every_twin_free_where_fluctuation_finds_none() -> None:
    obs, _, _, _ = _scores(Twins(), "obs")
    cheap = set(np.argsort(obs)[:TWINS].tolist())
    assert {u % TWINS for u in cheap} == set(range(TWINS))  # one of each pair
    rest = np.delete(obs, sorted(cheap))
    assert obs[sorted(cheap)].max() < 0.05 * rest.min()  # its twin stands in (up to the refit's damping)
    fluct, _, _, _ = _scores(Twins(), "fluctuation")
    assert fluct.min() > 0.1 * np.median(fluct)  # judged alone, no unit looks spare


def test_removing_the_units_obs_finds_free_with_the_refit_leaves_the_output_unchanged() -> None:
    model = Twins()
    obs, groups, group, stats = _scores(model, "obs")
    plan = plan_from_units(model, [(group, np.argsort(obs)[:TWINS].tolist())], {}, groups)
    comp = compensation(model, plan, groups, stats, "lstsq", ridge=0.0)
    small = graphprune.apply_plan_(copy.deepcopy(model), plan, groups.traced.inputs, compensation=comp)
    x = torch.cat(Twins.data())
    assert small.fc2.in_features == TWINS
    torch.testing.assert_close(small(x), model(x), rtol=1e-4, atol=1e-4)


def test_scores_rise_along_the_greedy_order_in_any_slicing(monkeypatch) -> None:
    monkeypatch.setattr(refit, "CHUNKS", 1)  # every unit in one step: the order is the first costs'
    coarse, _, _, _ = _scores(Twins(), "obs")
    monkeypatch.setattr(refit, "CHUNKS", 1 << 10)
    fine, _, _, _ = _scores(Twins(), "obs")
    for s in (coarse, fine):
        assert np.isfinite(s).all() and len(np.unique(np.argsort(s))) == 2 * TWINS
    assert {u % TWINS for u in np.argsort(fine)[:TWINS]} == set(range(TWINS))
    assert len({u % TWINS for u in np.argsort(coarse)[:TWINS]}) < TWINS  # judged at once, twins go together


def test_shrink_with_obs_and_lstsq_prunes_heads_and_mlp_of_a_bert() -> None:
    cfg = transformers.BertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64, num_hidden_layers=2,
                                  vocab_size=50)
    model = transformers.BertModel(cfg).eval()
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, 50, (4, 12), generator=g)} for _ in range(3)]
    small, report = graphprune.shrink(model, 0.3, scorer="obs", compensate="lstsq", calibration=batches,
                                      prune=("heads", "mlp"), return_report=True, tolerance=0.05)
    assert type(small) is type(model)
    assert 0.25 < 1 - graphprune.count_params(small) / graphprune.count_params(model) < 0.35
    assert report.criterion == "obs"
    out = small(**batches[0]).last_hidden_state
    assert out.shape == (4, 12, 32) and torch.isfinite(out).all()


def test_obs_without_the_refit_it_assumes_warns() -> None:
    kw = dict(scorer="obs", calibration=Twins.data(), example_inputs=torch.randn(2, 4), tolerance=0.2)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graphprune.shrink(Twins(), 0.3, **kw)
    assert any("compensate='lstsq'" in str(w.message) for w in caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        graphprune.shrink(Twins(), 0.3, compensate="lstsq", **kw)
    assert not any("kept weights are not refit" in str(w.message) for w in caught)


def test_a_consumer_the_refit_does_not_reach_costs_what_fluctuation_says() -> None:
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 3, 8, 8, generator=g) for _ in range(3)]
    groups = graphprune.find_groups(model, batches[0])
    (group,) = groups.prunable
    stats = graphprune.calibrate(model, groups, batches, needs=("gram",))
    obs, fluct = (graphprune.score(model, groups, s, stats).raw[group.id] for s in ("obs", "fluctuation"))
    np.testing.assert_allclose(obs, fluct, rtol=1e-9)  # a 3x3 conv gets the mean only: nothing stands in


def test_obs_with_lstsq_prunes_a_conv_net_with_a_pointwise_consumer() -> None:
    from ..calib_models import ConvBn
    model = ConvBn().eval()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(8, 3, 8, 8, generator=g) for _ in range(3)]
    small = graphprune.shrink(model, 0.3, scorer="obs", compensate="lstsq", calibration=batches, tolerance=0.1,
                              example_inputs=batches[0])
    assert small.c2.in_channels < 8 and torch.isfinite(small(batches[0])).all()


class TwoReaders(nn.Module):
    """The hidden channels are read by a 1x1 conv, which the refit reaches, and by a 3x3 one."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.p, self.k = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.p(h) + self.k(h)


def test_a_group_the_refit_reaches_only_in_part_is_judged_by_fluctuation_throughout() -> None:
    model = TwoReaders()
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(4, 3, 8, 8, generator=g) for _ in range(3)]
    groups = graphprune.find_groups(model, batches[0])
    (group,) = [grp for grp in groups.prunable if grp.width == 8]
    stats = graphprune.calibrate(model, groups, batches, needs=("gram",))
    obs, fluct = (graphprune.score(model, groups, s, stats).raw[group.id] for s in ("obs", "fluctuation"))
    np.testing.assert_allclose(obs, fluct, rtol=1e-9)



def _hidden(rows: int) -> tuple[nn.Module, object, object, object]:
    """64 hidden channels read by a Linear, calibrated on ``rows`` rows in one batch."""
    model = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4))
    data = [torch.randn(rows, 8, generator=torch.Generator().manual_seed(0))]
    groups = graphprune.find_groups(model, data[0])
    (group,) = groups.prunable
    return model, groups, group, graphprune.calibrate(model, groups, data, needs=("gram",))


def test_a_consumer_seen_on_no_more_rows_than_channels_is_judged_by_fluctuation() -> None:
    model, groups, group, stats = _hidden(rows=16)
    obs, fluct = (graphprune.score(model, groups, s, stats).raw[group.id] for s in ("obs", "fluctuation"))
    np.testing.assert_allclose(obs, fluct, rtol=1e-9)
    # why: the covariance of 16 rows has rank 15, and a refit would call nearly every channel free
    seen = stats.inputs["2"]
    mean = torch.tensor(seen.mean)
    cov = torch.tensor(seen.gram) / seen.count - torch.outer(mean, mean)
    raw = refit._Consumer(model[2].weight.detach().double(), cov, np.arange(64)[:, None], seen.count)
    assert (raw.costs(torch.arange(64)).numpy() < 0.01 * np.median(fluct)).mean() > 0.9
    model, groups, group, stats = _hidden(rows=256)  # enough rows: obs judges by the refit again
    obs, fluct = (graphprune.score(model, groups, s, stats).raw[group.id] for s in ("obs", "fluctuation"))
    assert not np.allclose(obs, fluct, rtol=1e-3)
