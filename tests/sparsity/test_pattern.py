"""Tests for graphprune/sparsity/pattern.py: the masks a score tensor gives, on hand-checked cases."""
from __future__ import annotations

import pytest
import torch

from graphprune.errors import ConfigError
from graphprune.sparsity.layout import Layout
from graphprune.sparsity.pattern import Pattern, global_masks, n_m, parse_pattern, unstructured

LINEAR = Layout(in_axis=1, out_axis=0, input_dim=-1)


def test_n_m_keeps_the_n_highest_of_each_m_along_the_input_axis() -> None:
    scores = torch.tensor([[1., 4., 3., 2., 9., 8., 7., 6.]])
    assert n_m(scores, Pattern(2, 4), LINEAR).int().tolist() == [[0, 1, 1, 0, 1, 1, 0, 0]]
    transposed = Layout(in_axis=0, out_axis=1, input_dim=-1)  # GPT-2's Conv1D: (in, out)
    assert n_m(scores.T, Pattern(1, 4), transposed).int().T.tolist() == [[0, 1, 0, 0, 1, 0, 0, 0]]


def test_ties_go_to_the_earlier_index_so_masks_repeat() -> None:
    scores = torch.zeros(2, 4)
    assert unstructured(scores, 0.5, LINEAR, per_row=True).int().tolist() == [[0, 0, 1, 1]] * 2
    assert unstructured(scores, 0.25, LINEAR, per_row=False).int().tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]


def test_global_ranking_spans_layers() -> None:
    a, b = torch.tensor([[1., 2.]]), torch.tensor([[3., 0.5, 4., 5.]])
    keep_a, keep_b = global_masks([a, b], 0.5)
    assert keep_a.int().tolist() == [[0, 0]] and keep_b.int().tolist() == [[1, 0, 1, 1]]


@pytest.mark.parametrize("bad", ["2:2", "0:4", "2-4", "dense", 4])
def test_bad_patterns_name_the_accepted_forms(bad) -> None:
    with pytest.raises(ConfigError, match="'N:M' with 0 < N < M"):
        parse_pattern(bad)
