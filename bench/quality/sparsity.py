"""Quality benchmark (e): weight masks. Magnitude against Wanda at 50% unstructured and at 2:4 on
the pretrained sentence encoder (bench (a), all-MiniLM-L6-v2) and on the bench's byte-level Llama
(bench (d), trained here, cached between runs), no fine-tuning.

Every Linear is masked except the LM's output head (``sparsify_``'s default; the encoder has none:
its unused pooler is masked too). Wanda reads the same calibration batches as the structured recipes
of (a) and (d). Measured: the encoder's cosine and nearest-neighbour agreement with the dense model,
the LM's held-out perplexity; and the masks' sparsity, checked against what was asked.

    .venv/bin/python -m bench.quality.sparsity [--quick]
"""
from __future__ import annotations

import copy
import json
import sys
import time
from typing import Any

import torch

import graphprune
from bench.quality import common, minilm, tiny_llama, trained

NAME = "sparsity"
RECIPES = [("magnitude 50%", dict(ratio=0.5, scorer="magnitude")), ("wanda 50%", dict(ratio=0.5, scorer="wanda")),
           ("magnitude 2:4", dict(pattern="2:4", scorer="magnitude")), ("wanda 2:4", dict(pattern="2:4", scorer="wanda"))]


def _masked(model: torch.nn.Module, calib: list, options: dict[str, Any]) -> tuple[torch.nn.Module, dict[str, Any]]:
    t0 = time.perf_counter()
    small, report = graphprune.sparsify_(copy.deepcopy(model), calibration=calib, return_report=True, **options)
    return small, {"masked_layers": len(report.masked), "mask_sparsity": report.sparsity,
                   "dense_layers": len(report.dense), "seconds": time.perf_counter() - t0}


def encoder_rows(quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    model, tok = minilm.load()
    evals = minilm.batches(tok, minilm.sentences("lee.cor", 48 if quick else 256), 32)
    calib = minilm.batches(tok, minilm.sentences("lee_background.cor", 32 if quick else 128), 16)
    ref = minilm.embed(model, evals)
    rows = [{"model": "minilm", "method": "dense", **minilm.fidelity(ref, ref)}]
    for label, options in RECIPES:
        small, info = _masked(model, calib, options)
        rows.append({"model": "minilm", "method": label, **info, **minilm.fidelity(ref, minilm.embed(small, evals))})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows, {"eval_sentences": int(ref.shape[0]), "calib_sentences": sum(len(b["input_ids"]) for b in calib)}


def lm_rows(quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    cfg = tiny_llama.settings(quick)
    model, ctx, train_s = trained.llama(cfg)
    ppl = lambda m: tiny_llama.perplexity(m, ctx["windows"], cfg["eval_batch"])  # noqa: E731
    rows = [{"model": "tiny_llama", "method": "dense", "ppl": ppl(model)}]
    for label, options in RECIPES:
        small, info = _masked(model, ctx["calib"], options)
        rows.append({"model": "tiny_llama", "method": label, **info, "ppl": ppl(small)})
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows, {"llama_train_steps": cfg["steps"], "llama_train_seconds": round(train_s, 1),
                  "calib_batches": cfg["calib_batches"], "eval_windows": cfg["eval_windows"], "seq_len": cfg["seq_len"]}


def run(quick: bool = False) -> dict[str, Any]:
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    enc, enc_settings = encoder_rows(quick)
    lm, lm_settings = lm_rows(quick)
    return {"name": NAME, "render": NAME, "rows": enc + lm, "seconds": time.perf_counter() - t0,
            "settings": {**enc_settings, **lm_settings, "threads": 1, "torch": torch.__version__}}


def section(r: dict[str, Any]) -> list[str]:
    """Markdown for quality.md: one table per model, and how far Wanda is ahead of magnitude."""
    out = [f"## {r['name']}: weight masks, magnitude vs Wanda (no fine-tuning)", "",
           f"Settings: `{json.dumps(r['settings'])}`; whole run {r['seconds']:.0f} s. `mask` is the zeroed fraction "
           f"of the masked weights (exactly what was asked: every masked layer, every 2:4 group).", ""]
    for model, cols in (("minilm", ["cosine", "nn_agreement"]), ("tiny_llama", ["ppl"])):
        rows = [x for x in r["rows"] if x["model"] == model]
        out += [f"| {model} | " + " | ".join(cols) + " | mask | layers masked / dense |", "|---" * (len(cols) + 3) + "|"]
        for x in rows:
            cells = [f"{x[c]:.3f}" for c in cols] + [f"{x.get('mask_sparsity', 0):.3f}",
                                                     f"{x.get('masked_layers', '-')} / {x.get('dense_layers', '-')}"]
            out.append(f"| {x['method']} | " + " | ".join(cells) + " |")
        out.append("")
        for pattern in ("50%", "2:4"):
            mag, wan = (next(x for x in rows if x["method"] == f"{s} {pattern}") for s in ("magnitude", "wanda"))
            c = cols[0]
            better = wan[c] < mag[c] if c == "ppl" else wan[c] > mag[c]
            out.append(f"- {pattern}: wanda {c} {wan[c]:.3f} vs magnitude {mag[c]:.3f} "
                       f"({'wanda better' if better else 'magnitude better'})")
        out.append("")
    return out


if __name__ == "__main__":
    common.cli(run)
