"""Tests for graphprune/validate/: a bad plan is refused before the model changes, naming the field;
a plan that keeps matching widths but other units in coupled tensors (units.py) too."""
from __future__ import annotations

import copy
import dataclasses
import json

import pytest
import timm
import torch
from torch import nn

import graphprune
from graphprune.errors import PlanError

from .models import TOYS, Grouped, HandAttention, cbr

IMG = torch.randn(1, 3, 8, 8)


def _plan(model: nn.Module, x: torch.Tensor, ratio: float = 0.3) -> graphprune.Plan:
    return graphprune.make_plan(model, graphprune.find_groups(model, x),
                                graphprune.ShrinkConfig(ratio=ratio, tolerance=0.3))


def _snapshot(model: nn.Module) -> tuple[dict, dict]:
    tensors = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    attrs = {fqn: {k: copy.copy(v) for k, v in vars(m).items() if k not in ("_parameters", "_buffers", "_modules")}
             for fqn, m in model.named_modules()}
    return tensors, attrs


def _unchanged(model: nn.Module, snap: tuple[dict, dict]) -> bool:
    tensors, attrs = _snapshot(model)
    same_tensors = tensors.keys() == snap[0].keys() and all(
        tensors[k].dtype == snap[0][k].dtype and tensors[k].shape == snap[0][k].shape
        and torch.equal(tensors[k].view(-1).view(torch.uint8), snap[0][k].view(-1).view(torch.uint8))
        for k in tensors)
    return same_tensors and attrs == snap[1]


def _refused(model: nn.Module, plan: graphprune.Plan, match: str) -> None:
    snap = _snapshot(model)
    with pytest.raises(PlanError, match=match):
        graphprune.apply_plan_(model, plan)
    assert _unchanged(model, snap)


class Depthwise(Grouped):
    """``Grouped`` with a depthwise c2: its conv groups go whole, so the plan writes ``groups``
    (a grouped conv with wider groups is pruned inside them and keeps ``groups``)."""

    def __init__(self):
        super().__init__()
        self.c2 = cbr(16, 16, 3, groups=16)


@pytest.fixture(scope="module")
def grouped():
    model = Depthwise().eval()
    return model, _plan(model, IMG)


def _edit_keep(plan: graphprune.Plan, fqn: str, dim: int, ix: list[int]) -> graphprune.Plan:
    keep = {f: dict(d) for f, d in plan.keep.items()}
    keep[fqn][dim] = ix
    return plan.with_parts(keep=keep)


def _first_pruned(plan: graphprune.Plan, prefix: str) -> tuple[str, int, list[int]]:
    return next((f, d, ix) for f, dims in plan.keep.items() for d, ix in dims.items() if f.startswith(prefix))


def test_the_valid_plan_applies(grouped) -> None:
    model, plan = grouped
    small = graphprune.apply_plan_(copy.deepcopy(model), plan, IMG)
    assert graphprune.count_params(small) == plan.params_after < plan.params_before


@pytest.mark.parametrize("edit, match", [
    (lambda ix, n: ix[:-1] + [n], r"index \d+ is out of range for dim \d of size"),
    (lambda ix, n: [-1] + ix[1:], r"negative index -1"),
    (lambda ix, n: ix[:1] + ix[:-1], r"index \d+ appears twice"),
    (lambda ix, n: ix[::-1], r"comes after"),
    (lambda ix, n: [], r"keeps no index"),
])
def test_bad_indices_are_refused_before_any_change(grouped, edit, match) -> None:
    model, plan = grouped
    fqn, dim, ix = _first_pruned(plan, "c1.0.weight")
    n = dict(model.named_parameters())[fqn].shape[dim]
    _refused(model, _edit_keep(plan, fqn, dim, edit(list(ix), n)), rf"keep\['{fqn}'\]\[{dim}\].*{match}")


def test_coupled_tensors_that_would_disagree_are_refused(grouped) -> None:
    model, plan = grouped
    fqn, dim, ix = _first_pruned(plan, "c1.1.weight")  # the BN after c1: one index fewer than its conv
    _refused(model, _edit_keep(plan, fqn, dim, list(ix)[1:]), rf"keep\['{fqn}'\]\[{dim}\] keeps .* coupled tensors")


def test_a_dim_no_removed_group_couples_is_refused(grouped) -> None:
    model, plan = grouped
    keep = {**plan.keep, "head.bias": {0: [0, 1]}}
    _refused(model, plan.with_parts(keep=keep), r"keep\['head.bias'\]\[0\] prunes a dim that no removed group")


@pytest.mark.parametrize("attrs, match", [
    ({"c2.0": {"forward": 3}}, r"method or read-only property"),
    ({"c2.0": {"training": False}}, r"not a width"),
    ({"head": {"out_features": 2}}, r"'out_features' is neither bound to a removed group"),
    ({"c2.0": {"groups": 2}}, r"groups'\] is 2, but group\(s\) \[\d+\] remove \d+ of its 16: it must be (?!2\b)\d+"),
    ({"c2.0": {"_version": 1}}, r"not a public attribute name"),
    ({"no.such": {"groups": 1}}, r"has no module 'no.such'"),
    ({"": {"hidden_size": 5}}, r"has no attribute 'hidden_size'"),
])
def test_attribute_writes_other_than_bound_widths_are_refused(grouped, attrs, match) -> None:
    model, plan = grouped
    assert list(plan.attrs) == ["c2.0"] and list(plan.attrs["c2.0"]) == ["groups"] and plan.attrs["c2.0"]["groups"] < 16
    _refused(model, plan.with_parts(attrs={**plan.attrs, **attrs}), match)


def test_a_width_attribute_never_grows() -> None:
    model = HandAttention().eval()
    plan = _plan(model, torch.randn(2, 5, 16))
    assert plan.attrs == {"": {"heads": 3}}
    _refused(model, plan.with_parts(attrs={"": {"heads": 7}}), r"7 cannot replace 4")


def test_config_fields_need_a_config_and_a_width_name(grouped) -> None:
    model, plan = grouped
    _refused(model, plan.with_parts(model_config={"hidden_size": 4}), r"has no config")


def test_other_format_versions_are_refused(grouped) -> None:
    model, plan = grouped
    _refused(model, dataclasses.replace(plan, version=1), r"format version 1; this graphprune applies format 3")
    data = json.loads(plan.to_json())
    del data["version"]
    with pytest.raises(PlanError, match=r"no 'version' field: it was written before plans were versioned"):
        graphprune.Plan.from_dict(data)
    with pytest.raises(PlanError, match=r"format version 2; this graphprune reads plan format 3 only"):
        graphprune.Plan.from_json(json.dumps({**data, "version": 2}))  # an issue-10 plan (keep/attrs, no actions)


def test_a_plan_for_another_resnet_is_refused() -> None:
    r18 = timm.create_model("resnet18").eval()
    plan = graphprune.make_plan(r18, graphprune.find_groups(r18), graphprune.ShrinkConfig(ratio=0.3))
    r34 = timm.create_model("resnet34").eval()
    _refused(r34, plan, r"made for another model \(ResNet with 11,689,512 parameters.*21,797,672 parameters")
    _refused(r34, dataclasses.replace(plan, fingerprint=""), r"no fingerprint")
    pruned = graphprune.apply_plan_(copy.deepcopy(r18), plan)
    _refused(pruned, plan, r"already pruned")


def _first(d: dict, op: str) -> dict:
    return next(a for a in d["actions"] if a["op"] == op)


@pytest.mark.parametrize("edit, match", [
    (lambda d: d.pop("actions"), r"plan has no field 'actions'"),
    (lambda d: _first(d, "slice").update(dims={"0": ["1"]}),
     r"plan field 'actions'\[\d+\] field 'dims'\['0'\]\[0\] must be an integer, got str"),
    (lambda d: _first(d, "slice").update(dims={"x": [1]}),
     r"plan field 'actions'\[\d+\] field 'dims' key 'x' must be an integer key"),
    (lambda d: _first(d, "slice").pop("tensor"), r"plan field 'actions'\[\d+\] has no field 'tensor'"),
    (lambda d: d.update(params_after="10"), r"plan field 'params_after' must be an integer >= 0"),
    (lambda d: d["actions"].append({"op": "set_attr", "module": "m", "attr": "a", "value": 1.5}),
     r"field 'value' must be an integer or a list"),
    (lambda d: d.update(coupled={"0": [["w", 0]]}), r"plan field 'coupled'\['0'\]\[0\] must be \[fqn"),
    (lambda d: d.update(actoins=[]), r"unknown field 'actoins' \(did you mean 'actions'\?\)"),
    (lambda d: d.update(fingerprint=7), r"plan field 'fingerprint' must be a string"),
])
def test_schema_errors_name_the_field(grouped, edit, match) -> None:
    data = json.loads(grouped[1].to_json())
    edit(data)
    with pytest.raises(PlanError, match=match):
        graphprune.Plan.from_json(json.dumps(data))


def test_plan_files_that_are_not_json_are_refused(tmp_path) -> None:
    (tmp_path / "bin.json").write_bytes(b"\x80\x04\x95\x00")
    with pytest.raises(PlanError, match="not a JSON text file"):
        graphprune.Plan.from_json(str(tmp_path / "bin.json"))
    (tmp_path / "bad.json").write_text("[1, 2")
    with pytest.raises(PlanError, match="not valid JSON"):
        graphprune.Plan.from_json(str(tmp_path / "bad.json"))
    with pytest.raises(PlanError, match="cannot read plan file"):
        graphprune.Plan.from_json(str(tmp_path / "missing.json"))


def test_a_new_kind_of_change_registers_its_own_check(grouped) -> None:
    model, plan = grouped
    seen = []
    graphprune.validate.plan_check("test-kind")(lambda target: seen.append(target.plan))
    try:
        graphprune.check_plan(model, plan)
    finally:
        graphprune.validate.PLAN_CHECKS._items.pop("test-kind")
    assert seen == [plan]


def test_a_forged_huge_index_is_a_plan_error_not_an_overflow() -> None:
    from graphprune.validate.indices import check_indices

    with pytest.raises(graphprune.PlanError, match="index 1000000000000000000000000000000 is out of range"):
        check_indices([0, 1, 10**30], torch.zeros(16), "keep['w'][0]", 0)


@pytest.mark.parametrize("text", ["[]", "null", " [1, 2]"])
def test_json_that_is_no_object_is_read_as_json_not_as_a_file_name(text) -> None:
    with pytest.raises(graphprune.PlanError, match="plan must be a JSON object"):
        graphprune.Plan.from_json(text)


# -- units.py: checked against the model's own groups (a trace), so a forged plan whose widths
# match but whose coupled tensors keep other units cannot give a model that computes something else

def _with_removed(plan: graphprune.Plan, keep: dict, gid: int, members: list, units: list[int]) -> graphprune.Plan:
    return plan.with_parts(keep=keep, removed={**plan.removed, gid: units}, coupled={**plan.coupled, gid: members})


def _refused_with_inputs(model: nn.Module, plan: graphprune.Plan, x: torch.Tensor, match: str) -> None:
    snap = _snapshot(model)
    with pytest.raises(PlanError, match=match):
        graphprune.apply_plan_(model, plan, x)
    assert _unchanged(model, snap)


def test_coupled_tensors_that_keep_other_units_of_the_same_width_are_refused(grouped) -> None:
    model, plan = grouped
    fqn, dim, ix = _first_pruned(plan, "c1.1.weight")  # the BN after c1
    size = dict(model.named_parameters())[fqn].shape[dim]
    other = [i for i in range(size) if i not in ix][:1] + list(ix)[1:]  # one kept channel swapped for a dropped one
    _refused_with_inputs(model, _edit_keep(plan, fqn, dim, sorted(other)), IMG,
                         rf"keep\['{fqn}'\]\[{dim}\] drops units .* but keep\[.*\] drops .*: coupled tensors would keep "
                         rf"different groups")


def test_a_plan_that_drops_part_of_a_head_is_refused() -> None:
    model, x = HandAttention().eval(), torch.randn(2, 5, 16)
    plan = graphprune.make_plan(model, graphprune.find_groups(model, x), graphprune.ShrinkConfig(ratio=0.2, tolerance=0.2,
                                                                                                  prune=("heads",)))
    (gid, units), = plan.removed.items()
    head = list(range(4 * units[0], 4 * units[0] + 4))
    half = [i for i in range(16) if i not in head[:2] + [(head[-1] + 1) % 16, (head[-1] + 2) % 16]]
    keep = {f: {d: half for d in dims} for f, dims in plan.keep.items()}
    _refused_with_inputs(model, plan.with_parts(keep=keep), x, r"drops part of head \d+ of group \d+")


def test_a_plan_that_cuts_a_frozen_group_is_refused(grouped) -> None:
    model, plan = grouped
    n = model.head.out_features  # the classes: the model's output width, which no plan may cut
    keep = {**plan.keep, "head.weight": {**plan.keep.get("head.weight", {}), 0: list(range(1, n))},
            "head.bias": {0: list(range(1, n))}}
    forged = _with_removed(plan, keep, 999, [["head.weight", 0, 1], ["head.bias", 0, 1]], [0])
    _refused_with_inputs(model, forged, IMG, r"drops channels of group \d+, which is frozen: model output")


def test_a_plan_that_cuts_a_kernel_dim_is_refused(grouped) -> None:
    model, plan = grouped
    keep = {**plan.keep, "stem.0.weight": {**plan.keep.get("stem.0.weight", {}), 2: [0, 2]}}  # a 3x3 kernel's middle row
    forged = _with_removed(plan, keep, 999, [["stem.0.weight", 2, 1]], [1])
    _refused_with_inputs(model, forged, IMG, r"keep\['stem.0.weight'\]\[2\] drops .* which is frozen: dim 2 not handled")


def test_a_plan_that_cuts_a_tensor_the_forward_never_reads_is_refused(grouped) -> None:
    model, plan = grouped
    model = copy.deepcopy(model)
    model.register_buffer("spare", torch.zeros(4))  # in no group: nothing tells what its indices are
    keep = {**plan.keep, "spare": {0: [0, 1]}}
    forged = _with_removed(plan, keep, 999, [["spare", 0, 1]], [2, 3])
    _refused_with_inputs(model, forged.with_parts(fingerprint=graphprune.validate.fingerprint(model)), IMG,
                         r"keep\['spare'\]\[0\] drops .* which is frozen: not read by the traced forward")
    # and were it in no group at all, its dropped indices would be units of nothing
    from graphprune.validate.units import check_units

    others = [g for g in graphprune.find_groups(model, IMG) if all(m.fqn != "spare" for m in g.members)]
    with pytest.raises(PlanError, match=r"keep\['spare'\]\[0\] drops index 2, which is no unit of any group"):
        check_units(forged, others, dict(model.state_dict(keep_vars=True)))


@pytest.mark.parametrize("toy", TOYS, ids=lambda t: t.name)
def test_plans_graphprune_makes_pass_the_units_check_one_shot_and_in_rounds(toy) -> None:
    from graphprune.validate.units import check_units

    for steps in (1, 2):
        model = toy.build().eval()
        try:
            _, report = graphprune.shrink(model, 0.3, example_inputs=toy.inputs(), tolerance=0.15, steps=steps,
                                          return_report=True)
        except graphprune.PlanError:
            continue  # this toy cannot reach the ratio: nothing to check
        fresh = toy.build().eval()
        assert report.plan.keep
        check_units(report.plan, graphprune.find_groups(fresh, toy.inputs()), dict(fresh.state_dict(keep_vars=True)))


def test_a_model_that_does_not_trace_without_inputs_gets_the_plan_with_a_warning(grouped) -> None:
    model, plan = grouped
    with pytest.warns(UserWarning, match="not checked against the model's coupled units.*pass example_inputs="):
        small = graphprune.apply_plan_(copy.deepcopy(model), plan)
    assert graphprune.count_params(small) == plan.params_after
