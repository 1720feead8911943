"""Tests for graphprune/recalibrate.py: BatchNorm statistics re-estimated by hand and through
``shrink(..., recalibrate_bn=True)``, one-shot and after every round."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn

import graphprune
import graphprune.schedule.rounds as rounds
from graphprune.config import ShrinkConfig

from .calib_models import ConvBn, Mlp


def two_bn() -> nn.Module:
    """Two conv+BN stages: pruning the first moves what the second BN sees."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4)).eval()


DATA = [torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(i)) + 1 for i in range(3)]
OPTS = dict(example_inputs=DATA[0], tolerance=0.05)


def bn_buffers(model: nn.Module) -> list[torch.Tensor]:
    return [t for m in model.modules() if isinstance(m, nn.BatchNorm2d) for t in (m.running_mean, m.running_var)]


def test_recalibrate_bn_matches_the_batch_statistics() -> None:
    model = ConvBn().eval()
    graphprune.recalibrate_bn_(model, DATA)
    feats = torch.cat([model.c1(x) for x in DATA])
    torch.testing.assert_close(model.bn.running_mean, feats.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    assert not model.training and model.bn.momentum == 0.1
    with pytest.raises(graphprune.CalibrationError, match="no batches"):
        graphprune.recalibrate_bn_(model, [])


@pytest.mark.parametrize("scorer", ["l2", "activation"])
def test_shrink_recalibrates_what_it_pruned(scorer: str) -> None:
    """The same as pruning, then recalibrate_bn_ by hand, and not what pruning alone leaves; a
    generator of batches is read by calibration and by the re-estimation alike."""
    model = two_bn()
    plain = graphprune.shrink(model, 0.5, scorer=scorer, calibration=DATA if scorer != "l2" else None, **OPTS)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the data is read: no "calibration= reads nothing" warning
        small, report = graphprune.shrink(model, 0.5, scorer=scorer, calibration=(x for x in DATA),
                                          recalibrate_bn=True, return_report=True, **OPTS)
    by_hand = graphprune.recalibrate_bn_(copy.deepcopy(plain), DATA)
    for mine, theirs, before in zip(bn_buffers(small), bn_buffers(by_hand), bn_buffers(plain)):
        torch.testing.assert_close(mine, theirs)
        assert not torch.allclose(mine, before)
    torch.testing.assert_close(small(DATA[1]), by_hand(DATA[1]))
    assert any("BatchNorm running statistics of 2 layers re-estimated" in n for n in report.notes)


def test_every_round_recalibrates(monkeypatch: pytest.MonkeyPatch) -> None:
    """With steps=3 the statistics are re-estimated after each round, so round 2 scores a model
    whose BatchNorms fit it; the last re-estimation is the final model's."""
    seen: list[list[torch.Tensor]] = []
    real = rounds.batch_norm_after_

    def spy(model, config, batches):
        note = real(model, config, batches)
        seen.append([t.clone() for t in bn_buffers(model)])
        return note
    monkeypatch.setattr(rounds, "batch_norm_after_", spy)
    small, report = graphprune.shrink(two_bn(), 0.5, steps=3, scorer="activation", calibration=DATA,
                                      recalibrate_bn=True, return_report=True, **OPTS)
    assert len(seen) == len([r for r in report.rounds if r.plan is not None]) == 3
    by_hand = graphprune.recalibrate_bn_(copy.deepcopy(small), DATA)
    for mine, theirs in zip(seen[-1], bn_buffers(by_hand)):
        torch.testing.assert_close(mine, theirs)


@pytest.mark.parametrize("steps", [1, 3])
def test_without_the_option_the_report_points_at_it(steps: int) -> None:
    """Data given, BatchNorms present, recalibrate_bn left off: the statistics stay, and a note says
    what the option would do; without data there is nothing to point at."""
    model = two_bn()
    small, report = graphprune.shrink(model, 0.5, scorer="activation", calibration=DATA, steps=steps,
                                      return_report=True, **OPTS)
    assert any("2 BatchNorm layers keep the statistics" in n for n in report.notes), report.notes
    # sliced, not re-estimated: every value is one the unpruned BatchNorm held
    assert set(small[4].running_var.tolist()) <= set(model[4].running_var.tolist())
    _, plain = graphprune.shrink(model, 0.5, return_report=True, **OPTS)
    assert not any("BatchNorm" in n for n in plain.notes)


@pytest.mark.parametrize("recalibrate", [False, True])
def test_a_pruner_step_carries_the_batch_norm_note(recalibrate: bool) -> None:
    """Each ``Pruner.step()`` says what its report would: re-estimated, or kept from the unpruned model."""
    pruner = graphprune.Pruner(two_bn(), 0.5, steps=2, scorer="activation", calibration=DATA,
                               recalibrate_bn=recalibrate, **OPTS)
    wanted = "re-estimated" if recalibrate else "keep the statistics"
    for _ in range(2):
        step = pruner.step()
        assert step.plan is not None and any(wanted in n for n in step.notes), step.notes


def test_recalibrating_needs_data() -> None:
    with pytest.raises(graphprune.CalibrationError, match="recalibrate_bn=True .* pass calibration="):
        graphprune.shrink(two_bn(), 0.5, recalibrate_bn=True, **OPTS)
    with pytest.raises(graphprune.CalibrationError, match="recalibrate_bn=True"):
        graphprune.Pruner(two_bn(), 0.5, recalibrate_bn=True, example_inputs=DATA[0])
    with pytest.raises(graphprune.ConfigError, match="recalibrate_bn='yes' must be True or False"):
        ShrinkConfig(ratio=0.5, recalibrate_bn="yes")


def test_a_model_without_batch_norm_is_told_so() -> None:
    x = torch.randn(4, 4)
    _, report = graphprune.shrink(Mlp(), 0.2, example_inputs=x, calibration=[x], recalibrate_bn=True,
                                  return_report=True, tolerance=0.1)
    assert any("no BatchNorm" in n for n in report.notes)


def test_a_failing_re_estimation_puts_the_statistics_back() -> None:
    """Batches the pruned forward cannot take (l2 reads no data before surgery): a clear error, and
    the in-place model keeps the statistics surgery left it."""
    model = two_bn()
    expected = graphprune.shrink(model, 0.5, **OPTS)
    with pytest.raises(graphprune.CalibrationError, match="recalibrate_bn=False"):
        graphprune.shrink(model, 0.5, calibration=[torch.randn(2, 5, 8, 8)], recalibrate_bn=True, inplace=True,
                          **OPTS)
    for mine, theirs in zip(bn_buffers(model), bn_buffers(expected)):
        torch.testing.assert_close(mine, theirs)


def test_the_option_survives_the_config_round_trip() -> None:
    config = ShrinkConfig(ratio=0.5, recalibrate_bn=True)
    assert ShrinkConfig.from_dict(config.to_dict()) == config
