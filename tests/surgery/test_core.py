"""Tests for graphprune/surgery/core.py and the mechanics it runs (tensors.py, snapshot.py): memory-releasing
slicing, exact rollback, copies that share."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import graphprune
from graphprune.plan import plan_from_units
from graphprune.surgery import SLICERS, apply_plan_shared_, shared_copy, unshare_
from tests.models import TOYS

CASES = {t.name: t for t in TOYS}


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}


class Broken(nn.Linear):
    """A Linear whose slicer fails: surgery must put back every tensor it already sliced."""


def test_failed_surgery_restores_released_tensors_exactly(monkeypatch):
    toy = CASES["tied_lm"]
    model = toy.build().eval()
    model.mid.__class__ = Broken
    objects = {k: v for k, v in model.state_dict(keep_vars=True).items()}
    before = _state(model)
    plan = graphprune.make_plan(model, graphprune.find_groups(model, toy.inputs()), graphprune.ShrinkConfig(ratio=0.3, tolerance=0.1))
    assert any(f.startswith("emb.") for f in plan.keep)  # a tied tensor is sliced, then restored

    def broken(module):
        raise RuntimeError("slicer failed")
    monkeypatch.setitem(SLICERS._items, Broken, broken)
    with pytest.raises(graphprune.SurgeryError, match="restored"):
        graphprune.apply_plan_(model, plan)
    after = model.state_dict(keep_vars=True)
    assert all(after[k] is objects[k] and torch.equal(after[k], before[k]) for k in before)
    assert model.lm_head.weight is model.emb.weight


@pytest.mark.parametrize("name", ["residual", "concat", "tied_lm", "swiglu"])
def test_copy_mode_leaves_the_original_untouched_and_shares_nothing(name):
    toy = CASES[name]
    model = toy.build().eval()
    before = _state(model)
    small = graphprune.shrink(model, 0.3, example_inputs=toy.inputs(), tolerance=0.1)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    ids = {id(t) for t in [*model.parameters(), *model.buffers()]}
    assert not ids & {id(t) for t in [*small.parameters(), *small.buffers()]}
    assert graphprune.count_params(small) < graphprune.count_params(model)


def test_shared_copy_shares_only_the_named_tensors():
    model = CASES["residual"].build()
    names = [n for n, _ in model.named_parameters()]
    copy, shared = shared_copy(model, {names[0]})
    assert copy.get_parameter(names[0]) is model.get_parameter(names[0])
    assert copy.get_parameter(names[1]) is not model.get_parameter(names[1])
    unshare_(copy, shared)
    assert copy.get_parameter(names[0]) is not model.get_parameter(names[0])
    assert torch.equal(copy.get_parameter(names[0]), model.get_parameter(names[0]))


def test_in_place_report_counts_the_original_macs():
    toy = CASES["residual"]
    model = toy.build().eval()
    macs = graphprune.count_macs(model, ((toy.inputs(),), {}))
    small, report = graphprune.shrink(model, 0.3, example_inputs=toy.inputs(), inplace=True, return_report=True,
                                     tolerance=0.1)
    assert small is model and report.macs_before == macs > report.macs_after


def test_a_shared_copy_in_train_mode_leaves_the_original_statistics():
    toy = CASES["residual"]
    model = toy.build().train()
    before = _state(model)
    groups = graphprune.find_groups(model, toy.inputs())
    inner = next(g for g in groups.prunable if any(m.fqn == "a.0.weight" and m.dim == 0 for m in g.members))
    plan = plan_from_units(model, [(inner, [0, 1])], {}, groups)  # the stem's BatchNorm stays whole
    target, shared = shared_copy(model, {m.fqn for g in groups.prunable for m in g.members})
    apply_plan_shared_(target, plan, ((toy.inputs(),), {}), None, shared)
    assert target.a[1].num_features == 6 and target.stem[1].running_mean is not model.stem[1].running_mean
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def _interrupted_mlp(interrupt: type[BaseException]) -> nn.Module:
    """An MLP whose last layer raises ``interrupt`` once it sees a pruned width: Ctrl-C (or
    ``sys.exit``) arriving while the pruned model's first forward runs."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))

    def hook(mod: nn.Module, args: tuple) -> None:
        if args[0].shape[-1] != 16:
            raise interrupt()
    m[4].register_forward_pre_hook(hook)
    return m


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, SystemExit])
@pytest.mark.parametrize("how", ["one-shot", "steps", "pruner"])
def test_an_interrupt_mid_surgery_restores_the_model(interrupt: type[BaseException], how: str) -> None:
    m = _interrupted_mlp(interrupt)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(4, 8)
    with pytest.raises(interrupt):
        if how == "pruner":
            graphprune.Pruner(m, 0.3, steps=2, tolerance=0.1, example_inputs=x).step()
        else:
            graphprune.shrink(m, 0.3, tolerance=0.1, example_inputs=x, inplace=True, steps=2 if how == "steps" else 1)
    after = m.state_dict()
    assert list(after) == list(before)
    for k, v in before.items():
        torch.testing.assert_close(after[k], v, rtol=0, atol=0)
    assert [l.out_features for l in (m[0], m[2])] == [16, 16]


def test_channels_last_weights_stay_channels_last() -> None:
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.Conv2d(16, 8, 3)).to(memory_format=torch.channels_last)
    small = graphprune.shrink(model, 0.3, example_inputs=torch.randn(1, 3, 8, 8), tolerance=0.2)
    assert small[0].out_channels < 16
    for conv in (small[0], small[2]):
        assert conv.weight.is_contiguous(memory_format=torch.channels_last) and not conv.weight.is_contiguous()
