"""Tests for graphprune/rules/reduction.py (the ``dim`` argument found by name) and the expand_as rule
in shape.py, both met in timm's XCA attention (``F.normalize(q, dim=-1)``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import graphprune
from graphprune.testing import assert_prune_matches


class NormOverTokens(nn.Module):
    """L2-normalise each channel over the tokens, then scale by the per-token channel norm."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(8, 64), nn.Linear(64, 4)

    def forward(self, x):
        h = F.normalize(self.fc1(x), dim=1)  # linalg_vector_norm(h, 2.0, [1]): ord comes before dim
        return self.fc2(h * torch.norm(h, p=2, dim=2, keepdim=True))


class TokenNormOnly(NormOverTokens):
    def forward(self, x):
        return self.fc2(F.normalize(self.fc1(x), dim=1))  # its expand_as couples channels exactly


X = torch.randn(2, 5, 8)


def _hidden(model):
    return next(g for g in graphprune.find_groups(model, X) if any(m.fqn == "fc1.weight" and m.dim == 0
                                                                   for m in g.members))


def test_norm_with_ord_before_dim_reduces_the_right_dim():
    assert "linalg_vector_norm" in (_hidden(NormOverTokens()).inexact or "")  # only the dim=2 norm
    assert _hidden(TokenNormOnly()).prunable and _hidden(TokenNormOnly()).inexact is None


def test_shrink_through_norms():
    model = NormOverTokens().eval()
    small = graphprune.shrink(model, 0.3, example_inputs=X)
    assert small(X).shape == (2, 5, 4)
    assert abs(1 - graphprune.count_params(small) / graphprune.count_params(model) - 0.3) <= 0.01


def test_oracle_on_token_norm():
    assert_prune_matches(TokenNormOnly(), X)
