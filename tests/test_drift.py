"""Tests for graphprune/drift.py and what reads it: the drift sums against ones computed directly,
output rows lined up through a plan's kept indices, and criteria that judge a unit against the
reference's output (a unit that is the whole error costs nothing to remove)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import graphprune
from graphprune.drift import Reference, reference_to
from graphprune.plan import plan_from_units
from graphprune.scores import score

from .calib_models import WIDTH, Mlp

EXTRA = 3  # the hidden unit the drifted Mlp adds to fc2's output, and the reference does not


def _drifted() -> tuple[Mlp, Mlp]:
    """(reference, current): the same Mlp, except that fc2 reads unit EXTRA only in the current one."""
    reference = Mlp()
    with torch.no_grad():
        reference.fc2.weight[:, EXTRA] = 0.0
    current = copy.deepcopy(reference)
    with torch.no_grad():
        current.fc2.weight[:, EXTRA] = torch.tensor([1.5, -2.0, 0.7])
    return reference, current


def _stats(current, reference, needs=("gram",)):
    groups = graphprune.find_groups(current, torch.randn(2, 4))
    ref = None if reference is None else Reference(reference)
    return groups, graphprune.calibrate(current, groups, Mlp.data(), needs=needs, reference=ref)


def test_drift_sums_equal_the_ones_computed_directly() -> None:
    reference, current = _drifted()
    _, stats = _stats(current, reference)
    x = torch.cat(Mlp.data())
    h = torch.relu(current.fc1(x)).double()
    e = (current(x) - reference(x)).double()
    seen = stats.inputs["fc2"]
    assert np.abs(seen.drift).max() > 1e-2  # there is drift to measure
    np.testing.assert_allclose(seen.drift, (e.T @ h).detach().numpy(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(seen.drift_sum, e.sum(0).detach().numpy(), rtol=1e-6, atol=1e-9)


def test_without_a_reference_nothing_is_added_and_hooks_are_gone() -> None:
    reference, current = _drifted()
    _, stats = _stats(current, None)
    assert stats.inputs["fc2"].drift is None and not stats.taylor_drift
    _stats(current, reference, needs=("gram", "grads"))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in [*current.modules(), *reference.modules()])


@pytest.mark.parametrize("criterion", ["activation", "fluctuation", "obs"])
def test_a_unit_that_is_the_whole_error_scores_zero_against_the_reference(criterion: str) -> None:
    reference, current = _drifted()
    groups, stats = _stats(current, reference)
    (g,) = [g for g in groups.prunable if g.width == WIDTH]
    plain = score(current, groups, criterion, _stats(current, None)[1]).raw[g.id]
    judged = score(current, groups, criterion, stats).raw[g.id]
    assert plain[EXTRA] > 0.1 * plain.max()  # on its own output, EXTRA matters
    # removing it gives back the reference's output (obs: up to the refit's ridge damping)
    assert judged[EXTRA] <= (1e-3 * plain[EXTRA] if criterion == "obs" else 1e-6)


def test_taylor_against_the_reference_scores_the_erroneous_unit_lower() -> None:
    reference, current = _drifted()
    groups, stats = _stats(current, reference, needs=("grads",))
    (g,) = [g for g in groups.prunable if g.width == WIDTH]
    plain = score(current, groups, "taylor", _stats(current, None, needs=("grads",))[1]).raw[g.id]
    judged = score(current, groups, "taylor", stats).raw[g.id]
    assert stats.taylor_drift[g.id][EXTRA] > 0  # removing EXTRA shrinks the distance to the reference
    # a first-order estimate from random projections: lower, not exactly zero
    assert judged[EXTRA] < 0.5 * plain[EXTRA]


def test_reference_rows_follow_the_plans_kept_outputs() -> None:
    """After fc1 lost hidden units, its outputs line up with the original's kept rows: no drift."""
    original = Mlp()
    groups = graphprune.find_groups(original, torch.randn(2, 4))
    (g,) = [g for g in groups.prunable if g.width == WIDTH]
    plan = plan_from_units(original, [(g, [0, 4, 9])], {}, groups)
    pruned = graphprune.apply_plan_(copy.deepcopy(original), plan, groups.traced.inputs)
    ref = reference_to(original, pruned, plan.keep)
    assert list(ref.rows["fc1"]) == [1, 2, 3, 5, 6, 7, 8]
    stats = graphprune.calibrate(pruned, graphprune.find_groups(pruned, torch.randn(2, 4)), Mlp.data(),
                                 needs=("inputs",), modules={"fc1": -1}, reference=ref)
    np.testing.assert_allclose(stats.inputs["fc1"].drift, 0.0, atol=1e-4)  # float32 rounding only
    assert np.abs(stats.inputs["fc2"].drift_sum).max() > 1e-1  # fc2 lost inputs: its output moved


def test_outputs_that_cannot_be_lined_up_get_no_drift() -> None:
    original = Mlp()
    narrow = copy.deepcopy(original)
    narrow.fc1 = nn.Linear(4, 7)  # no plan says which of the original's rows it kept
    narrow.fc2 = nn.Linear(7, 3)
    ref = reference_to(original, narrow, {})
    assert ref.rows["fc1"] == ()
    stats = graphprune.calibrate(narrow, None, Mlp.data(), needs=("inputs",), modules={"fc1": -1, "fc2": -1},
                                 reference=ref)
    assert stats.inputs["fc1"].drift is None and stats.inputs["fc2"].drift is not None
