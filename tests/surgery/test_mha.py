"""Tests for graphprune/surgery/mha.py: nn.MultiheadAttention heads and widths prune exactly."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import graphprune
from graphprune.surgery import PrunedMultiheadAttention
from graphprune.testing import assert_prune_matches

from ..models import TorchMHA


class CrossMHA(nn.Module):
    """Sequence-first MHA with key/value widths of their own, bias_k/bias_v and a zero attention slot."""

    def __init__(self):
        super().__init__()
        self.q, self.k, self.v = nn.Linear(6, 16), nn.Linear(6, 12), nn.Linear(6, 10)
        self.attn = nn.MultiheadAttention(16, 4, kdim=12, vdim=10, add_bias_kv=True, add_zero_attn=True)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        y, _ = self.attn(self.q(x), self.k(x), self.v(x), need_weights=False)
        return self.head(y)


X, XS = torch.randn(2, 5, 6), torch.randn(5, 2, 6)


def test_heads_prune_exactly_and_the_module_stays_a_multihead_attention() -> None:
    groups = graphprune.find_groups(TorchMHA(), X)
    heads = [g for g in groups.prunable if g.unit == "head"]
    assert len(heads) == 1 and heads[0].width == 4
    assert assert_prune_matches(TorchMHA(), X, kinds=("heads",)).groups_checked == 1
    small = graphprune.shrink(TorchMHA().eval(), 0.3, example_inputs=X, tolerance=0.2, prune=("heads",))
    assert isinstance(small.attn, nn.MultiheadAttention) and small.attn.num_heads < 4
    assert type(small.attn) is PrunedMultiheadAttention  # inner width (heads * 4) != embed_dim (16)
    assert set(small.attn.state_dict()) == set(TorchMHA().attn.state_dict())


def test_key_value_widths_bias_kv_and_zero_attention_prune_exactly() -> None:
    result = assert_prune_matches(CrossMHA(), XS)
    assert result.groups_checked >= 3  # heads, key width, value width
    small = graphprune.shrink(CrossMHA().eval(), 0.3, example_inputs=XS, tolerance=0.2)
    assert small(XS).shape == (5, 2, 3) and small.attn.bias_k.shape[-1] == small.attn.num_heads * 4


def test_the_plain_class_is_kept_where_torch_allows_it() -> None:
    model = TorchMHA().eval()
    groups = graphprune.find_groups(model, X)
    heads = next(g for g in groups.prunable if g.unit == "head")
    hidden = next(g for g in groups.prunable if g.unit == "channel" and g.width == 16)
    plan = graphprune.plan.plan_from_units(model, [(heads, [0]), (hidden, list(range(4)))], {}, groups)
    small = graphprune.apply_plan_(copy.deepcopy(model), plan, X)
    assert type(small.attn) is nn.MultiheadAttention  # 3 heads of 4 == embed_dim 12: torch's forward fits
    assert (small.attn.embed_dim, small.attn.num_heads, small.attn.head_dim) == (12, 3, 4)


@pytest.mark.parametrize("batch_first", [True, False])
@pytest.mark.parametrize("need_weights,average", [(True, True), (True, False), (False, True)])
def test_subclass_forward_equals_torch(batch_first: bool, need_weights: bool, average: bool) -> None:
    torch.manual_seed(0)
    ref = nn.MultiheadAttention(8, 2, batch_first=batch_first).eval()
    sub = copy.deepcopy(ref)
    sub.__class__ = PrunedMultiheadAttention
    x = torch.randn(3, 4, 8)
    mask = torch.rand(4, 4) > 0.7 if batch_first else torch.rand(3, 3) > 0.7
    pad = torch.zeros(3 if batch_first else 4, 4 if batch_first else 3, dtype=torch.bool)
    pad[0, -1] = True
    mask.fill_diagonal_(False)
    for kwargs in ({}, {"attn_mask": mask}, {"key_padding_mask": pad}):
        want = ref(x, x, x, need_weights=need_weights, average_attn_weights=average, **kwargs)
        got = sub(x, x, x, need_weights=need_weights, average_attn_weights=average, **kwargs)
        torch.testing.assert_close(got[0], want[0], atol=1e-5, rtol=1e-5)
        assert (got[1] is None) == (want[1] is None)
        if want[1] is not None:
            torch.testing.assert_close(got[1], want[1], atol=1e-5, rtol=1e-5)


def test_failed_surgery_restores_the_class() -> None:
    model = TorchMHA().eval()
    groups = graphprune.find_groups(model, X)
    heads = next(g for g in groups.prunable if g.unit == "head")
    plan = graphprune.plan.plan_from_units(model, [(heads, [1])], {}, groups)
    broken = graphprune.Plan(**{**plan.__dict__, "output_shapes": [[9, 9]]})
    with pytest.raises(graphprune.SurgeryError):
        graphprune.apply_plan_(model, broken, X)
    assert type(model.attn) is nn.MultiheadAttention and model.attn.num_heads == 4


def test_a_pruned_attention_prunes_again_exactly() -> None:
    """A PrunedMultiheadAttention is read like torch's own module: iterative rounds (steps=) and a
    second shrink find its heads again rather than freezing them. (With add_bias_kv, CrossMHA,
    they stay frozen on the second pass: a documented limit.)"""
    x = X
    small = graphprune.shrink(TorchMHA().eval(), 0.2, example_inputs=x, tolerance=0.2)
    assert isinstance(small.attn, PrunedMultiheadAttention)
    groups = graphprune.find_groups(small, x)
    (heads,) = [g for g in groups.prunable if g.unit == "head"]
    assert heads.width == small.attn.num_heads > 1
    assert assert_prune_matches(small, x, kinds=("heads",)).groups_checked == 1
