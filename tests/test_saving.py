"""Tests for graphprune/saving.py and sources.py: safetensors folders round trip; nothing is ever unpickled."""
from __future__ import annotations

import json
import pickle

import pytest
import timm
import torch
from safetensors.torch import load_file

import graphprune
from graphprune.cli import main
from graphprune.errors import GraphPruneError, LoadError, PlanError

from .hostile import Payload, write_hostile
from .models import Grouped, HandAttention


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_pruned_timm_model_round_trips(tmp_path) -> None:
    small = graphprune.shrink(timm.create_model("test_resnet").eval(), 0.3)
    graphprune.save_pretrained(small, str(tmp_path))
    assert json.loads((tmp_path / "graphprune.json").read_text())["base"] == {
        "source": "timm", "name": "test_resnet", "args": [], "kwargs": {}}
    again = graphprune.load_pretrained(str(tmp_path))
    assert _same_outputs(small, again, torch.randn(1, 3, 64, 64))
    assert load_file(tmp_path / "model.safetensors").keys() <= again.state_dict().keys()


def test_timm_num_classes_and_half_precision_are_kept(tmp_path) -> None:
    small = graphprune.shrink(timm.create_model("test_resnet", num_classes=7).eval(), 0.2).to(torch.bfloat16)
    graphprune.save_pretrained(small, str(tmp_path))
    again = graphprune.load_pretrained(str(tmp_path))
    assert again.fc.out_features == 7 and again.fc.weight.dtype == torch.bfloat16
    assert _same_outputs(small, again, torch.randn(1, 3, 64, 64, dtype=torch.bfloat16))


def test_a_class_with_and_without_arguments_round_trips(tmp_path) -> None:
    small = graphprune.shrink(Grouped().eval(), 0.3, example_inputs=torch.randn(1, 3, 8, 8), tolerance=0.2)
    graphprune.save_pretrained(small, str(tmp_path / "a"))  # Grouped() needs no arguments: found by itself
    assert _same_outputs(small, graphprune.load_pretrained(str(tmp_path / "a")), torch.randn(2, 3, 8, 8))
    att = graphprune.shrink(HandAttention(dim=24, heads=6).eval(), 0.3, example_inputs=torch.randn(2, 5, 24),
                            tolerance=0.2)
    with pytest.raises(LoadError, match="cannot tell how to rebuild the unpruned HandAttention"):
        graphprune.save_pretrained(att, str(tmp_path / "b"))
    spec = graphprune.ModelSpec("class", "tests.models:HandAttention", kwargs={"dim": 24, "heads": 6})
    graphprune.save_pretrained(att, str(tmp_path / "b"), base=spec)
    again = graphprune.load_pretrained(str(tmp_path / "b"))
    assert again.heads == att.heads < 6 and _same_outputs(att, again, torch.randn(2, 5, 24))


def test_a_wrong_base_is_refused_when_saving(tmp_path) -> None:
    small = graphprune.shrink(timm.create_model("test_resnet").eval(), 0.3)
    with pytest.raises(LoadError, match="test_vit: the tensor names differ"):
        graphprune.save_pretrained(small, str(tmp_path), base="timm:test_vit")


@pytest.fixture(scope="module")
def saved_once(tmp_path_factory):
    folder = tmp_path_factory.mktemp("saved")
    graphprune.save_pretrained(graphprune.shrink(timm.create_model("test_resnet").eval(), 0.3), str(folder))
    return folder


def _saved(tmp_path, saved_once) -> tuple[str, dict]:
    """A copy of the saved folder, to tamper with."""
    for f in saved_once.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    return str(tmp_path), json.loads((tmp_path / "graphprune.json").read_text())


@pytest.mark.parametrize("edit, error, match", [
    (lambda r: r.pop("shapes"), PlanError, r"graphprune.json has no field 'shapes'"),
    (lambda r: r.update(version=7), PlanError, r"format version 7; this graphprune reads graphprune record format 1"),
    (lambda r: r["shapes"].update({"fc.weight": [1000, "x"]}), PlanError, r"field 'shapes'\['fc.weight'\]\[1\] must be"),
    (lambda r: r["shapes"].update({"fc.weight": [2000, 8]}), PlanError, r"'shapes'\['fc.weight'\] is \[2000, 8\]"),
    (lambda r: r["shapes"].update({"nope.weight": [1]}), PlanError, r"the base model has no parameter or buffer 'nope"),
    (lambda r: r["attrs"].update({"fc": {"forward": 1}}), PlanError, r"method or read-only property"),
    (lambda r: r["base"].update(source="os"), PlanError, r"field 'base' field 'source' is 'os'"),
    (lambda r: r["base"].update(kwargs={"pretrained": True}), PlanError, r"without fetching weights"),
    (lambda r: r["base"].update(kwargs={"checkpoint_path": "evil.pt"}), PlanError, r"without fetching weights"),
    (lambda r: r["base"].update(name="resnet_nope"), LoadError, r"unknown timm model 'resnet_nope'"),
    (lambda r: r["base"].update(source="class", name="os:system", args=["touch x"]), LoadError, r"not an nn.Module class"),
    (lambda r: r["base"].update(source="class", name="some_unimported_pkg:Net"), LoadError, r"is not imported"),
    # a constructor may load (and run code from) a path or hub id a string names
    (lambda r: r["base"].update(source="class", name="torch.nn:Identity", args=["/some/folder"]), LoadError,
     r"class:torch.nn:Identity is built with text arguments \['/some/folder'\] taken from a file.*allow_import=True"),
    (lambda r: r["base"].update(source="class", name="torch.nn:Identity", kwargs={"opts": {"x": ["../f"]}}), LoadError,
     r"text arguments \['../f'\]"),
    (lambda r: r["base"].update(source="class", name="torch.nn:Identity", kwargs={"trust_remote_code": True}),
     LoadError, r"trust_remote_code: graphprune never runs code"),
    (lambda r: r.update(fingerprint="0000000000000000"), PlanError, r"is not the one the weights were pruned from"),
])
def test_a_tampered_record_is_refused_naming_the_field(tmp_path, saved_once, edit, error, match) -> None:
    folder, record = _saved(tmp_path, saved_once)
    edit(record)
    (tmp_path / "graphprune.json").write_text(json.dumps(record))
    with pytest.raises(error, match=match):
        graphprune.load_pretrained(folder)


def test_text_arguments_build_once_the_folder_is_trusted() -> None:
    spec = graphprune.ModelSpec("class", "torch.nn:Identity", args=("gelu",), kwargs={"n": 3})
    with pytest.raises(LoadError, match="text arguments"):
        spec.build()
    assert isinstance(spec.build(allow_import=True), torch.nn.Identity)
    assert isinstance(graphprune.ModelSpec("class", "torch.nn:Identity", kwargs={"n": 3}).build(), torch.nn.Identity)


def test_weights_that_do_not_fit_the_record_are_refused(tmp_path, saved_once) -> None:
    folder, record = _saved(tmp_path, saved_once)
    record["shapes"].pop("fc.weight")
    (tmp_path / "graphprune.json").write_text(json.dumps(record))
    with pytest.raises(LoadError, match=r"fc.weight is \(1000, \d+\) but the record rebuilt it as \(1000, \d+\)"):
        graphprune.load_pretrained(folder)


def test_the_hostile_pickle_works_when_unpickled(tmp_path) -> None:
    marker = tmp_path / "proof"
    pickle.loads(pickle.dumps(Payload(marker)))
    assert marker.exists()  # so the test below would see any unpickling


def test_no_verb_or_load_function_ever_unpickles(tmp_path, capsys) -> None:
    marker = tmp_path / "pwned"
    files = write_hostile(tmp_path / "hostile", marker)
    out = str(tmp_path / "out")
    loads = [lambda p: graphprune.load_pretrained(p), lambda p: graphprune.from_pretrained(p),
             lambda p: graphprune.Plan.from_json(p), lambda p: graphprune.ModelSpec.parse(p).build(),
             lambda p: graphprune.ModelSpec.parse(f"hf:{p}").build()]
    for path in map(str, files.values()):
        for load in loads:
            with pytest.raises(GraphPruneError):
                load(path)
        for argv in (["inspect", path], ["shrink", path, "--ratio", "0.3", "--out", out], ["apply", path, path, "--out", out],
                     ["apply", "timm:test_resnet", path, "--out", out], ["inspect", "timm:test_resnet", "--inputs", path],
                     ["shrink", "timm:test_resnet", "--ratio", "0.3", "--calibration", path, "--out", out],
                     ["inspect", f"hf:{path}"]):
            assert main(argv) == 2, argv
    err = capsys.readouterr().err
    assert "is a torch.save archive (a pickle); graphprune never unpickles" in err and "convert it once" in err
    assert "evil.pkl is a pickle; graphprune never unpickles" in err
    assert not marker.exists()
