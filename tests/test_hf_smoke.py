"""Smoke tests on small Hugging Face models built from config: BertModel and LlamaForCausalLM (GQA)."""
from __future__ import annotations

import copy
import functools
import re

import pytest
import torch

import graphprune
from graphprune.errors import PlanError
from graphprune.plan import plan_from_units
from graphprune.surgery import apply_plan_
from graphprune.testing import assert_prune_matches

transformers = pytest.importorskip("transformers")
pytestmark = pytest.mark.hf

LAYERS, HEADS, KV_HEADS, HIDDEN, FFN = 2, 4, 2, 64, 128


def bert(vocab: int = 64, heads: int = 8) -> torch.nn.Module:
    # a small vocabulary and hidden size: BertModel's hidden size is its output, so frozen, and a
    # 1000-word embedding would hold most of the parameters
    cfg = transformers.BertConfig(hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=heads,
                                  intermediate_size=FFN, vocab_size=vocab, max_position_embeddings=64)
    torch.manual_seed(0)
    return transformers.BertModel(cfg).eval()


def llama() -> torch.nn.Module:
    cfg = transformers.LlamaConfig(hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                                   num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, vocab_size=1000,
                                   max_position_embeddings=64, use_cache=False)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


BUILDERS = {"bert": bert, "llama": llama}


@functools.cache
def analysed(name: str) -> tuple[torch.nn.Module, graphprune.Groups]:
    """One model and its groups per architecture, shared by the tests (tracing is the slow part)."""
    model = BUILDERS[name]()
    return model, graphprune.find_groups(model)


@functools.cache
def shrunk(name: str) -> torch.nn.Module:
    return graphprune.shrink(analysed(name)[0], 0.5)


@pytest.fixture(params=sorted(BUILDERS))
def built(request) -> tuple[torch.nn.Module, graphprune.Groups]:
    return analysed(request.param)


def _ids(batch: int, length: int) -> torch.Tensor:
    return torch.randint(0, 64, (batch, length), generator=torch.Generator().manual_seed(batch * length))


def _member(group, suffix: str, dim: int):
    found = [m for m in group.members if m.fqn.endswith(suffix) and m.dim == dim]
    assert len(found) == 1, f"{suffix}:{dim} in {[m.fqn for m in group.members]}"
    return found[0]


def test_find_groups_has_heads_and_mlp_and_every_op_has_a_rule(built) -> None:
    model, groups = built
    assert groups.coupling.unsupported == []
    heads = [g for g in groups.prunable if g.unit == "head"]
    mlp = [g for g in groups.prunable if g.width == FFN]
    assert len(heads) == LAYERS and len(mlp) == LAYERS


def test_bert_attention_attributes_follow_the_kept_heads() -> None:
    small = shrunk("bert")
    attns = [layer.attention.self for layer in small.encoder.layer]
    assert any(a.num_attention_heads < 8 for a in attns)
    for a in attns:
        assert a.num_attention_heads * a.attention_head_size == a.all_head_size == a.query.out_features


def test_unused_buffer_is_frozen() -> None:
    _, groups = analysed("llama")
    rope = [g for g in groups if any(m.fqn.endswith("original_inv_freq") for m in g.members)]
    assert rope and all(not g.prunable for g in rope)


def test_llama_head_unit_is_one_kv_head_with_its_query_heads() -> None:
    model, groups = analysed("llama")
    attn = model.model.layers[0].self_attn
    rep, hd = attn.num_key_value_groups, attn.head_dim
    heads = [g for g in groups.prunable if g.unit == "head"]
    for g in heads:
        assert g.width == KV_HEADS
        q, k = _member(g, "q_proj.weight", 0), _member(g, "k_proj.weight", 0)
        v, o = _member(g, "v_proj.weight", 0), _member(g, "o_proj.weight", 1)
        for u in range(g.width):
            assert sorted(set((k.indices[u] // hd).tolist())) == [u]
            assert sorted(set((q.indices[u] // hd).tolist())) == list(range(u * rep, (u + 1) * rep))
            assert v.indices[u].tolist() == k.indices[u].tolist()
            assert o.indices[u].tolist() == q.indices[u].tolist()


def test_llama_mlp_couples_gate_up_and_down() -> None:
    _, groups = analysed("llama")
    for g in (g for g in groups.prunable if g.width == FFN):
        gate, up = _member(g, "gate_proj.weight", 0), _member(g, "up_proj.weight", 0)
        down = _member(g, "down_proj.weight", 1)
        assert gate.indices.tolist() == up.indices.tolist() == down.indices.tolist()


def test_oracle_zeroed_heads_and_neurons_prune_exactly(built) -> None:
    model, groups = built
    result = assert_prune_matches(model, fraction=0.5, groups=groups)
    assert result.groups_checked >= 2 * LAYERS


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_shrink_half_keeps_class_and_runs_on_other_lengths(name: str) -> None:
    model, small = analysed(name)[0], shrunk(name)
    before = graphprune.count_params(model)
    assert type(small) is type(model)
    assert abs(1 - graphprune.count_params(small) / before - 0.5) <= 0.01
    for batch, length in [(1, 8), (2, 12), (3, 5)]:  # shapes captured by export must not leak
        with torch.no_grad():
            want, got = model(input_ids=_ids(batch, length)), small(input_ids=_ids(batch, length))
        assert got[0].shape == want[0].shape


def test_unreachable_ratio_names_the_reachable_maximum() -> None:
    # with 1000 words the frozen embeddings (and frozen hidden size) leave less than half prunable
    with pytest.raises(PlanError, match=r"largest reachable ratio is 0\.\d+") as err:
        graphprune.shrink(bert(vocab=1000, heads=4), 0.5)
    assert float(re.search(r"ratio is (0\.\d+)", str(err.value)).group(1)) < 0.5


def test_llama_generate_after_removing_a_kv_head() -> None:
    model, groups = analysed("llama")
    chosen = [(g, [0]) for g in groups.prunable if g.unit == "head"]
    small = apply_plan_(copy.deepcopy(model), plan_from_units(model, chosen, {}, groups), groups.traced.inputs)
    assert small.model.layers[0].self_attn.k_proj.out_features == (KV_HEADS - 1) * small.config.head_dim
    prompt = _ids(1, 5)
    out = small.generate(prompt, max_new_tokens=3, do_sample=False, use_cache=True)
    ids = prompt
    for _ in range(3):  # greedy decoding by hand, without a cache
        with torch.no_grad():
            ids = torch.cat([ids, small(input_ids=ids).logits[:, -1:].argmax(-1)], dim=1)
    assert out.tolist() == ids.tolist()


def test_gpt2_conv1d_mlp_prunes_exactly() -> None:
    # Conv1D keeps its weight transposed (addmm in the graph) and reshapes to its `nf` attribute
    cfg = transformers.GPT2Config(n_embd=HIDDEN, n_layer=1, n_head=HEADS, vocab_size=64, n_positions=64)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    groups = graphprune.find_groups(model)
    assert groups.coupling.unsupported == []
    assert assert_prune_matches(model, fraction=0.5, groups=groups).groups_checked >= 1
    mlp = next(g for g in groups.prunable if any(m.fqn.endswith("c_fc.weight") and m.dim == 1 for m in g.members))
    small = apply_plan_(copy.deepcopy(model), plan_from_units(model, [(mlp, [0, 1])], {}, groups))
    assert small.transformer.h[0].mlp.c_fc.nf == 4 * HIDDEN - 2


def test_a_vocabulary_as_wide_as_the_mlp_leaves_intermediate_size_describable(tmp_path) -> None:
    """vocab_size counts the model's output width, intermediate_size the MLP's: equal numbers must
    not pin one to the other, and stock transformers reloads the uniform result."""
    from zoo_tests.test_hf import _stock_load_matches

    cfg = transformers.LlamaConfig(hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
                                   num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, use_cache=False,
                                   vocab_size=FFN)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    small = graphprune.shrink(model, 0.3, uniform=True, prune=("heads", "mlp"))
    assert small.config.vocab_size == FFN
    assert small.config.intermediate_size == small.model.layers[0].mlp.down_proj.in_features < FFN
    ids = _ids(1, 7)
    small.save_pretrained(tmp_path)
    with torch.no_grad():
        want = small(ids).logits
    _stock_load_matches("LlamaForCausalLM", tmp_path, ((ids,), {}), want)
