"""Bad input gets a clear error naming the value and the fix, and the model is left untouched."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import graphprune
from graphprune.errors import ConfigError, PlanError, SurgeryError, TraceError

from .models import Residual


def _state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(model: nn.Module, state: dict) -> bool:
    now = model.state_dict()
    return now.keys() == state.keys() and all(torch.equal(now[k], state[k]) for k in state)


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, "half", True])
def test_ratio_outside_range_names_value(ratio) -> None:
    model = Residual()
    state = _state(model)
    with pytest.raises(ConfigError, match=f"ratio={ratio!r}"):
        graphprune.shrink(model, ratio, example_inputs=torch.randn(1, 3, 8, 8))
    assert _same(model, state)


@pytest.mark.parametrize("ratio, says", [("0.5", "got str"), (None, "got NoneType"), (float("nan"), "got NaN")])
def test_a_ratio_that_is_no_number_says_so(ratio, says) -> None:
    with pytest.raises(ConfigError, match=f"must be a number .*{says}"):
        graphprune.shrink(Residual(), ratio, example_inputs=torch.randn(1, 3, 8, 8))


@pytest.mark.parametrize("flag", ["inplace", "return_report", "strict", "uniform", "read_source"])
def test_a_flag_that_is_no_bool_is_refused_before_anything_changes(flag) -> None:
    """``inplace="no"`` is truthy: taken as it is, it would prune the user's model in place."""
    model = Residual()
    state = _state(model)
    with pytest.raises(ConfigError, match=f"{flag}='no' must be True or False"):
        graphprune.shrink(model, 0.3, example_inputs=torch.randn(1, 3, 8, 8), **{flag: "no"})
    assert _same(model, state)


@pytest.mark.parametrize("dtype", [torch.long, torch.float16])
def test_inputs_of_a_wrong_dtype_are_blamed_on_the_inputs_not_on_pruning(dtype) -> None:
    """Export runs on fake tensors and takes them; the unpruned model's own forward then says no."""
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with pytest.raises(TraceError, match=f"does not run on the example inputs \\(Tensor\\(2, 8\\) {str(dtype)[6:]}\\)"):
        graphprune.shrink(model, 0.3, example_inputs=torch.ones(2, 8, dtype=dtype), tolerance=0.2)


def test_wrong_example_inputs_raise_trace_error_and_keep_model() -> None:
    model = Residual()
    state = _state(model)
    with pytest.raises(TraceError, match=r"does not run on the example inputs \(Tensor\(1, 5\)\)"):
        graphprune.shrink(model, 0.3, example_inputs=torch.randn(1, 5))
    assert _same(model, state)


def test_unsupported_example_inputs_type() -> None:
    with pytest.raises(TraceError, match="example_inputs must be a Tensor, a tuple"):
        graphprune.find_groups(Residual(), example_inputs=3)


class DataDependent(nn.Module):
    """Python control flow on a tensor value: neither export nor symbolic_trace can follow it."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x):
        return self.fc(x) if x.sum() > 0 else -self.fc(x)


def test_untraceable_model_raises_trace_error_naming_model_and_fix() -> None:
    model = DataDependent()
    state = _state(model)
    with pytest.raises(TraceError, match=r"cannot trace DataDependent: torch.export failed at test_errors.py:\d+ in "
                                         r"forward .*symbolic_trace failed too.*submodules trace: 'fc'.*submodules="):
        graphprune.shrink(model, 0.3, example_inputs=torch.ones(2, 4))
    assert _same(model, state)


def test_model_without_derivable_inputs_asks_for_example_inputs() -> None:
    with pytest.raises(TraceError, match="pass example_inputs="):
        graphprune.trace(nn.Linear(2, 2))


def test_unreachable_ratio_names_largest_reachable() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 100))
    with pytest.raises(PlanError, match=r"largest reachable ratio is 0\.\d+"):
        graphprune.shrink(model, 0.9, example_inputs=torch.randn(2, 4))


class HardCoded(nn.Module):
    """A forward that checks a width against a constant: invisible to the graph, caught by validation."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        y = torch.relu(self.a(x))
        if y.shape[-1] != 8:
            raise RuntimeError(f"expected 8 features, got {y.shape[-1]}")
        return self.b(y)


def test_inplace_failure_rolls_back_every_tensor_and_attribute() -> None:
    model = HardCoded()
    state, attrs = _state(model), (model.a.out_features, model.b.in_features)
    groups = graphprune.find_groups(model, torch.randn(3, 4))
    plan = graphprune.make_plan(model, groups, graphprune.ShrinkConfig(ratio=0.3, tolerance=0.5))
    with pytest.raises(SurgeryError, match="forward fails in '<root>'"):
        graphprune.apply_plan_(model, plan, torch.randn(3, 4))
    assert _same(model, state) and (model.a.out_features, model.b.in_features) == attrs


def test_plan_for_another_model_is_refused() -> None:
    model = Residual()
    plan = graphprune.make_plan(model, graphprune.find_groups(model, torch.randn(1, 3, 8, 8)),
                                graphprune.ShrinkConfig(ratio=0.3, tolerance=0.5))
    with pytest.raises(PlanError, match="does not have"):
        graphprune.apply_plan_(nn.Linear(2, 2), plan)
    pruned = graphprune.apply_plan_(copy.deepcopy(model), plan)
    with pytest.raises(PlanError, match="already pruned"):
        graphprune.apply_plan_(pruned, plan)


def test_strict_mode_raises_on_op_without_rule() -> None:
    class CumMax(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 6)

        def forward(self, x):
            return torch.cummax(self.fc(x), dim=-1).values  # an op with no rule

    with pytest.raises(graphprune.UnsupportedOpError, match=r"no coupling rule for aten.cummax .*register_rule"):
        graphprune.find_groups(CumMax(), torch.randn(2, 4), strict=True)
    groups = graphprune.find_groups(CumMax(), torch.randn(2, 4))
    assert any("aten.cummax" in u for u in groups.coupling.unsupported)
    assert not any(m.fqn == "fc.weight" and m.dim == 0 for g in groups.prunable for m in g.members)


def test_a_state_dict_is_refused_by_name() -> None:
    with pytest.raises(TraceError, match=r"prunes an nn.Module, got an object of type OrderedDict \(a state dict\?\).*load_state_dict"):
        graphprune.shrink(Residual().state_dict(), 0.3)


def test_a_torchscript_module_is_refused_by_name_with_the_fix() -> None:
    scripted = torch.jit.script(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2)))
    with pytest.raises(TraceError, match=r"got a TorchScript RecursiveScriptModule .*pass the module before scripting it"):
        graphprune.shrink(scripted, 0.3, example_inputs=torch.randn(2, 4))


class Tanh(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        return self.b(torch.tanh(self.a(x)))


def test_a_failing_rule_freezes_its_node_and_is_listed(monkeypatch) -> None:
    from graphprune.coupling import RULES

    def broken(b, node):
        raise ValueError("this rule has a bug")

    monkeypatch.setitem(RULES._items, "aten.tanh", broken)
    groups = graphprune.find_groups(Tanh(), torch.randn(2, 4))
    (error,) = groups.coupling.rule_errors
    assert "aten.tanh" in error and "node 'tanh'" in error and "test_errors.py:" in error and "this rule has a bug" in error
    assert not groups.prunable and "coupling rule for aten.tanh failed" in str(groups)
    with pytest.raises(graphprune.CouplingError, match=r"rule for aten.tanh failed at node 'tanh' in <root>, "
                                                       r"test_errors.py:\d+: ValueError: this rule has a bug; the rule is .*broken"):
        graphprune.find_groups(Tanh(), torch.randn(2, 4), strict=True)


class RootReshape(nn.Module):
    """The model's own forward checks a width against a number (torchvision ViT's _process_input
    before it was read): the advice names what can be left out, never '<root>' in ignore=."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(4, 8), nn.Linear(8, 8), nn.Linear(8, 2)

    def forward(self, x):
        h = self.a(x)
        y = torch.relu(self.b(h))
        if h.shape[-1] != 8:
            raise RuntimeError("the input width is fixed")
        return self.c(y + h)


def test_advice_for_the_root_names_prune_kinds_or_submodules() -> None:
    with pytest.raises(SurgeryError) as err:
        graphprune.shrink(RootReshape(), 0.3, example_inputs=torch.randn(2, 4), tolerance=0.3)
    assert "'<root>' to ignore" not in str(err.value) and "prune=" in str(err.value)


def test_non_finite_weights_are_named_when_a_weight_criterion_cannot_rank() -> None:
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    with torch.no_grad():
        model[0].weight[3, 1] = float("nan")
    with pytest.raises(ConfigError, match=r"NaN or inf in 0\.weight; load finite weights"):
        graphprune.shrink(model, 0.3, example_inputs=torch.randn(2, 8))


MLP_X = torch.randn(2, 16)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4)).eval()


@pytest.mark.parametrize("call, error, match", [
    (lambda m: graphprune.shrink(m, 0.3, example_inputs=MLP_X, scorer="random", seed="a"), ConfigError,
     r"seed='a' must be an integer"),
    (lambda m: graphprune.shrink(m, 0.3, example_inputs=MLP_X, scorer="random", seed=1.5), ConfigError,
     r"seed=1.5 must be an integer"),
    (lambda m: graphprune.sparsify_(m, 0.5, scorer="random", seed=-1), ConfigError, r"seed=-1 must be an integer"),
    (lambda m: graphprune.shrink(m, 0.3, example_inputs=MLP_X, scorer="taylor", calibration=[MLP_X], loss_fn="mse"),
     ConfigError, r"loss_fn='mse' must be a function \(output, batch\) -> loss"),
    (lambda m: graphprune.Pruner(m, 0.3, scorer="taylor", calibration=[MLP_X], loss_fn="mse"),
     ConfigError, r"loss_fn='mse' must be a function"),
    (lambda m: graphprune.shrink(m, 0.3, example_inputs=MLP_X, scorer=lambda ctx: "x"), ConfigError,
     r"returned str 'x' for group .*, not numbers; it must return one score per unit"),
    (lambda m: graphprune.apply_plan_(m, "plan.json"), PlanError,
     r"plan= must be a graphprune Plan, got str 'plan.json'; read a saved one with graphprune.Plan.from_json"),
    (lambda m: graphprune.apply_plan_(m, {"version": 3}), PlanError, r"got dict .*graphprune.Plan.from_dict\(data\)"),
    (lambda m: graphprune.apply_plan_("m", graphprune.shrink(m, 0.3, example_inputs=MLP_X, tolerance=0.2,
                                                             return_report=True)[1].plan), TraceError,
     r"prunes an nn.Module, got an object of type str"),
    (lambda m: graphprune.make_dense_("m"), TraceError, r"got an object of type str"),
    (lambda m: graphprune.sparsify_(None, 0.5), TraceError, r"got an object of type NoneType"),
    (lambda m: graphprune.Plan.from_json("[" * 100_000 + "]" * 100_000), PlanError, r"nests .* too deeply"),
])
def test_arguments_of_the_wrong_kind_are_graphprune_errors_naming_them(call, error, match) -> None:
    model = _mlp()
    state = _state(model)
    with pytest.raises(error, match=match):
        call(model)
    assert _same(model, state)


def test_a_plan_file_may_be_given_as_a_path_object(tmp_path) -> None:
    small, report = graphprune.shrink(_mlp(), 0.3, example_inputs=MLP_X, tolerance=0.2, return_report=True)
    report.plan.to_json(str(tmp_path / "plan.json"))
    again = graphprune.apply_plan_(_mlp(), graphprune.Plan.from_json(tmp_path / "plan.json"), MLP_X)
    assert [p.shape for p in again.parameters()] == [p.shape for p in small.parameters()]


def test_a_zero_width_layer_is_no_crash_and_the_rest_prunes_exactly() -> None:
    class Zero(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.c = nn.Linear(16, 0), nn.Linear(16, 32), nn.Linear(32, 4)

        def forward(self, x):
            return self.c(torch.relu(torch.cat([self.a(x), self.b(x)], -1)))

    from graphprune.testing import assert_prune_matches

    assert [g.width for g in graphprune.find_groups(Zero(), MLP_X).prunable] == [32]
    assert assert_prune_matches(Zero(), MLP_X).groups_checked == 1


def test_writing_a_dump_where_no_file_can_be_is_a_config_error_naming_the_path(tmp_path) -> None:
    small, report = graphprune.shrink(_mlp(), 0.3, example_inputs=MLP_X, tolerance=0.2, return_report=True)
    groups = graphprune.find_groups(_mlp(), MLP_X)
    for write, what in ((groups.to_json, "groups"), (groups.to_html, "groups"), (report.plan.to_json, "plan"),
                        (report.to_json, "report")):
        with pytest.raises(ConfigError, match=f"cannot write the {what} to .*: Is a directory"):
            write(str(tmp_path))
        with pytest.raises(ConfigError, match=f"cannot write the {what} to .*missing.*: No such file or directory"):
            write(tmp_path / "missing" / "dump.txt")
