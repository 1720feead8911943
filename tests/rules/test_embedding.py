"""Tests for graphprune/rules/embedding.py: embedding dim prunable, tied weights stay tied."""
from __future__ import annotations

import torch

import graphprune

from ..models import TiedLM

IDS = torch.randint(0, 20, (2, 7))


def test_tied_weight_is_one_member_and_stays_tied() -> None:
    (group,) = graphprune.find_groups(TiedLM(), IDS).prunable
    assert [m.fqn for m in group.members].count("emb.weight") == 1
    small = graphprune.shrink(TiedLM(), 0.3, example_inputs=IDS, tolerance=0.2)
    assert small.lm_head.weight is small.emb.weight and small.emb.embedding_dim < 12


def test_vocabulary_rows_are_never_pruned() -> None:
    small = graphprune.shrink(TiedLM(), 0.3, example_inputs=IDS, tolerance=0.2)
    assert small.emb.num_embeddings == 20 and small(IDS).shape == (2, 7, 20)
