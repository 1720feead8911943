"""Tests for graphprune/surgery/verify.py: a width the code reads as a number is caught by the value
check after surgery, its group left out, and a plan it cannot judge is not checked."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import graphprune
from graphprune.surgery.proof import checkable
from graphprune.surgery.verify import zeroed_outputs

X = torch.randn(4, 8)


class ReadsWidth(nn.Module):
    """Two hidden groups; the forward reads the first one's width as a number, as
    ``torch.export`` sees only the constant 16 (scale, attribute, branch)."""

    def __init__(self, how: str):
        super().__init__()
        torch.manual_seed(0)
        self.how = how
        self.a, self.b, self.c, self.d = nn.Linear(8, 16), nn.Linear(16, 4), nn.Linear(8, 12), nn.Linear(12, 4)

    def forward(self, x):
        h, k = torch.relu(self.a(x)), torch.relu(self.c(x))
        out = self.b(h)
        if self.how == "scale":
            out = out / math.sqrt(h.shape[-1])
        elif self.how == "attribute":
            out = out / math.sqrt(self.a.out_features)
        elif self.how == "branch" and h.shape[1] == 16:
            out = out * 2
        return out + self.d(k)


@pytest.mark.parametrize("how", ["scale", "attribute", "branch"])
def test_a_width_read_as_a_number_leaves_its_group_unpruned(how: str) -> None:
    model = ReadsWidth(how).eval()
    with pytest.warns(UserWarning, match="reads the width of a .* as a number.*leaving 'a' unpruned"):
        small, report = graphprune.shrink(model, 0.3, example_inputs=X, tolerance=0.2, return_report=True)
    assert small.a.out_features == 16 and small.c.out_features < 12
    zeroed = copy.deepcopy(model)
    kept = [int((model.c.weight == row).all(1).nonzero()) for row in small.c.weight]
    with torch.no_grad():
        zeroed.d.weight[:, sorted(set(range(12)) - set(kept))] = 0
    torch.testing.assert_close(small(X), zeroed(X), rtol=1e-5, atol=1e-5)



@pytest.mark.parametrize("how", ["scale", "attribute"])
def test_with_compensation_the_plan_is_checked_uncompensated_first(how: str) -> None:
    # compensate= rewrites the kept weights, so the pruned model equals no zeroed original; the
    # code's misreading of a width does not depend on the weights, and is caught on the plan alone
    model = ReadsWidth(how).eval()
    batches = [torch.randn(16, 8) for _ in range(4)]
    with pytest.warns(UserWarning, match="reads the width of a .* as a number.*leaving 'a' unpruned"):
        small, report = graphprune.shrink(model, 0.3, example_inputs=X, tolerance=0.2, return_report=True,
                                          compensate="lstsq", calibration=batches)
    assert small.a.out_features == 16 and small.c.out_features < 12
    assert any(n.startswith("values checked before compensation") for n in report.notes), report.notes

def test_a_model_that_reads_widths_it_does_not_use_is_pruned_without_a_word() -> None:
    model = ReadsWidth("none").eval()
    small = graphprune.shrink(model, 0.3, example_inputs=X, tolerance=0.2)
    assert small.a.out_features < 16 and small.c.out_features < 12


class RootReads(nn.Module):
    """The misread group belongs to the root module, which cannot be left out."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.w1, self.w2 = nn.Parameter(torch.randn(8, 16)), nn.Parameter(torch.randn(16, 4))

    def forward(self, x):
        h = torch.relu(x @ self.w1)
        return h @ self.w2 / h.shape[-1]


def test_a_misread_the_root_holds_is_an_error_and_the_model_is_restored() -> None:
    model = RootReads().eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(graphprune.SurgeryError, match="differs by .* of its scale .* reads a pruned width as a "
                                                      "number.*assert_prune_matches"):
        graphprune.shrink(model, 0.3, example_inputs=X, tolerance=0.2, inplace=True)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_only_exact_plans_without_compensation_are_checked() -> None:
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    groups = graphprune.find_groups(model, X)
    plan = graphprune.make_plan(model, groups, graphprune.ShrinkConfig(ratio=0.3, tolerance=0.2))
    assert [len(u) for _, u in checkable(plan, groups, None)] == [len(plan.removed[next(iter(plan.removed))])]
    assert checkable(plan, groups, compensation=object()) is None
    norm = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4))
    groups = graphprune.find_groups(norm, X)
    assert checkable(graphprune.make_plan(norm, groups, graphprune.ShrinkConfig(ratio=0.3, tolerance=0.2)),
                     groups, None) is None


class ScaledWeight(nn.Module):
    """The hidden units are also read through ``w * s``: no role reaches ``w`` there, so zeroing the
    roles' weights leaves them contributing and the zeroed model is no reference."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(8, 16), nn.Linear(16, 4)
        self.w, self.s = nn.Parameter(torch.randn(4, 16)), nn.Parameter(torch.rand(16) + 0.5)

    def forward(self, x):
        h = torch.relu(self.a(x))
        return self.b(h) + h @ (self.w * self.s).T


@pytest.mark.parametrize("model, usable", [(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), True),
                                           (ScaledWeight(), False)])
def test_a_zeroed_model_is_a_reference_only_if_the_units_are_cut_off(model: nn.Module, usable: bool) -> None:
    groups = graphprune.find_groups(model.eval(), X)
    plan = graphprune.make_plan(model, groups, graphprune.ShrinkConfig(ratio=0.3, tolerance=0.2))
    chosen = checkable(plan, groups, None)
    assert chosen and (zeroed_outputs(model, chosen, groups.traced.inputs) is not None) is usable
    small = graphprune.shrink(model, 0.3, example_inputs=X, tolerance=0.2)  # pruned either way, no false alarm
    assert graphprune.count_params(small) < graphprune.count_params(model)


def test_linear_and_conv_weights_are_zeroed_by_hooks_not_copies() -> None:
    """A big model's check must not copy its MLP weights: leaf Linears and convs are edited on the
    activations they read and write; only bare parameters are copied."""
    from graphprune.surgery.verify import _edits

    model = ScaledWeight().eval()
    groups = graphprune.find_groups(model, X)
    chosen = checkable(graphprune.make_plan(model, groups, graphprune.ShrinkConfig(ratio=0.3, tolerance=0.2)),
                       groups, None)
    zero, scramble = _edits(model, chosen, "in"), _edits(model, chosen, "out")
    assert [f for f, _ in zero.hooks] == ["b"] and set(zero.tensors) <= {"w"}
    assert [f for f, _ in scramble.hooks] == ["a"] and not scramble.tensors


class AttentionThenReads(nn.Module):
    """torch's attention reads ``out_proj.weight`` without calling ``out_proj`` (no hook fires there);
    the MLP after it reads its width as a number."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.up, self.down = nn.Linear(8, 32), nn.Linear(32, 8)

    def forward(self, x):
        h = self.attn(x, x, x, need_weights=False)[0]
        u = torch.relu(self.up(h))
        return self.down(u) / math.sqrt(u.shape[-1])


def test_a_module_read_without_being_called_falls_back_to_copies() -> None:
    model = AttentionThenReads().eval()
    with pytest.warns(UserWarning, match="reads the width of up .* as a number.*leaving 'up' unpruned"):
        small = graphprune.shrink(model, 0.2, example_inputs=torch.randn(2, 5, 8), tolerance=0.15,
                                  prune=("heads", "mlp"))
    assert small.up.out_features == 32


class NormedReads(nn.Module):
    """A hidden width under a LayerNorm (inexact) next to an MLP that reads its width as a number:
    the inexact group must not switch the check off for the MLP."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.norm = nn.Linear(8, 16), nn.LayerNorm(16)
        self.up, self.down = nn.Linear(16, 64), nn.Linear(64, 16)
        self.up2, self.down2 = nn.Linear(16, 48), nn.Linear(48, 16)

    def forward(self, x):
        h = self.inp(x)
        u = torch.relu(self.up(self.norm(h)))
        h = h + self.down(u) / math.sqrt(u.shape[-1])
        return h + self.down2(torch.relu(self.up2(self.norm(h))))


def test_the_exact_part_of_a_plan_with_inexact_groups_is_checked_alone() -> None:
    model = NormedReads().eval()
    with pytest.warns(UserWarning, match="leaving 'up' unpruned"):
        small = graphprune.shrink(model, 0.3, example_inputs=X, tolerance=0.15, prune=("mlp", "hidden"))
    assert small.up.out_features == 64 and small.up2.out_features < 48
    assert [p.shape for p in model.parameters()] == [p.shape for p in NormedReads().parameters()]


class ArgmaxAndLogits(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        logits = self.net(x)
        return logits.argmax(-1), logits


def test_outputs_are_judged_by_their_own_dtype_and_integers_are_left_out() -> None:
    """bfloat16 logits are held to bfloat16's tolerance, and a flipped near tie in an argmax is no
    misread width."""
    model = ArgmaxAndLogits().to(torch.bfloat16).eval()
    small = graphprune.shrink(model, 0.3, example_inputs=torch.randn(64, 8, dtype=torch.bfloat16), tolerance=0.2)
    assert small.net[0].out_features < 64


def _values_note(model: nn.Module, **kw) -> str:
    _, report = graphprune.shrink(model, 0.3, example_inputs=X, tolerance=0.2, return_report=True, **kw)
    (note,) = [n for n in report.notes if n.startswith("values ")]
    return note


def test_the_report_says_what_the_value_check_proved() -> None:
    mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)).eval()
    assert _values_note(mlp).startswith("values checked: the pruned model's outputs equal the original's")
    batches = [torch.randn(16, 8) for _ in range(2)]
    assert _values_note(mlp, compensate="mean", calibration=batches).startswith(
        "values checked before compensation: without it the pruned model's outputs equal the original's")
    assert "no reference" in _values_note(ScaledWeight().eval())
    norm = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 4)).eval()
    assert "not checked (every pruned group is inexact (e.g. normalised" in _values_note(norm)
    normed_mlp = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    mixed = _values_note(normed_mlp.eval(), prune=("mlp", "hidden"), scope="local")
    assert mixed.startswith("values checked for ") and "inexact (e.g. " in mixed
