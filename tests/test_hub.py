"""Tests for graphprune/hub.py: a tampered config.json gives a graphprune error naming the field."""
from __future__ import annotations

import json

import pytest
import torch
import transformers

import graphprune
from graphprune.errors import LoadError, PlanError

IDS = torch.tensor([[1, 2, 3, 4]])


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=80, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=100, use_cache=False)
    torch.manual_seed(0)
    small = graphprune.shrink(transformers.LlamaForCausalLM(cfg).eval(), 0.3, tolerance=0.05)
    path = tmp_path_factory.mktemp("llama")
    small.save_pretrained(path)
    return path, small, json.loads((path / "config.json").read_text())


def test_per_layer_widths_round_trip(saved) -> None:
    path, small, config = saved
    assert config["graphprune"]["fingerprint"] and config["graphprune"]["shapes"]
    again = graphprune.from_pretrained(str(path))
    assert type(again) is type(small) and torch.equal(again(IDS).logits, small(IDS).logits)


@pytest.mark.parametrize("edit, error, match", [
    (lambda c: c.update(architectures=["is_torch_available"]), LoadError,
     r"'architectures'\[0\] is 'is_torch_available', which is not a model class of transformers"),
    (lambda c: c.update(architectures=["__builtins__"]), LoadError, r"not a model class of transformers"),
    (lambda c: c.pop("architectures"), LoadError, r"names no architecture"),
    (lambda c: c["graphprune"].pop("base"), PlanError, r"config.json: graphprune has no field 'base'"),
    (lambda c: c["graphprune"].update(version=2), PlanError, r"graphprune has format version 2"),
    (lambda c: c["graphprune"].update(shapes={"lm_head.weight": "big"}), PlanError,
     r"graphprune field 'shapes'\['lm_head.weight'\] must be a list, got str"),
    (lambda c: c["graphprune"].update(shapes={"lm_head.weight": [100, 64]}), PlanError,
     r"'shapes'\['lm_head.weight'\] is \[100, 64\], which the base model's \[100, 32\] cannot be pruned to"),
    (lambda c: c["graphprune"].update(attrs={"model": {"forward": 1}}), PlanError, r"method or read-only property"),
    (lambda c: c["graphprune"].update(fingerprint="0" * 16), PlanError, r"not the one the weights were pruned from"),
    (lambda c: c.update(model_type="no-such-model"), LoadError, r"cannot load config.json from"),
    # the modules are built from the base config, then read this one: rotary tables for 1-wide heads
    (lambda c: c.update(head_dim=1), PlanError, r"field 'head_dim' is 1, but the model was pruned from one with heads of 8"),
    (lambda c: c.update(intermediate_size=1000), PlanError,
     r"field 'intermediate_size' is 1000, which no pruning of the base's 80 gives"),
    # transformers runs layers[:num_hidden_layers]: a smaller count would skip layers
    (lambda c: c.update(num_hidden_layers=1), PlanError,
     r"field 'num_hidden_layers' is 1, but the model has 2 layers in model.layers; restore it to 2"),
    (lambda c: c.update(num_key_value_heads=4), PlanError, r"field 'num_key_value_heads' is 4, which no pruning of the base's 2"),
])
def test_a_tampered_config_is_a_graphprune_error(saved, tmp_path, edit, error, match) -> None:
    path, _, config = saved
    for f in path.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    config = json.loads(json.dumps(config))
    edit(config)
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(error, match=match):
        graphprune.from_pretrained(str(tmp_path))


def test_a_config_that_is_not_json_is_a_load_error(tmp_path) -> None:
    (tmp_path / "config.json").write_text("{ not json")
    with pytest.raises(LoadError, match="cannot load config.json"):
        graphprune.from_pretrained(str(tmp_path))


@pytest.mark.parametrize("shard", ["weights.bin", "../outside.safetensors"])
def test_an_index_naming_a_pickle_or_a_file_outside_is_refused_before_any_read(saved, tmp_path, shard,
                                                                                monkeypatch) -> None:
    # transformers would torch.load a '.bin' shard (a pickle) and follow '../x' out of the folder
    path, small, config = saved
    for f in path.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "model.safetensors").unlink()
    torch.save(small.state_dict(), tmp_path / "weights.bin")
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": {k: shard for k in small.state_dict()}}))
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))
    with pytest.raises(LoadError, match=rf"maps tensor .* to shard '{shard}', which is not a plain \*\.safetensors"):
        graphprune.from_pretrained(str(tmp_path))
    assert not loads
