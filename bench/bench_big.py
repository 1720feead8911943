"""Benchmark: graphprune on big models, each case in its own process for an honest peak RSS.

Cases (``--cases``; all by default except ``checkpoint``, which writes a large folder):

* ``bert_base``: BERT-base (110M), shrink(0.5) stage by stage.
* ``llama_1b_copy`` / ``llama_1b_inplace``: a 1.1B Llama-shaped fp32 model (TinyLlama's shape),
  shrink(0.5) copy mode and in place; peak RSS against the model's size.
* ``llama_70b_meta``: a Llama-3-70B-shaped config (hidden 8192, 80 layers, 64 heads, 8 kv heads,
  MLP 28672, vocab 128256) built with accelerate's ``init_empty_weights``: find_groups + make_plan
  (scorer ``random``, the one criterion that needs no weights; with a checkpoint the weights are read
  by ``checkpoint_tensors``).
* ``depth``: find_groups time of a small Llama at 2..32 layers (grows linearly if the time per layer is flat).
* ``checkpoint``: writes a random-weight bf16 safetensors folder larger than half of this machine's
  memory (shard by shard, in ``--tmp``), plans it on the meta device reading l2 scores from the
  checkpoint, prunes it with ``prune_checkpoint`` and checks the pruned shapes against the config;
  deletes everything afterwards.

    python bench/bench_big.py --cases depth llama_70b_meta
    python bench/bench_big.py --cases checkpoint --tmp /tmp

Results: ``bench/results/big.json`` and ``big.md`` (merged with earlier runs' cases).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import resource
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch

RESULTS = Path(__file__).resolve().parent / "results"
LLAMA_1B = dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                num_key_value_heads=4, vocab_size=32000)
LLAMA_70B = dict(hidden_size=8192, intermediate_size=28672, num_hidden_layers=80, num_attention_heads=64,
                 num_key_value_heads=8, vocab_size=128256)
LLAMA_7B = dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                num_key_value_heads=32, vocab_size=32000)


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def timed(t: dict[str, float], key: str, fn: Callable[[], Any]) -> Any:
    t0 = time.perf_counter()
    out = fn()
    t[key] = round(time.perf_counter() - t0, 3)
    return out


def llama(shape: dict[str, int], meta: bool = False, layers: int | None = None):
    import transformers

    cfg = transformers.LlamaConfig(**{**shape, **({"num_hidden_layers": layers} if layers else {})}, use_cache=False)
    if not meta:
        return transformers.LlamaForCausalLM(cfg).eval()
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = transformers.LlamaForCausalLM(cfg)
    model.tie_weights()
    return model.eval()


def stages(model, ratio: float, scorer: str = "l2", inplace: bool = False, apply: bool = True) -> dict[str, Any]:
    """shrink's stages, timed one by one (the same calls shrink makes)."""
    import graphprune
    from graphprune.coupling import build_coupling
    from graphprune.groups import groups_from_coupling
    from graphprune.surgery import apply_plan_shared_, shared_copy, unshare_
    from graphprune.surgery.checks import check_forward
    from graphprune.surgery.proof import check_exact_part, checkable, reference
    from graphprune.surgery.verify import check_values

    t: dict[str, Any] = {}
    traced = timed(t, "trace", lambda: graphprune.trace(model))
    coupling = timed(t, "coupling", lambda: build_coupling(traced))
    groups = timed(t, "groups", lambda: groups_from_coupling(coupling))
    t["rss_after_groups_mb"] = round(rss_mb())
    scores = timed(t, "scores", lambda: graphprune.score(model, groups, scorer))
    plan = timed(t, "plan", lambda: graphprune.make_plan(model, groups, graphprune.ShrinkConfig(ratio=ratio),
                                                          scores=scores))
    t.update(n_groups=len(groups), n_prunable=len(groups.prunable), params_before=plan.params_before,
             params_after=plan.params_after)
    if apply:  # the value check's reference (or its exact part, on a sharing copy) runs before surgery
        chosen = checkable(plan, groups, None)
        expected = timed(t, "reference", lambda: reference(model, chosen, traced.inputs) if chosen else None)
        timed(t, "exact_part", lambda: None if chosen else check_exact_part(model, groups, plan, None, traced.inputs))
        t["rss_after_reference_mb"] = round(rss_mb())
        target, shared = (model, frozenset()) if inplace else shared_copy(
            model, {m.fqn for g in groups.prunable for m in g.members})
        timed(t, "surgery", lambda: apply_plan_shared_(target, plan, None, None, shared))
        outputs = timed(t, "checks", lambda: check_forward(target, plan, traced.inputs))
        if expected is not None:
            timed(t, "value_check", lambda: check_values(outputs, expected))
            t["checks"] += t.pop("value_check")
        unshare_(target, shared)
    t["total"] = round(sum(v for k, v in t.items() if k in ("trace", "coupling", "groups", "scores", "plan",
                                                               "reference", "exact_part", "surgery", "checks")), 3)
    return t


def case_bert_base(args) -> dict[str, Any]:
    import transformers

    model = transformers.BertModel(transformers.BertConfig()).eval()
    return stages(model, args.ratio)


def _case_1b(args, inplace: bool) -> dict[str, Any]:
    model = llama(LLAMA_1B)
    size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 2 ** 20
    base = rss_mb()
    out = stages(model, args.ratio, inplace=inplace)
    peak = rss_mb()
    return {**out, "model_mb": round(size), "rss_with_model_mb": round(base), "peak_rss_mb": round(peak),
            "peak_over_model": round(peak / size, 3), "peak_minus_start_over_model": round((peak - base + size) / size, 3)}


def case_llama_1b_copy(args) -> dict[str, Any]:
    return _case_1b(args, inplace=False)


def case_llama_1b_inplace(args) -> dict[str, Any]:
    return _case_1b(args, inplace=True)


def case_llama_70b_meta(args) -> dict[str, Any]:
    model = llama(LLAMA_70B, meta=True)
    t = stages(model, args.ratio, scorer="random", apply=False)
    t["params_before_b"] = round(t["params_before"] / 1e9, 2)
    return t


def case_depth(args) -> dict[str, Any]:
    import graphprune

    shape = dict(hidden_size=256, intermediate_size=688, num_attention_heads=8, num_key_value_heads=4, vocab_size=1000)
    out = {}
    for layers in (2, 4, 8, 16, 32):
        model = llama(shape, layers=layers)
        t: dict[str, float] = {}
        traced = timed(t, "trace", lambda: graphprune.trace(model))
        timed(t, "find_groups_after_trace", lambda: graphprune.find_groups(traced))
        out[str(layers)] = t
    per = {k: round(v["find_groups_after_trace"] / int(k), 4) for k, v in out.items()}
    return {"layers": out, "find_groups_s_per_layer": per,
            "trace_s_per_layer": {k: round(v["trace"] / int(k), 4) for k, v in out.items()}}


def case_checkpoint(args) -> dict[str, Any]:
    """A random bf16 folder of a 7B-shaped Llama (13.5 GB), planned and pruned shard by shard."""
    import graphprune
    from graphprune.checkpoint import plan_checkpoint

    root = Path(args.tmp) / "graphprune-bench-ckpt"
    shutil.rmtree(root, ignore_errors=True)
    src, dst = root / "src", root / "dst"
    t: dict[str, Any] = {}
    try:
        # written by a child process, so this process's peak RSS is planning and pruning alone
        writer = multiprocessing.get_context("fork").Process(target=_random_folder, args=(src, LLAMA_7B))
        timed(t, "write_random_folder", lambda: (writer.start(), writer.join()))
        t["folder_gb"] = round(sum(f.stat().st_size for f in src.glob("*.safetensors")) / 2 ** 30, 2)
        t["rss_before_plan_mb"] = round(rss_mb())
        config = graphprune.ShrinkConfig(ratio=args.ratio, uniform=True, round_to=64)
        plan = timed(t, "plan_checkpoint", lambda: plan_checkpoint(src, config))
        t["rss_after_plan_mb"] = round(rss_mb())
        timed(t, "prune_checkpoint", lambda: graphprune.prune_checkpoint(src, plan, dst))
        t["pruned_gb"] = round(sum(f.stat().st_size for f in dst.glob("*.safetensors")) / 2 ** 30, 2)
        t["shapes_match_config"] = _shapes_match(dst)
        t.update(params_before=plan.params_before, params_after=plan.params_after, peak_rss_mb=round(rss_mb()))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return t


def _random_folder(folder: Path, shape: dict[str, int], shard_gb: float = 2.0) -> int:
    """config.json + bf16 shards of random values, one shard in memory at a time."""
    from safetensors.torch import save_file

    model = llama(shape, meta=True)
    model.config.torch_dtype = torch.bfloat16
    model.config.architectures = [type(model).__name__]
    folder.mkdir(parents=True)
    model.config.save_pretrained(folder)
    names = [(k, v.shape) for k, v in model.state_dict().items() if k != "lm_head.weight" or
             not model.config.tie_word_embeddings]
    shards, cur, size = [], [], 0
    for name, shp in names:
        cur.append((name, shp))
        size += torch.Size(shp).numel() * 2
        if size > shard_gb * 2 ** 30:
            shards.append(cur)
            cur, size = [], 0
    shards += [cur] if cur else []
    weight_map, total = {}, 0
    gen = torch.Generator().manual_seed(0)
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {n: torch.empty(s, dtype=torch.bfloat16).normal_(0, 0.02, generator=gen) for n, s in shard}
        save_file(tensors, folder / file, metadata={"format": "pt"})
        total += sum(t.numel() * 2 for t in tensors.values())
        weight_map.update({n: file for n, _ in shard})
        del tensors
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return total


def _shapes_match(folder: Path) -> bool:
    """Every tensor of the pruned folder has the shape stock transformers builds from its config.json."""
    import transformers
    from safetensors import safe_open

    config = transformers.AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        want = {k: tuple(v.shape) for k, v in transformers.LlamaForCausalLM(config).state_dict().items()}
    for file in folder.glob("*.safetensors"):
        with safe_open(file, "pt") as fh:
            if any(tuple(fh.get_slice(k).get_shape()) != want.get(k) for k in fh.keys()):
                return False
    return True


CASES = {name[len("case_"):]: fn for name, fn in globals().items() if name.startswith("case_")}
DEFAULT = ["bert_base", "depth", "llama_70b_meta", "llama_1b_copy", "llama_1b_inplace"]


def run_one(name: str, args) -> dict[str, Any]:
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    try:
        out = CASES[name](args)
    except Exception as err:  # noqa: BLE001 - a failing case is recorded, the run goes on
        out = {"error": f"{type(err).__name__}: {err}"}
    out["process_peak_rss_mb"] = round(rss_mb())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", default=DEFAULT, choices=sorted(CASES))
    p.add_argument("--ratio", type=float, default=0.5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--tmp", default="/tmp", help="where the checkpoint case writes its folders")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return 0
    path = args.out / "big.json"
    results = json.loads(path.read_text())["cases"] if path.is_file() else {}
    for name in args.cases:  # one process per case, one after the other: memory-heavy cases never overlap
        cmd = [sys.executable, __file__, "--one", name, f"--ratio={args.ratio}", f"--threads={args.threads}",
               f"--tmp={args.tmp}"]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        results[name] = json.loads(lines[-1]) if lines else {"error": done.stderr[-2000:]}
        # cases from earlier runs are kept: each says when it ran and how loaded the machine was
        results[name]["ran_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        results[name]["load_average_1_5_15"] = [round(x, 2) for x in os.getloadavg()]
        print(name, json.dumps(results[name]), flush=True)
    info = {"date": time.strftime("%Y-%m-%dT%H:%M:%S"), "cores": os.cpu_count(), "torch": torch.__version__,
            "threads": args.threads, "ratio": args.ratio, "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2 ** 30, 1)}
    args.out.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": info, "cases": results}, indent=1))
    (args.out / "big.md").write_text(markdown(info, results))
    return 1 if any("error" in r for r in results.values()) else 0


def markdown(info: dict[str, Any], results: dict[str, Any]) -> str:
    lines = ["# graphprune on big models", "", f"{json.dumps(info)}", "",
             "Seconds per stage; RSS in MB (each case in its own process, `resource.getrusage`).", ""]
    for name, r in results.items():
        lines += [f"## {name}", "", "```", json.dumps(r, indent=1), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
