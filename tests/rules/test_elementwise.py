"""Tests for graphprune/rules/elementwise.py: broadcasting couples only dims of equal size."""
from __future__ import annotations

import torch

from graphprune.testing import assert_prune_matches
import graphprune

from ..models import BareParams, Residual


def test_residual_add_couples_both_branches() -> None:
    groups = graphprune.find_groups(Residual(), torch.randn(1, 3, 8, 8))
    stream = next(g for g in groups.prunable if any((m.fqn, m.dim) == ("b.weight", 0) for m in g.members))
    assert {"stem.0.weight", "b.weight", "head.weight"} <= {m.fqn for m in stream.members}


def test_layer_scale_and_cls_token_join_the_stream() -> None:
    groups = graphprune.find_groups(BareParams(), torch.randn(2, 5, 6))
    stream = next(g for g in groups.prunable if any(m.fqn == "gamma" for m in g.members))
    assert {"cls", "pos", "gamma", "embed.weight"} <= {m.fqn for m in stream.members}
    assert_prune_matches(BareParams(), torch.randn(2, 5, 6))
