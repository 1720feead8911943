"""Tests for graphprune/rules/linear.py: linear, matmul with a bare weight, einsum, grouped_mm (MoE)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import graphprune
from graphprune.testing import assert_prune_matches

from ..models import SwiGLU


def test_gated_mlp_couples_gate_up_and_down() -> None:
    (group,) = graphprune.find_groups(SwiGLU(), torch.randn(2, 5, 12)).prunable
    assert {(m.fqn, m.dim) for m in group.members} == {("gate.weight", 0), ("up.weight", 0), ("down.weight", 1)}
    assert_prune_matches(SwiGLU(), torch.randn(2, 5, 12))


class Einsum(nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(4, 10))
        self.w2 = nn.Parameter(torch.randn(10, 3))

    def forward(self, x):
        return torch.einsum("bh,ho->bo", torch.relu(torch.einsum("bi,ih->bh", x, self.w1)), self.w2)


def test_einsum_letters_couple_bare_parameters() -> None:
    (group,) = graphprune.find_groups(Einsum(), torch.randn(2, 4)).prunable
    assert {(m.fqn, m.dim) for m in group.members} == {("w1", 1), ("w2", 0)}
    small = graphprune.shrink(Einsum(), 0.3, example_inputs=torch.randn(2, 4), tolerance=0.2)
    assert small.w1.shape[1] == small.w2.shape[0] < 10


TOKENS = torch.randn(12, 16)
EXPERTS, WIDTH = 4, 32


class FusedExperts(nn.Module):
    """A mixture of experts whose expert weights are fused 3D tensors (the router's topk, argsort,
    histc and index_put have rules too). transformers 5 style: tokens sorted by expert, ``offs`` from a histogram, grouped products."""

    def __init__(self, dim: int = 16):
        super().__init__()
        torch.manual_seed(0)
        self.router, self.fc = nn.Linear(dim, EXPERTS), nn.Linear(dim, 2)
        self.gate_up = nn.Parameter(torch.randn(EXPERTS, 2 * WIDTH, dim) / 4)
        self.down = nn.Parameter(torch.randn(EXPERTS, dim, WIDTH) / 6)

    def forward(self, x):
        expert = self.router(x).topk(1, dim=-1).indices.flatten()
        order = expert.argsort()
        offs = torch.histc(expert.float(), bins=EXPERTS, min=0, max=EXPERTS - 1).cumsum(0).to(torch.int32)
        gate, up = torch._grouped_mm(x[order], self.gate_up.transpose(-2, -1), offs=offs).chunk(2, dim=-1)
        y = torch._grouped_mm(F.silu(gate) * up, self.down.transpose(-2, -1), offs=offs)
        out = torch.empty_like(y)
        out[order] = y
        return self.fc(x + out)


def test_expert_width_is_one_group_over_all_experts_and_experts_are_kept() -> None:
    groups = graphprune.find_groups(FusedExperts(), TOKENS)
    assert groups.coupling.unsupported == []
    (width,) = [g for g in groups.prunable if g.width == WIDTH]
    members = {(m.fqn, m.dim): m for m in width.members}
    assert set(members) == {("gate_up", 1), ("down", 2)} and "in" in members["down", 2].roles
    assert members["gate_up", 1].indices[3].tolist() == [3, WIDTH + 3]  # gate and up halves in parallel
    experts = [g for g in groups if any((m.fqn, m.dim) == ("gate_up", 0) for m in g.members)]
    assert experts and all("experts are kept" in (g.frozen or "") for g in experts)


def test_pruned_experts_compute_what_the_zeroed_ones_did() -> None:
    # a quarter of 32 keeps 24 neurons: grouped_mm kernels want rows of 16 bytes
    result = assert_prune_matches(FusedExperts(), TOKENS, fraction=0.25)
    assert result.groups_checked == 1 and result.params_removed > 0


class ActivationProducts(nn.Module):
    """Hidden units read by a weight (``b``) and by a product with another activation: a Gram
    matrix (``h @ h.T``), a bilinear similarity (einsum), or a scale computed from a parameter
    alone (``h @ (w * s).T``, weight-like: still a linear map of ``h``)."""

    def __init__(self, how: str):
        super().__init__()
        torch.manual_seed(0)
        self.how, self.a, self.b = how, nn.Linear(8, 16), nn.Linear(16, 4)
        self.w, self.s = nn.Parameter(torch.randn(4, 16)), nn.Parameter(torch.rand(16) + 0.5)

    def forward(self, x):
        h = torch.relu(self.a(x)) + 0.1  # a removed unit is 0.1, not 0: its product term stays
        if self.how == "gram":
            return self.b(h) + (h @ h.T).diagonal().unsqueeze(1)
        if self.how == "einsum":
            return self.b(h) + torch.einsum("bi,bi->b", h, h).unsqueeze(1)
        return self.b(h) + h @ (self.w * self.s).T


@pytest.mark.parametrize("how", ["gram", "einsum"])
def test_a_product_of_two_activations_over_units_is_inexact(how: str) -> None:
    """Dropping a unit drops its term of the sum, which no zeroed weight reproduces."""
    (group,) = graphprune.find_groups(ActivationProducts(how), torch.randn(4, 8)).prunable
    assert group.width == 16 and "contracted with another activation" in (group.inexact or "")


def test_a_product_with_a_weight_built_from_parameters_stays_exact() -> None:
    model = ActivationProducts("weight-like")
    (group,) = graphprune.find_groups(model, torch.randn(4, 8)).prunable
    assert group.width == 16 and group.inexact is None
    x = torch.randn(4, 8)
    small = graphprune.shrink(model, 0.3, example_inputs=x, tolerance=0.2)
    kept = [int((model.a.weight == row).all(1).nonzero()) for row in small.a.weight]
    gone = sorted(set(range(16)) - set(kept))
    with torch.no_grad():  # the removed units' terms, zeroed through both weights that read them
        model.b.weight[:, gone] = 0
        model.w[:, gone] = 0
    assert 0 < len(gone) < 16
    torch.testing.assert_close(small(x), model(x), rtol=1e-5, atol=1e-5)


def test_einsum_weights_get_roles_so_the_oracle_can_zero_them() -> None:
    assert assert_prune_matches(Einsum(), torch.randn(2, 4)).groups_checked == 1


class BilinearHead(nn.Module):
    """nn.Bilinear reading one activation twice (a quadratic form) or two different ones."""

    def __init__(self, same: bool):
        super().__init__()
        torch.manual_seed(0)
        self.same, self.a, self.a2 = same, nn.Linear(8, 16), nn.Linear(8, 10)
        self.b = nn.Bilinear(16, 16 if same else 10, 12, bias=same)
        self.c = nn.Linear(12, 3)

    def forward(self, x):
        h = F.relu(self.a(x))
        return self.c(F.relu(self.b(h, h if self.same else torch.tanh(self.a2(x)))))


@pytest.mark.parametrize("same", [True, False])
def test_bilinear_inputs_and_outputs_are_pruned_exactly(same: bool) -> None:
    model, x = BilinearHead(same).eval(), torch.randn(2, 4, 8)
    groups = graphprune.find_groups(model, x)
    first = next(g for g in groups if any(m.fqn == "a.weight" for m in g.members))
    dims = {(m.fqn, m.dim) for m in first.members}
    assert first.frozen is None and ("b.weight", 1) in dims and (("b.weight", 2) in dims) == same
    assert assert_prune_matches(model, x).groups_checked == (2 if same else 3)
    small = graphprune.shrink(model, 0.4, example_inputs=x, tolerance=0.05)
    assert tuple(small.b.weight.shape) == (small.b.out_features, small.b.in1_features, small.b.in2_features)
    assert small.b.in1_features == small.a.out_features < 16 and small(x).shape == (2, 4, 3)
