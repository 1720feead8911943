"""Tests for depth pruning: graphprune/depth.py (which blocks go), graphprune/actions.py (the plan's
typed actions), the block surgeons in graphprune/surgery/blocks.py and the block criteria."""
from __future__ import annotations

import json

import pytest
import timm
import torch
from torch import nn

import graphprune
from graphprune.actions import DropEntries, Plan, Replace
from graphprune.blocks import find_blocks
from graphprune.errors import PlanError

from .test_blocks import Res, Stack, X


def _state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_layers_alone_meet_the_ratio_in_whole_blocks_and_the_report_lists_them() -> None:
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224").eval()
    small, report = graphprune.shrink(vit, 0.23, prune=("layers",), return_report=True)
    assert type(small).__name__ == "VisionTransformer"
    assert sum(isinstance(b, nn.Identity) for b in small.blocks) == 3 == len(report.removed_blocks)
    assert abs(report.ratio - 0.23) <= 0.01
    assert "removed block: blocks." in str(report) and "(branch_norm " in str(report)
    scores = [float(r.split()[-1].rstrip(")")) for r in report.removed_blocks]
    assert scores == sorted(scores)  # the lowest-scored blocks go first
    kept = [float(v) for v in graphprune.criteria.blocks.score_blocks(
        vit, find_blocks(vit), "branch_norm").raw.values()]
    assert max(scores) <= sorted(kept)[3]


def test_a_ratio_between_block_steps_names_the_reachable_ones() -> None:
    with pytest.raises(PlanError, match=r"nearest reachable ratios are 0\.\d+ and 0\.\d+"):
        graphprune.shrink(timm.create_model("vit_tiny_patch16_224"), 0.25, prune=("layers",))


def test_layers_n_removes_exactly_n_and_more_than_removable_names_the_maximum() -> None:
    model = Stack([Res, Res, Res])
    small = graphprune.shrink(model, 0.0, prune=("layers",), layers=2, example_inputs=X)
    assert sum(isinstance(b, graphprune.surgery.blocks.Skip) for b in small.blocks) == 2
    with pytest.raises(PlanError, match=r"layers=4 but only 3 blocks are removable"):
        graphprune.shrink(model, 0.0, prune=("layers",), layers=4, example_inputs=X)


def test_a_model_without_removable_blocks_says_so_and_removes_nothing() -> None:
    plain = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    x = torch.randn(1, 3, 12, 12)
    plain(x)
    before = _state(plain)
    with pytest.raises(PlanError, match="no block of this model is removable"):
        graphprune.shrink(plain, 0.3, prune=("layers",), example_inputs=x, inplace=True)
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())


def test_layers_and_widths_share_one_ratio() -> None:
    vit = timm.create_model("vit_tiny_patch16_224").eval()
    small, report = graphprune.shrink(vit, 0.4, prune=("layers", "heads", "mlp"), return_report=True)
    assert abs(report.ratio - 0.4) <= 0.01
    assert report.removed_blocks and report.pruned  # about half the budget in blocks, the rest in widths
    with pytest.raises(PlanError, match=r"layers=6 alone removes 0\.\d+ of the model, more than ratio=0.2"):
        graphprune.shrink(vit, 0.2, prune=("layers", "mlp"), layers=6)


def test_the_plan_of_actions_round_trips_and_reapplies_to_a_fresh_model(tmp_path) -> None:
    vit = timm.create_model("vit_tiny_patch16_224").eval()
    plan = graphprune.make_plan(vit, graphprune.find_groups(vit),
                                graphprune.ShrinkConfig(ratio=0.4, prune=("layers", "mlp")))
    plan.to_json(tmp_path / "plan.json")
    again = Plan.from_json(str(tmp_path / "plan.json"))
    assert again == plan and {a.op for a in again.actions} == {"slice", "replace"}
    fresh = timm.create_model("vit_tiny_patch16_224").eval()
    graphprune.apply_plan_(fresh, again, torch.randn(1, 3, 224, 224))
    assert sum(p.numel() for p in fresh.parameters()) == plan.params_after
    with pytest.raises(AttributeError):
        plan.actions[0].tensor = "x"  # frozen once made


def test_old_plan_files_are_refused_with_what_to_do() -> None:
    data = json.loads(graphprune.make_plan(Stack([Res, Res]), graphprune.find_groups(Stack([Res, Res]), X),
                                           graphprune.ShrinkConfig(ratio=0.2, tolerance=0.05)).to_json())
    for old in ({**data, "version": 2}, {k: v for k, v in data.items() if k != "version"}):
        with pytest.raises(PlanError, match="(format version 2|no 'version' field).*Make the plan again"):
            Plan.from_dict(old)
    with pytest.raises(PlanError, match=r"'actions'\[0\].*'op' is one of"):
        Plan.from_dict({**data, "actions": [{"op": "delete_everything"}]})


@pytest.mark.parametrize("action,match", [
    (Replace("", "identity"), "replaces the root"),
    (Replace("blocks.0", "zero"), "by 'zero'"),
    (Replace("blocks.9", "skip"), "no module 'blocks.9'"),
    (DropEntries("blocks.0", (0,)), "no ModuleList"),
    (DropEntries("blocks", (0, 1, 2)), "drops all 3 entries"),
    (DropEntries("blocks", (2, 0)), "comes after"),
    (DropEntries("blocks", (1,), "num_hidden_layers"), "not a config field"),
    # a module whose output is not its input plus branches: removing it changes what the model computes
    (Replace("blocks.1.fc2", "identity"), r"'blocks.1.fc2' is no block of the model .* blocks.0, blocks.1, blocks.2"),
    (DropEntries("blocks", (1,)), None),
])
def test_structural_actions_are_checked_before_anything_changes(action, match: str | None) -> None:
    model = Stack([Res, Res, Res])
    before = _state(model)
    plan = Plan.build(structure=[action], config={}, params_before=1, params_after=1,
                      fingerprint=graphprune.fingerprint(model))
    if match is None:  # the control: a block of the model may go
        assert len(graphprune.apply_plan_(model, plan, X).blocks) == 2
        return
    with pytest.raises(PlanError, match=match):
        graphprune.apply_plan_(model, plan, X)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()) and len(model.blocks) == 3


def test_a_failed_forward_puts_removed_blocks_back() -> None:
    model = Stack([Res, Res, Res])
    plan = Plan.build(structure=[Replace("blocks.1", "skip")], config={}, params_before=1, params_after=1,
                      fingerprint=graphprune.fingerprint(model), output_shapes=[[9, 9]])  # a shape the forward never gives
    blocks = list(model.blocks)
    with pytest.raises(graphprune.SurgeryError):
        graphprune.apply_plan_(model, plan, X)
    assert list(model.blocks) == blocks


def test_block_criteria_read_what_calibration_measured() -> None:
    model = Stack([Res, Res, Res]).eval()
    with torch.no_grad():
        model.blocks[1].fc2.weight.zero_()
        model.blocks[1].fc2.bias.zero_()  # block 1 adds nothing: it turns nothing and skipping it costs nothing
    blocks = find_blocks(model, X)
    stats = graphprune.calibrate(model, graphprune.find_groups(model, X), [torch.randn(8, 4) for _ in range(3)],
                                 needs=("blocks", "bypass"), blocks=blocks)
    for name in ("angular", "bypass", "branch_norm"):
        raw = graphprune.criteria.blocks.score_blocks(model, blocks, name, stats).raw
        assert raw["blocks.1"] == pytest.approx(0.0, abs=1e-12) and min(raw["blocks.0"], raw["blocks.2"]) > 1e-6
    assert {"angular", "bypass", "branch_norm"} <= set(graphprune.criteria.blocks.list_block_scorers())


def test_block_criteria_without_data_say_what_to_pass() -> None:
    with pytest.raises(graphprune.CalibrationError, match="calibration="):
        graphprune.shrink(Stack([Res, Res]), 0.0, prune=("layers",), layers=1, block_scorer="angular", example_inputs=X)


def test_a_weight_standardised_conv_is_mlp_not_hidden() -> None:
    """Its batch-norm-style statistics run over the weight, not over a residual stream: the old
    test of the message text ("norm" in it) called these channels hidden."""
    from timm.layers import StdConv2d

    model = nn.Sequential(StdConv2d(3, 8, 3), nn.ReLU(), StdConv2d(8, 4, 1))
    groups = graphprune.find_groups(model, torch.randn(1, 3, 8, 8))
    assert {g.kind for g in groups.prunable} == {"mlp"}


def _decoder(name: str, cls: str):
    import transformers

    from zoo_tests.hf_archs import ARCHS

    arch = next(a for a in ARCHS if a.name == name)
    torch.manual_seed(0)
    config = getattr(transformers, arch.config)(**{**arch.kwargs, "num_hidden_layers": 8})
    return getattr(transformers, cls)(config).eval()


@pytest.mark.parametrize("name,cls", [("llama", "LlamaForCausalLM"), ("qwen2", "Qwen2ForCausalLM")])
def test_hf_decoders_lose_layers_and_stock_transformers_loads_them(name: str, cls: str, tmp_path) -> None:
    from zoo_tests.test_hf import _stock_load_matches

    model = _decoder(name, cls)
    small = graphprune.shrink(model, 0.25, prune=("layers",))
    assert small.config.num_hidden_layers == len(small.model.layers) == 6
    assert [layer.self_attn.layer_idx for layer in small.model.layers] == list(range(6))
    assert len(getattr(small.config, "layer_types", None) or range(6)) == 6  # Qwen2 has per-layer types
    ids = torch.randint(3, 90, (1, 6), generator=torch.Generator().manual_seed(1))
    opts = dict(max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0)
    assert torch.equal(small.generate(ids, cache_implementation="static", **opts), small.generate(ids, **opts))
    small.save_pretrained(tmp_path)
    with torch.no_grad():
        want = small(ids).logits
    _stock_load_matches(cls, tmp_path, ((ids,), {}), want)


def test_hf_depth_and_per_layer_widths_reload_through_graphprune(tmp_path) -> None:
    model = _decoder("llama", "LlamaForCausalLM")
    small = graphprune.shrink(model, 0.5, prune=("layers", "heads", "mlp"))
    assert small.config.num_hidden_layers < 8
    small.save_pretrained(tmp_path)
    again = graphprune.from_pretrained(str(tmp_path))
    ids = torch.tensor([[5, 6, 7, 8]])
    assert torch.equal(again(ids).logits, small(ids).logits)


def test_a_misspelt_block_scorer_is_refused_even_without_layers() -> None:
    with pytest.raises(graphprune.ConfigError, match="block_scorer='angualr' is not a registered name.*did you mean 'angular'"):
        graphprune.shrink(Stack([Res, Res]), 0.3, block_scorer="angualr", example_inputs=X)
