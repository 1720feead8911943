"""Tests for graphprune/api.py: shrink leaves modules whose code breaks after pruning unpruned."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import graphprune


class InputWidthAttention(nn.Module):
    """The merged heads are reshaped to a width read from another module (``self.qkv.in_features``,
    the residual's), so pruning heads alone breaks the reshape; the traced graph only shows constants."""

    def __init__(self, dim: int, num_heads: int = 4):
        super().__init__()
        self.num_heads = num_heads
        self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        x = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, self.qkv.in_features))


class Tower(nn.Module):
    def __init__(self, dim: int = 32, depth: int = 2):
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.attns = nn.ModuleList(InputWidthAttention(dim) for _ in range(depth))
        self.mlps = nn.ModuleList(nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
                                  for _ in range(depth))
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.embed(x)
        for attn, mlp in zip(self.attns, self.mlps):
            x = x + attn(x)
            x = x + mlp(x)
        return self.head(x)


X = torch.randn(1, 6, 8)


def test_shrink_leaves_a_module_type_that_breaks_unpruned():
    model = Tower().eval()
    with pytest.warns(UserWarning, match="attns.0"):
        small, report = graphprune.shrink(model, 0.3, example_inputs=X, return_report=True)
    assert small(X).shape == model(X).shape
    assert set(report.left_out) == {f"attns.{i}" for i in range(len(model.attns))}
    assert "left unpruned" in str(report)
    ratio = 1 - graphprune.count_params(small) / graphprune.count_params(model)
    assert abs(ratio - 0.3) <= 0.01
    for a, b in zip(small.attns, model.attns):  # every instance of the failing type kept its shapes
        assert a.qkv.weight.shape == b.qkv.weight.shape


def test_same_type_is_only_the_module_itself_for_torch_nn_builtins():
    from graphprune.api import _same_type
    model = Tower()
    assert _same_type(model, "head") == ["head"]
    assert _same_type(model, "attns.1") == ["attns.0", "attns.1"]
    assert _same_type(model, "") == []


def test_unreachable_after_leaving_modules_out_names_them():
    with pytest.warns(UserWarning), pytest.raises(graphprune.PlanError, match="InputWidthAttention"):
        graphprune.shrink(Tower().eval(), 0.85, example_inputs=X)



class WidthBranch(nn.Module):
    """``if h.shape[-1] == 32:``: pruning fc1 skips fc2, and the forward fails in fc3, which is
    not what the code misreads."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2, self.fc3 = nn.Linear(16, 32), nn.Linear(32, 32), nn.Linear(32, 4)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        if h.shape[-1] == 32:
            h = torch.relu(self.fc2(h))
        return self.fc3(h)


def test_a_width_read_in_a_branch_leaves_the_group_that_breaks_unpruned_not_the_layer_that_fails():
    model, x = WidthBranch().eval(), torch.randn(2, 16)
    with pytest.warns(UserWarning, match=r"forward breaks when fc1 \(32 channels\) is pruned.*leaving 'fc1' unpruned"):
        small, report = graphprune.shrink(model, 0.3, example_inputs=x, tolerance=0.05, return_report=True)
    assert small.fc1.out_features == 32 and small.fc3.in_features < 32  # fc3 was only a guess: pruned again
    assert report.left_out == ("fc1",) and "values checked" in str(report)
    assert abs(1 - graphprune.count_params(small) / graphprune.count_params(model) - 0.3) <= 0.05

def test_plan_json_records_criterion_scope_compensation_and_calibration() -> None:
    import json

    from .calib_models import Mlp

    small, report = graphprune.shrink(Mlp(), 0.2, example_inputs=torch.randn(2, 4), calibration=Mlp.data(),
                                      scorer="fluctuation", scope="local", compensate="mean", tolerance=0.1,
                                      return_report=True)
    saved = json.loads(report.plan.to_json())["config"]
    assert (saved["scorer"], saved["scope"], saved["compensate"]) == ("fluctuation", "local", "mean")
    assert saved["calibration"]["batches"] == 4 and report.calibration_seconds > 0


def test_calibration_without_a_data_aware_choice_warns() -> None:
    from .calib_models import Mlp

    with pytest.warns(UserWarning, match="read no data"):
        graphprune.shrink(Mlp(), 0.2, example_inputs=torch.randn(2, 4), calibration=Mlp.data(), tolerance=0.1)


def test_shrink_in_training_mode_never_teaches_batch_norm() -> None:
    """The checks' forwards run in eval mode: a model mid-training keeps its BatchNorm statistics
    (kept channels hold exactly the values they had) and its training mode."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 4, 3)).train()
    with torch.no_grad():
        model[1].running_mean.uniform_(-1, 1)
    small, report = graphprune.shrink(model, 0.4, example_inputs=torch.randn(2, 3, 8, 8), tolerance=0.05,
                                     return_report=True)
    kept = report.plan.keep["1.running_mean"][0]
    assert small.training and small[1].training
    assert torch.equal(small[1].running_mean, model[1].running_mean[kept])
    assert int(small[1].num_batches_tracked) == 0


@pytest.mark.parametrize("inplace", [False, True])
def test_a_compiled_model_is_pruned_through_what_it_wraps_and_stays_compiled(inplace: bool) -> None:
    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4))
    compiled = torch.compile(mlp, backend="eager")  # no C++ toolchain needed
    x = torch.randn(2, 8)
    small, report = graphprune.shrink(compiled, 0.4, example_inputs=x, inplace=inplace, return_report=True)
    assert type(small) is type(compiled) and (small is compiled) == inplace
    assert small._orig_mod[0].out_features < 64 and (mlp[0].out_features < 64) == inplace
    assert set(report.plan.keep) == {"0.weight", "0.bias", "2.weight"}  # the plain model's names
    assert torch.allclose(small(x), small._orig_mod(x))
    fresh = nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4))
    assert graphprune.apply_plan_(fresh, report.plan, x)[0].out_features == small._orig_mod[0].out_features
    fresh_compiled = torch.compile(nn.Sequential(nn.Linear(8, 64), nn.ReLU(), nn.Linear(64, 4)), backend="eager")
    assert graphprune.apply_plan_(fresh_compiled, report.plan, x) is fresh_compiled  # the same plan, compiled too
    assert fresh_compiled._orig_mod[0].out_features == small._orig_mod[0].out_features
