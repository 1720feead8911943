"""Tests for graphprune/sparsity/masks.py: exact sparsity and patterns, training keeps the zeros,
make_dense_ computes what the masked model computes, bad input leaves the model as it was."""
from __future__ import annotations

import copy

import pytest
import torch
import transformers
from torch import nn

import graphprune
from graphprune.errors import CalibrationError, ConfigError, SparsityError
from graphprune.sparsity import is_masked, layout_of
from graphprune.sparsity.pattern import count

from .models import Mixed, Tiny


def _masks(model):
    return {fqn: m.parametrizations.weight[0].mask for fqn, m in model.named_modules() if is_masked(m)}


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("scorer", ["magnitude", "wanda"])
def test_every_masked_layer_has_exactly_the_ratio(ratio, scorer) -> None:
    model = Mixed()
    graphprune.sparsify_(model, ratio, scorer=scorer, calibration=Mixed.data(), head=True)
    masks = _masks(model)
    assert set(masks) == {"conv", "grouped", "up", "fc", "head"}
    for fqn, mask in masks.items():
        layout = layout_of(model.get_submodule(fqn))
        if scorer == "wanda":  # compared within each output row, as in the paper
            rows = mask.movedim(layout.out_axis, 0).reshape(mask.shape[layout.out_axis], -1)
            assert (rows.shape[1] - rows.sum(1) == count(ratio, rows.shape[1])).all(), fqn
        else:
            assert mask.numel() - int(mask.sum()) == count(ratio, mask.numel()), fqn
        weight = model.get_submodule(fqn).weight
        assert ((weight == 0) | mask).all(), fqn  # every masked weight reads as zero


@pytest.mark.parametrize("pattern", ["2:4", "1:4", "4:8"])
def test_n_m_every_group_of_m_inputs_holds_at_most_n(pattern) -> None:
    n, m = map(int, pattern.split(":"))
    model = Mixed()
    _, report = graphprune.sparsify_(model, pattern=pattern, head=True, return_report=True)
    assert len(report.masked) == 5 and all(abs(layer.sparsity - (1 - n / m)) < 1e-9 for layer in report.masked)
    for fqn, mask in _masks(model).items():
        layout = layout_of(model.get_submodule(fqn))
        weight = model.get_submodule(fqn).weight.detach()
        groups = weight.movedim(layout.in_axis, -1).reshape(-1, m)
        assert ((groups != 0).sum(1) <= n).all(), fqn
        assert (mask.movedim(layout.in_axis, -1).reshape(-1, m).sum(1) == n).all(), fqn


def test_training_keeps_the_zeros_and_make_dense_matches() -> None:
    model = Mixed()
    graphprune.sparsify_(model, 0.6, head=True)
    zeros = {f: ~m.clone() for f, m in _masks(model).items()}
    before = copy.deepcopy(model.fc.weight.detach())
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    for x in Mixed.data(5):
        opt.zero_grad()
        model(x).square().mean().backward()
        opt.step()
    assert not torch.equal(before, model.fc.weight.detach())  # it did train
    for fqn, gone in zeros.items():
        assert (model.get_submodule(fqn).weight[gone] == 0).all(), fqn
    x = Mixed.data(1)[0]
    model.eval()
    masked_out = model(x)
    param = model.fc.parametrizations.weight.original
    graphprune.make_dense_(model)
    assert not _masks(model) and not any(hasattr(m, "parametrizations") for m in model.modules())
    assert model.fc.weight is param  # an optimizer holding it keeps working
    assert torch.equal(model(x), masked_out)


def test_global_scope_hits_the_total_and_spreads_unevenly() -> None:
    model = Mixed()
    _, report = graphprune.sparsify_(model, 0.5, scope="global", head=True, return_report=True)
    masks = _masks(model)
    total = sum(m.numel() for m in masks.values())
    assert sum(m.numel() - int(m.sum()) for m in masks.values()) == count(0.5, total)
    assert len({round(layer.sparsity, 3) for layer in report.masked}) > 1


def test_again_with_a_larger_ratio_keeps_the_earlier_zeros() -> None:
    model = Mixed()
    graphprune.sparsify_(model, 0.3, head=True)
    first = {f: m.clone() for f, m in _masks(model).items()}
    graphprune.sparsify_(model, 0.6, head=True)
    for fqn, mask in _masks(model).items():
        assert not (mask & ~first[fqn]).any(), fqn  # nothing zeroed before comes back
        assert mask.numel() - int(mask.sum()) == count(0.6, mask.numel())
    assert all(len(m.parametrizations.weight) == 1 for m in model.modules() if hasattr(m, "parametrizations"))



def test_again_with_a_smaller_ratio_is_refused_and_changes_nothing() -> None:
    # the first call zeroed the stored weights: a 20% mask cannot bring them back, and the report
    # must not say 20% while 80% of the weights are zero
    model = Mixed()
    graphprune.sparsify_(model, 0.8, head=True)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(SparsityError, match=r"masked already with 80\.0%.*ratio=0\.2.*can only grow"):
        graphprune.sparsify_(model, 0.2, head=True)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_a_pattern_over_unstructured_zeros_reports_the_zeros_it_has() -> None:
    # 2:4 after 70% unstructured: groups with three zeros keep one of them, so more than half is zero
    model = Mixed()
    graphprune.sparsify_(model, 0.7, scorer="magnitude", head=True)
    first = {f: m.clone() for f, m in _masks(model).items()}
    _, report = graphprune.sparsify_(model, pattern="2:4", head=True, return_report=True)
    for layer in report.masked:
        mask = _masks(model)[layer.fqn]
        assert not (mask & ~first[layer.fqn]).any(), layer.fqn
        assert layer.sparsity == pytest.approx(1 - mask.float().mean().item()) and layer.sparsity >= 0.7 - 1e-6
        module = model.get_submodule(layer.fqn)
        groups = module.weight.detach().movedim(layout_of(module).in_axis, -1).reshape(-1, 4)
        assert ((groups != 0).sum(1) <= 2).all(), layer.fqn  # still at most 2 of every 4


def test_global_scope_again_keeps_every_earlier_zero() -> None:
    model = Mixed()
    graphprune.sparsify_(model, 0.4, scope="global", head=True)
    first = {f: m.clone() for f, m in _masks(model).items()}
    graphprune.sparsify_(model, 0.6, scope="global", scorer="wanda", calibration=Mixed.data(), head=True)
    masks = _masks(model)
    assert all(not (masks[f] & ~first[f]).any() for f in masks)
    total = sum(m.numel() for m in masks.values())
    assert sum(m.numel() - int(m.sum()) for m in masks.values()) == count(0.6, total)

def test_dense_by_default_embeddings_norms_head_and_tied_listed() -> None:
    model = Tiny()
    ids = torch.randint(0, 32, (2, 5))
    _, report = graphprune.sparsify_(model, 0.5, example_inputs=ids, return_report=True)
    assert [m.fqn for m in report.masked] == ["fc1", "fc2"]
    why = dict(report.dense)
    assert why["embed"] == "embedding" and why["norm"] == "norm" and "output head" in why["head"]
    _, report = graphprune.sparsify_(Tiny(), 0.5, head=True, ignore=("fc2",), return_report=True)
    why = dict(report.dense)
    assert "tied" in why["head"] and why["fc2"] == "ignored"
    assert "fc2" in str(report) and "embedding" in str(report)


def test_output_head_found_by_name_on_hf_models() -> None:
    cfg = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=2, vocab_size=64, tie_word_embeddings=False)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    _, report = graphprune.sparsify_(model, pattern="2:4", return_report=True)
    masked = {m.fqn for m in report.masked}
    assert "transformer.h.0.attn.c_attn" in masked and "lm_head" not in masked  # Conv1D is (in, out)
    assert "output head" in dict(report.dense)["lm_head"]
    w = model.transformer.h[0].mlp.c_proj.weight
    assert ((w.detach().T.reshape(-1, 4) != 0).sum(1) <= 2).all()


def test_errors_name_the_value_and_leave_the_model_as_it_was() -> None:
    model = Mixed()
    state = copy.deepcopy(model.state_dict())
    for kwargs, error, words in [
        (dict(ratio=1.0), ConfigError, "ratio=1.0 is outside [0, 1)"),
        (dict(ratio=-0.1), ConfigError, "outside [0, 1)"),
        (dict(ratio=0.3, pattern="2:4"), ConfigError, "does not match pattern='2:4'"),
        (dict(pattern="4:2"), ConfigError, "0 < N < M"),
        (dict(pattern="2:4", scope="global"), ConfigError, "scope='global'"),
        (dict(ratio=0.5, scorer="wanda"), CalibrationError, "calibration="),
        (dict(ratio=0.5, scorer="nope"), ConfigError, "magnitude"),
        (dict(pattern="3:16", head=True), SparsityError, "fc (8 inputs)"),
        (dict(ratio="0.5"), ConfigError, "ratio='0.5' must be a number"),
        (dict(ratio=0.5, head="yes"), ConfigError, "head='yes' must be True or False"),
        (dict(ratio=0.5, return_report="no"), ConfigError, "return_report='no' must be True or False"),
        (dict(ratio=0.5, ignore=("fcc",)), ConfigError, "ignore='fcc' matches no module"),
    ]:
        with pytest.raises(error, match=None) as info:
            graphprune.sparsify_(model, **kwargs)
        assert words in str(info.value), (kwargs, str(info.value))
        assert not _masks(model) and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), state.values()))


def test_calibrate_reads_inputs_of_any_module_without_groups() -> None:
    model = Mixed()
    stats = graphprune.calibrate(model, None, Mixed.data(), modules={"conv": 1, "fc": -1})
    x = torch.cat(Mixed.data()).double()
    assert stats.inputs["conv"].count == x.shape[0] * 36
    torch.testing.assert_close(torch.from_numpy(stats.inputs["conv"].norm), x.square().sum((0, 2, 3)).sqrt())
    assert stats.inputs["fc"].sum.shape == (8,)
    with pytest.raises(CalibrationError, match="groups="):
        graphprune.calibrate(model, None, Mixed.data(), needs=("grads",))


def test_shrink_refuses_masks_and_keeps_the_zeros_once_they_are_dense() -> None:
    model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 4))
    x = torch.randn(3, 8)
    graphprune.sparsify_(model, 0.5, head=True)
    with pytest.raises(ConfigError, match="structure first"):
        graphprune.shrink(model, 0.3, example_inputs=x)
    with pytest.raises(ConfigError, match="make_dense_"):
        graphprune.Pruner(model, 0.3, example_inputs=x)
    with pytest.raises(ConfigError, match="carry sparsity masks; call graphprune.make_dense_"):
        graphprune.save_pretrained(model, "never-written")
    dense = graphprune.make_dense_(model)
    small, report = graphprune.shrink(dense, 0.3, example_inputs=x, return_report=True)
    kept = report.plan.keep["4.weight"][1]
    assert small[0].out_features < 32 and torch.equal(small[4].weight, dense[4].weight[:, kept])
    assert (small[4].weight == 0).float().mean() > 0.3  # the masked zeros came along


def test_structure_first_then_2_4_masks() -> None:
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 4))
    x = torch.randn(3, 16)
    small = graphprune.shrink(model, 0.4, example_inputs=x, round_to=4, tolerance=0.05)
    _, report = graphprune.sparsify_(small, pattern="2:4", return_report=True)
    assert [m.fqn for m in report.masked] == ["0", "2"] and small[2].in_features < 64
    assert ((small[2].weight.detach().reshape(-1, 4) != 0).sum(1) <= 2).all()
