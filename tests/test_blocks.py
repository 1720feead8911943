"""Tests for graphprune/blocks.py (which blocks the graph proves removable) and the depth oracle."""
from __future__ import annotations

import pytest
import timm
import torch
from torch import nn

import graphprune
from graphprune.blocks import find_blocks
from graphprune.testing import assert_block_removal_matches


class Res(nn.Module):
    def __init__(self, width: int = 8):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(width), nn.Linear(width, 2 * width), nn.Linear(2 * width, width)

    def forward(self, x):
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


class PostNorm(Res):
    def forward(self, x):
        return self.norm(x + self.fc2(torch.relu(self.fc1(x))))


class Scaled(Res):
    def forward(self, x):  # 2x + f(x): zeroing f leaves 2x, not x
        return x + (x + self.fc2(self.fc1(x)))


class Down(Res):
    def forward(self, x):  # the skip goes through a projection: no identity path
        return self.fc2(self.fc1(x)) + self.fc1(x)[..., :8]


class Gated(Res):
    def forward(self, x):  # the branch ends in a sigmoid: zeroing fc2 leaves 0.5, not 0
        return x + torch.sigmoid(self.fc2(self.fc1(x)))


class ReluAfter(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn = nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4)

    def forward(self, x):
        return torch.relu(x + self.bn(self.conv(x)))


class Stack(nn.Module):
    """A stem, then blocks in a ModuleList called by position with an extra argument."""

    def __init__(self, kinds):
        super().__init__()
        self.stem = nn.Linear(4, 8)
        self.blocks = nn.ModuleList([k() for k in kinds])

    def forward(self, x, scale: float = 1.0):
        x = self.stem(x) * scale
        for blk in self.blocks:
            x = blk(x)
        return x


X = torch.randn(3, 4)


def test_residual_blocks_are_found_and_others_are_kept_with_a_reason() -> None:
    blocks = find_blocks(Stack([Res, Scaled, Down, Gated, Res]), X)
    assert [b.fqn for b in blocks] == ["blocks.0", "blocks.4"]
    assert set(blocks.rejected) == {"blocks.1", "blocks.2", "blocks.3"}
    assert "not its input plus branches" in blocks.rejected["blocks.1"]
    assert "zeroes it" in blocks.rejected["blocks.3"]
    assert blocks[0].branches == ("blocks.0.fc2.weight", "blocks.0.fc2.bias")


def test_post_norm_blocks_are_removable_but_inexact() -> None:
    (block,) = find_blocks(nn.Sequential(nn.Linear(4, 8), PostNorm()), X)
    assert "norm" in block.inexact


def test_relu_after_the_addition_needs_an_input_that_left_a_relu() -> None:
    x = torch.randn(2, 4, 5, 5)
    assert not find_blocks(nn.Sequential(nn.Conv2d(4, 4, 1), ReluAfter()), x).blocks
    assert [b.fqn for b in find_blocks(nn.Sequential(nn.Conv2d(4, 4, 1), nn.ReLU(), ReluAfter()), x)] == ["2"]


@pytest.mark.parametrize("kinds,exact", [([Res, Res, Res], 3), ([Res, PostNorm, Res], 2)])
def test_removing_blocks_whose_branches_add_zero_changes_nothing(kinds, exact: int) -> None:
    assert assert_block_removal_matches(Stack(kinds), X) == exact


def test_the_oracle_fails_when_a_branch_still_adds_something() -> None:
    model = Stack([Res, Res])
    blocks = find_blocks(model, X)
    # a wrong proof (the branch ends elsewhere) must be caught: pretend fc1 ends the branch
    wrong = graphprune.blocks.Block("blocks.0", "blocks", 0, ("blocks.0.fc1.bias",), blocks[0].params)
    import graphprune.testing as testing
    original = graphprune.blocks.blocks_from_trace
    try:
        graphprune.blocks.blocks_from_trace = lambda traced, prefer=frozenset(): graphprune.blocks.Blocks(
            (wrong,), {}, traced)
        with pytest.raises(AssertionError, match="changed the output"):
            testing.assert_block_removal_matches(model, X)
    finally:
        graphprune.blocks.blocks_from_trace = original


@pytest.mark.parametrize("name,least", [("resnet18", 5), ("vit_tiny_patch16_224", 12), ("convnext_atto", 12)])
def test_timm_blocks_remove_exactly(name: str, least: int) -> None:
    torch.manual_seed(0)
    assert assert_block_removal_matches(timm.create_model(name).eval()) >= least


def _hf(name: str, cls: str):
    from zoo_tests.hf_archs import ARCHS, build

    return build(next(a for a in ARCHS if a.name == name), cls)


@pytest.mark.parametrize("name,cls,layers", [
    ("llama", "LlamaForCausalLM", {"model.layers.0", "model.layers.1"}),
    ("qwen2", "Qwen2ForCausalLM", {"model.layers.0", "model.layers.1"}),
    # T5's first layers make the relative position bias the others read: only their feed-forward
    # sublayers can go
    ("t5", "T5ForConditionalGeneration", {"encoder.block.1", "decoder.block.1"})])
def test_hf_layers_remove_exactly_and_the_config_follows(name: str, cls: str, layers: set) -> None:
    model = _hf(name, cls)
    blocks = find_blocks(model)
    counted = graphprune.surgery.blocks.layer_fields(model)
    assert {b.fqn for b in blocks if b.stack in counted} == layers
    assert assert_block_removal_matches(model) == len(blocks)


def test_bert_post_norm_layers_remove_exactly_while_their_norms_are_identities() -> None:
    model = _hf("bert", "BertModel")
    assert all(b.inexact for b in find_blocks(model))
    # LayerNorm(LayerNorm(x)) == LayerNorm(x) when gamma = 1, beta = 0 (BERT's initialisation)
    assert assert_block_removal_matches(model, inexact=True, tol=1e-4) == 2


def test_dropping_a_layer_renumbers_the_rest_and_their_config() -> None:
    from graphprune.surgery.blocks import remove_blocks_

    model = _hf("llama", "LlamaForCausalLM")
    model.config.num_hidden_layers = 3
    model.config.layer_types = ["full_attention", "sliding_attention", "full_attention"]
    model.model.layers.append(type(model.model.layers[0])(model.config, 2))
    remove_blocks_(model, ["model.layers.1"])
    assert len(model.model.layers) == model.config.num_hidden_layers == 2
    assert model.config.layer_types == ["full_attention", "full_attention"]
    assert [layer.self_attn.layer_idx for layer in model.model.layers] == [0, 1]
