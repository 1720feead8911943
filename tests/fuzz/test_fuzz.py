"""Fast tier of the random-model fuzzer: fixed seeds, each a model the zero-then-prune oracle must
find exact (or, where nothing is checkable, frozen with a reason). The slow tier (thousands of
seeds) is ``zoo_tests/test_fuzz.py``; every bug a seed found stays here as a regression seed."""
from __future__ import annotations

import pytest
import torch

import graphprune
from graphprune.testing import oracle_groups

from .check import EXACT, FROZEN, check
from . import source_blocks as S
from .generator import random_model

FAST_SEEDS = list(range(24))
# seeds whose models failed before a fix (found again by reverting each fix on the final generator)
REGRESSIONS = {
    42: "hand-written attention pruned the value head size, which head_dim (read in Python) also sizes",
    122: "torch's MHA splits in_proj_weight: its input columns had no consumer role, the oracle saw a diff",
    129: "num_heads matched torch's batch dim by value; with one width per attribute the heads froze",
    171: "an attribute bound by value to two dims of different groups changed for both",
    1175: "a block's num_heads followed another block's heads through the residual stream they share",
    1527: "the same, loudly: the other block's view(B, T, self.num_heads, d) no longer fitted",
}


@pytest.mark.parametrize("seed", FAST_SEEDS + sorted(REGRESSIONS))
def test_random_model_prunes_exactly_or_says_why_not(seed: int) -> None:
    torch.set_num_threads(1)
    outcome = check(seed)
    assert outcome.result in (EXACT, FROZEN), f"seed {seed}: {outcome.recipe}: {outcome.result}: {outcome.detail}"


@pytest.mark.parametrize("seed", range(12))
def test_random_recurrent_model_prunes_exactly(seed: int) -> None:
    # LSTM/GRU/RNN layers and cells, and bilinear maps, between sequence blocks: every one of these
    # seeds has checkable groups, recurrent hidden units among them
    model, recipe, groups = _exact(seed, "recurrent")
    checked = {m.fqn for g in groups for m in g.members}
    assert any("weight_hh" in f for f in checked) == ("Recurrent" in recipe or "CellLoop" in recipe), recipe
    assert any(f.endswith("bil.weight") for f in checked) == ("BilinearMix" in recipe), recipe


@pytest.mark.parametrize("seed", FAST_SEEDS[:6])
def test_random_model_shrinks_and_keeps_its_outputs(seed: int) -> None:
    model, inputs, recipe = random_model(seed)
    try:
        small = graphprune.shrink(model, 0.3, example_inputs=inputs, tolerance=0.3)
    except graphprune.PlanError as err:  # coarse toys: nothing, or too little, to prune is an honest answer
        assert "reachable" in str(err), err
        return
    with torch.no_grad():
        want, got = model(*inputs), small(*inputs)
    shapes = lambda out: [tuple(t.shape) for t in (out if isinstance(out, tuple) else (out,))]
    assert shapes(got) == shapes(want), recipe
    assert graphprune.count_params(small) < graphprune.count_params(model), recipe


@pytest.mark.parametrize("seed", list(range(12)) + [40, 57])  # 40, 57: heads made by an unflatten in a helper
def test_random_source_model_prunes_exactly_where_the_code_names_its_sizes(seed: int) -> None:
    # einops patterns and layers, head counts passed to helpers, heads folded into the batch dim,
    # a child's method sizing a per-head bias, repeated units: each must prune exactly, and every
    # multi-head block's heads must be among the checked groups (a helper that rebinds its
    # parameter may keep them)
    model, recipe, groups = _exact(seed, "source")
    heads = {m.fqn for g in groups if g.unit == "head" for m in g.members}
    for name, block in model.named_modules():
        if isinstance(block, S._Heads) and block.heads > 1 and getattr(block, "how", "") != "rebound":
            assert f"{name}.{'qkv' if block.fused else 'q'}.weight" in heads, f"{recipe}: {name} kept its heads"


def _exact(seed: int, family: str) -> tuple[torch.nn.Module, str, list[graphprune.Group]]:
    """The seed's model, recipe and checked groups, once the oracle found it exact."""
    torch.set_num_threads(1)
    outcome = check(seed, family=family)
    assert outcome.result == EXACT, f"seed {seed}: {outcome.recipe}: {outcome.result}: {outcome.detail}"
    model, inputs, recipe = random_model(seed, family)
    return model, recipe, oracle_groups(graphprune.find_groups(model, inputs))
