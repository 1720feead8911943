"""Tests for graphprune/criteria/magnitude.py: l1 and l2 over parameters only, bn_scale, random."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import graphprune

from ..calib_models import ConvBn

X = torch.randn(2, 3, 8, 8)


def _bn_group(model):
    groups = graphprune.find_groups(model, X)
    (g,) = [g for g in groups.prunable if any(m.fqn == "bn.weight" for m in g.members)]
    return groups, g


@pytest.mark.parametrize("scorer", ["l1", "l2"])
def test_conv_bn_channel_with_zero_parameters_scores_exactly_zero(scorer: str) -> None:
    model = ConvBn(zero_channel=3)
    groups, g = _bn_group(model)
    assert any(m.fqn == "bn.running_var" for m in g.members)  # buffers are members, yet must not count
    raw = graphprune.score(model, groups, scorer).raw[g.id]
    assert raw[3] == 0.0 and (np.delete(raw, 3) > 0).all()


def test_bn_scale_ranks_by_gamma() -> None:
    model = ConvBn()
    groups, g = _bn_group(model)
    raw = graphprune.score(model, groups, "bn_scale").raw[g.id]
    np.testing.assert_allclose(raw, model.bn.weight.detach().abs().numpy(), rtol=1e-6)


def test_bn_scale_falls_back_to_l2_where_no_norm_sees_the_group() -> None:
    model = ConvBn()
    groups = graphprune.find_groups(model, X)
    scores = graphprune.score(model, groups, "bn_scale")
    (c2,) = [g for g in groups.prunable if any(m.fqn == "c2.weight" and m.dim == 0 for m in g.members)]
    assert c2.id in scores.fallback
    l2 = graphprune.score(model, groups, "l2").raw[c2.id]
    judged = [v.mean() for i, v in scores.raw.items() if i not in scores.fallback]
    # l2's order inside the group, at the scale of the groups bn_scale did judge
    np.testing.assert_allclose(scores.raw[c2.id], l2 * np.median(judged) / l2.mean())


def test_random_depends_on_seed_only() -> None:
    model = ConvBn()
    groups, g = _bn_group(model)
    a, b = (graphprune.score(model, groups, "random", seed=s).raw[g.id] for s in (0, 1))
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, graphprune.score(model, groups, "random", seed=0).raw[g.id])
