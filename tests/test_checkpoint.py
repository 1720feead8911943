"""Tests for graphprune/checkpoint.py: meta-device planning from a checkpoint, pruning it shard by shard."""
from __future__ import annotations

import copy
import json
import shutil

import pytest
import torch
import transformers

import graphprune
from graphprune.checkpoint import plan_checkpoint, weight_files
from graphprune.cli import main

CONFIG = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=96, use_cache=False, tie_word_embeddings=True)
IDS = torch.tensor([[1, 2, 3, 4]])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """A tiny Llama saved in several small shards, and the same model loaded back from it."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "src"
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG)).save_pretrained(path, max_shard_size="40KB")
    assert len(set(weight_files(path).values())) > 3
    return path, transformers.LlamaForCausalLM.from_pretrained(path).eval()


def test_meta_analysis_from_the_checkpoint_plans_as_the_loaded_model(folder):
    path, real = folder
    config = graphprune.ShrinkConfig(ratio=0.3)
    meta = graphprune.meta_model(path)
    assert all(p.is_meta for p in meta.parameters())
    groups = graphprune.find_groups(meta)
    assert groups.to_json() == graphprune.find_groups(real).to_json()
    scores = graphprune.score(meta, groups, "l2", tensors=graphprune.checkpoint_tensors(path, meta))
    plan = graphprune.make_plan(meta, groups, config, scores=scores)
    expected = graphprune.make_plan(real, graphprune.find_groups(real), config)
    assert plan.removed and (plan.keep, plan.attrs, plan.model_config) == (expected.keep, expected.attrs,
                                                                          expected.model_config)


def test_meta_model_without_weights_says_how_to_score(folder):
    meta = graphprune.meta_model(folder[0])
    with pytest.raises(graphprune.ConfigError, match="checkpoint_tensors"):
        graphprune.score(meta, graphprune.find_groups(meta), "l2")


@pytest.mark.parametrize("uniform", [False, True])
def test_pruned_folder_matches_in_memory_pruning(folder, tmp_path, uniform):
    path, real = folder
    plan = plan_checkpoint(path, graphprune.ShrinkConfig(ratio=0.3, uniform=uniform, round_to=2 if uniform else 1))
    graphprune.prune_checkpoint(path, plan, tmp_path / "dst")
    small = graphprune.apply_plan_(copy.deepcopy(real), plan)
    small.save_pretrained(tmp_path / "mem")
    assert json.loads((tmp_path / "dst/config.json").read_text()) == json.loads((tmp_path / "mem/config.json").read_text())
    index = json.loads((tmp_path / "dst/model.safetensors.index.json").read_text())
    assert index["weight_map"] == json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    loaded = (transformers.LlamaForCausalLM.from_pretrained if uniform else graphprune.from_pretrained)(tmp_path / "dst")
    got, want = loaded.state_dict(), small.state_dict()
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in got)
    assert graphprune.count_params(loaded) == plan.params_after < plan.params_before
    assert torch.equal(loaded.generate(IDS, max_new_tokens=4, do_sample=False),
                       small.generate(IDS, max_new_tokens=4, do_sample=False))


def test_a_plan_for_another_model_is_refused_before_writing(folder, tmp_path):
    other = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**CONFIG, "intermediate_size": 320}))
    plan = graphprune.make_plan(other, graphprune.find_groups(other), graphprune.ShrinkConfig(ratio=0.3))
    with pytest.raises(graphprune.PlanError, match="made for another model"):
        graphprune.prune_checkpoint(folder[0], plan, tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


def test_a_plan_whose_coupled_tensors_keep_other_neurons_is_refused_before_writing(folder, tmp_path):
    plan = plan_checkpoint(folder[0], graphprune.ShrinkConfig(ratio=0.3, prune=("mlp",)))
    fqn = "model.layers.0.mlp.down_proj.weight"
    kept = plan.keep[fqn][1]
    other = sorted(set(range(160)) - set(kept))[:1] + kept[1:]  # as many neurons, one of them another
    forged = plan.with_parts(keep={**plan.keep, fqn: {1: sorted(other)}})
    with pytest.raises(graphprune.PlanError, match=rf"keep\['{fqn}'\]\[1\] drops units .* coupled tensors would keep"):
        graphprune.prune_checkpoint(folder[0], forged, tmp_path / "dst")
    assert not (tmp_path / "dst").exists()


def test_cli_prunes_a_folder(folder, tmp_path, capsys):
    assert main(["prune-checkpoint", str(folder[0]), str(tmp_path / "dst"), "--ratio", "0.25"]) == 0
    assert "parameters" in capsys.readouterr().out
    loaded = graphprune.from_pretrained(tmp_path / "dst")
    plan = graphprune.Plan.from_json(str(tmp_path / "dst/graphprune.plan.json"))
    assert graphprune.count_params(loaded) == plan.params_after


def test_report_of_a_meta_model_counts_as_for_the_loaded_one(folder):
    path, real = folder
    meta = graphprune.meta_model(path)
    groups = graphprune.find_groups(meta)
    plan = graphprune.make_plan(meta, groups, graphprune.ShrinkConfig(ratio=0.3),
                                scores=graphprune.score(meta, groups, "random"))
    got = graphprune.plan_report(meta, groups, plan)
    want = graphprune.plan_report(real, graphprune.find_groups(real), plan)
    assert (got.params_after, got.macs_before, got.macs_after) == (want.params_after, want.macs_before, want.macs_after)
    assert got.macs_after < got.macs_before and got.pruned == want.pruned
    assert all(p.is_meta for p in meta.parameters())  # the meta model itself is not pruned


@pytest.mark.parametrize("shard", ["../outside.safetensors", "/tmp/outside.safetensors", "sub/x.safetensors",
                                   "config.json", 7])
def test_an_index_naming_a_shard_outside_the_folder_is_refused(folder, tmp_path, shard):
    """A tampered index would make prune_checkpoint read, then write, wherever it points."""
    path, real = folder
    src = tmp_path / "src"
    shutil.copytree(path, src)
    index = json.loads((src / "model.safetensors.index.json").read_text())
    first = next(iter(index["weight_map"]))
    index["weight_map"][first] = shard
    (src / "model.safetensors.index.json").write_text(json.dumps(index))
    plan = graphprune.make_plan(real, graphprune.find_groups(real), graphprune.ShrinkConfig(ratio=0.3))
    with pytest.raises(graphprune.LoadError, match=f"maps tensor '{first}' to shard .*plain"):
        graphprune.prune_checkpoint(src, plan, tmp_path / "dst")
    assert not (tmp_path / "dst").exists() and not (tmp_path / "outside.safetensors").exists()


def test_meta_model_refuses_an_architecture_that_is_no_model_class(folder, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(folder[0], src)
    config = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**config, "architectures": ["AutoTokenizer"]}))
    with pytest.raises(graphprune.LoadError, match="'AutoTokenizer', which is not a model class"):
        graphprune.meta_model(src)
