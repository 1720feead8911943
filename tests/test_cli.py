"""The graphprune command: inspect prints groups, shrink saves a model and its plan."""
from __future__ import annotations

import json

import torch

from graphprune.cli import main


def test_inspect_prints_table_and_writes_json(tmp_path, capsys) -> None:
    out = tmp_path / "groups.json"
    assert main(["inspect", "timm:resnet18", "--json", str(out), "--limit", "5"]) == 0
    text = capsys.readouterr().out
    assert "prunable groups" in text and "layer1.0.conv1.weight:0" in text
    data = json.loads(out.read_text())
    assert data["groups"] and {"fqn", "dim", "indices"} <= set(data["groups"][0]["members"][0])


def test_shrink_saves_model_and_plan(tmp_path, capsys) -> None:
    out = tmp_path / "small.pt"
    assert main(["shrink", "timm:resnet18", "--ratio", "0.5", "--out", str(out)]) == 0
    small = torch.load(out, weights_only=False)
    assert type(small).__name__ == "ResNet" and small(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    assert json.loads((tmp_path / "small.pt.plan.json").read_text())["params_after"] < 11_689_512


def test_bad_model_spec_is_a_clean_error(tmp_path, capsys) -> None:
    assert main(["inspect", str(tmp_path / "missing.pt")]) == 2
    assert "no model file" in capsys.readouterr().err
