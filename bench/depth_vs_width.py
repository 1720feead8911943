"""Depth against width pruning of a causal LM at equal parameter counts: CPU speed and quality.

Speed: a Llama-shaped model (random weights; speed does not depend on them) loses ``--layers`` of
its decoder layers (``prune=("layers",)``), and a copy loses the same fraction of parameters in
heads and MLP neurons (``prune=("heads", "mlp")``, uniform widths). The three models take turns,
repeat by repeat, in one process on one thread: prefill latency (one forward over
``--prompt`` tokens) and greedy decode speed (``--new`` tokens with the KV cache, batch 1). Ratios
to the unpruned model are what to read.

Quality: the quality bench's byte-level Llama (``bench/quality/tiny_llama.py``, trained here the
same way) loses 1 and 2 of its 4 layers under each block criterion, and width pruning removes the
same fraction; held-out perplexity of each.

    python bench/depth_vs_width.py                 # both parts, bench/results/depth_vs_width.{json,md}
    python bench/depth_vs_width.py --quick         # tiny settings, nothing saved
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import graphprune  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SPEED_SHAPE = dict(hidden_size=512, intermediate_size=1408, num_hidden_layers=8, num_attention_heads=8,
                   num_key_value_heads=4, vocab_size=4096, max_position_embeddings=1024)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def pair(model: torch.nn.Module, layers: int, calib: Any = None, **width: Any) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(depth-pruned, width-pruned at the same parameter count) copies of ``model``."""
    deep = graphprune.shrink(model, 0.0, prune=("layers",), layers=layers, calibration=calib)
    removed = 1 - n_params(deep) / n_params(model)
    wide = graphprune.shrink(model, removed, prune=("heads", "mlp"), tolerance=0.005, calibration=calib, **width)
    return deep, wide


@torch.no_grad()
def timings(models: dict[str, torch.nn.Module], prompt: int, new: int, repeats: int) -> dict[str, dict[str, float]]:
    ids = torch.randint(3, SPEED_SHAPE["vocab_size"], (1, prompt), generator=torch.Generator().manual_seed(0))
    opts = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0, use_cache=True)
    seen: dict[str, dict[str, list[float]]] = {k: {"prefill_s": [], "decode_tok_s": []} for k in models}
    for r in range(repeats + 1):
        for name, m in models.items():  # interleaved, so load from elsewhere slows all alike
            t0 = time.perf_counter()
            m(ids)
            t1 = time.perf_counter()
            m.generate(ids[:, :8], **opts)
            t2 = time.perf_counter()
            if r:  # the first round warms up
                seen[name]["prefill_s"].append(t1 - t0)
                seen[name]["decode_tok_s"].append(new / (t2 - t1))
    return {k: {m: statistics.median(v) for m, v in d.items()} for k, d in seen.items()}


def speed(args: argparse.Namespace) -> dict[str, Any]:
    import transformers

    torch.manual_seed(0)
    base = transformers.LlamaForCausalLM(transformers.LlamaConfig(**SPEED_SHAPE, use_cache=True)).eval()
    deep, wide = pair(base, args.layers, uniform=True, round_to=8)
    models = {"unpruned": base, "depth": deep, "width": wide}
    times = timings(models, args.prompt, args.new, args.repeats)
    return {k: {"params": n_params(m), "layers": m.config.num_hidden_layers,
                "heads": m.config.num_attention_heads, "intermediate": m.config.intermediate_size,
                **times[k], "prefill_ratio": times[k]["prefill_s"] / times["unpruned"]["prefill_s"],
                "decode_ratio": times[k]["decode_tok_s"] / times["unpruned"]["decode_tok_s"]}
            for k, m in models.items()}


def quality(quick: bool) -> list[dict[str, Any]]:
    from bench.quality import tiny_llama as tl

    cfg = tl.settings(quick)
    model, ctx, _ = tl.setup(cfg)
    ppl = lambda m: tl.perplexity(m, ctx["windows"], cfg["eval_batch"])  # noqa: E731
    rows = [{"method": "unpruned", "layers": 0, "removed": 0.0, "ppl": ppl(model)}]
    for layers in (1, 2):
        for crit in ("angular", "bypass", "branch_norm"):
            deep = graphprune.shrink(model, 0.0, prune=("layers",), layers=layers, block_scorer=crit,
                                     calibration=None if crit == "branch_norm" else ctx["calib"])
            rows.append({"method": f"depth ({crit})", "layers": layers, "removed": 1 - n_params(deep) / n_params(model),
                         "ppl": ppl(deep)})
        removed = rows[-1]["removed"]
        for label, opts in (("width l2", {}), ("width activation+lstsq",
                                               dict(scorer="activation", compensate="lstsq"))):
            wide = graphprune.shrink(model, removed, prune=("heads", "mlp"), tolerance=0.005,
                                     calibration=ctx["calib"] if opts else None, **opts)
            rows.append({"method": label, "layers": layers, "removed": 1 - n_params(wide) / n_params(model),
                         "ppl": ppl(wide)})
    return rows


def render(result: dict[str, Any]) -> str:
    s, a = result["speed"], result["settings"]
    lines = ["# Depth against width pruning", "",
             f"Generated by `bench/depth_vs_width.py` on {result['date']}: torch {torch.__version__}, 1 thread, "
             f"settings `{json.dumps(a)}`; whole run {result['seconds']:.0f} s.", "",
             "## Speed (random Llama-shaped model, equal parameters)", "",
             "| model | params | layers | heads | MLP width | prefill s | prefill ratio | decode tok/s | decode ratio |",
             "|---|---|---|---|---|---|---|---|---|"]
    for k, v in s.items():
        lines.append(f"| {k} | {v['params']:,} | {v['layers']} | {v['heads']} | {v['intermediate']} | "
                     f"{v['prefill_s']:.4f} | {v['prefill_ratio']:.2f} | {v['decode_tok_s']:.1f} | {v['decode_ratio']:.2f} |")
    lines += ["", "## Quality (the quality bench's byte-level Llama, held-out perplexity, no fine-tuning)", "",
              "| layers removed | method | params removed | perplexity |", "|---|---|---|---|"]
    lines += [f"| {r['layers']} | {r['method']} | {r['removed']:.3f} | {r['ppl']:.3f} |" for r in result["quality"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--layers", type=int, default=2, help="decoder layers the speed part removes (of 8)")
    p.add_argument("--prompt", type=int, default=256)
    p.add_argument("--new", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.prompt, args.new, args.repeats = 32, 8, 1
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    import datetime

    result = {"settings": {k: v for k, v in vars(args).items()}, "speed": speed(args), "quality": quality(args.quick),
              "date": str(datetime.date.today())}
    result["seconds"] = time.perf_counter() - t0
    text = render(result)
    print(text)
    if not args.quick:
        (RESULTS / "depth_vs_width.json").write_text(json.dumps(result, indent=1) + "\n")
        (RESULTS / "depth_vs_width.md").write_text(text)


if __name__ == "__main__":
    main(sys.argv[1:])
