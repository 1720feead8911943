"""Benchmark: graphprune's staged pipeline against Torch-Pruning's DepGraph, in one process.

For each timm model (random init, eval mode) both tools prune the same fraction of parameters:

* graphprune: ``trace`` -> ``find_groups`` -> ``make_plan`` -> ``apply_plan_`` (on a deep copy);
* Torch-Pruning: ``BasePruner``/``MetaPruner`` construction (DependencyGraph build and group scan)
  -> ``pruner.step()`` (+ the attribute fix-up a timm ViT needs after head pruning).

Torch-Pruning's ``pruning_ratio`` is a per-layer *channel* ratio, so it is first calibrated (untimed,
by bisection) until it removes the same fraction of parameters as graphprune's ``--ratio``.

Reported: wall time per stage, graphprune/Torch-Pruning time ratios, achieved parameter ratios,
MACs (``graphprune.count_macs``, i.e. ``torch.utils.flop_counter``) and batch-1 CPU latency of the
original and both pruned models. Results go to ``bench/results/latest.{json,md}``.

    python bench/bench_vs_torch_pruning.py --models resnet50 --repeats 1
"""
from __future__ import annotations

import argparse
import copy
import cProfile
import datetime
import io
import json
import os
import platform
import pstats
import resource
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

import graphprune
import timm
from graphprune.coupling import build_coupling
from graphprune.groups import groups_from_coupling
from graphprune.surgery import apply_plan_shared_, shared_copy, unshare_
from graphprune.surgery.checks import check_forward as forward_runs
from graphprune.surgery.proof import check_exact_part, checkable, reference
from graphprune.surgery.verify import check_values

try:
    import torch_pruning as tp
except ImportError:  # the bench extra is optional: main() says how to get it; the stages import without it
    tp = None

RESULTS = Path(__file__).resolve().parent / "results"


# -- setup ----------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["resnet50", "vit_base_patch16_224", "densenet121"])
    p.add_argument("--ratio", type=float, default=0.5, help="fraction of parameters to remove")
    p.add_argument("--repeats", type=int, default=3, help="timed pruning runs per tool (after one warm-up)")
    p.add_argument("--latency-runs", type=int, default=20, help="timed forwards per latency measurement")
    p.add_argument("--latency-warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads for everything")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tp-global", action="store_true", help="Torch-Pruning global_pruning=True "
                   "(default: its default, uniform per-layer ratio)")
    p.add_argument("--profile", action="store_true", help="cProfile one extra graphprune run per model")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # run one model, print JSON
    return p.parse_args(argv)


def build(name: str, seed: int) -> tuple[nn.Module, torch.Tensor]:
    """A randomly initialised timm model in eval mode and one seeded batch-1 input."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False).eval()
    x = torch.randn(1, *model.pretrained_cfg["input_size"], generator=torch.Generator().manual_seed(seed))
    return model, x


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


# -- graphprune -----------------------------------------------------------------------------------

def run_graphprune(model: nn.Module, x: torch.Tensor, ratio: float) -> tuple[dict[str, float], nn.Module]:
    """What ``shrink`` runs, stage by stage, each timed: trace, coupling, groups, scores, plan,
    surgery (slicing, on a copy sharing the tensors it slices, as shrink makes it; the copy is not
    timed) and checks (the pruned model's forward against the original output shapes, and its values
    against the original's with the removed units zeroed: the reference forwards before surgery, the
    exact part checked alone on a sharing copy when the plan also cuts inexact groups)."""
    t: dict[str, float] = {}
    traced, t["trace"] = timed(lambda: graphprune.trace(model, (x,)))
    coupling, t["coupling"] = timed(lambda: build_coupling(traced))
    groups, t["groups"] = timed(lambda: groups_from_coupling(coupling))
    scores, t["scores"] = timed(lambda: graphprune.score(model, groups))
    plan, t["plan"] = timed(lambda: graphprune.make_plan(model, groups, graphprune.ShrinkConfig(ratio=ratio),
                                                         scores=scores))
    chosen = checkable(plan, groups, None)
    expected, before = timed(lambda: reference(model, chosen, traced.inputs) if chosen else None)
    _, part = timed(lambda: None if chosen else check_exact_part(model, groups, plan, None, traced.inputs))
    target, shared = shared_copy(model, {m.fqn for g in groups.prunable for m in g.members})
    _, t["surgery"] = timed(lambda: apply_plan_shared_(target, plan, None, None, shared))
    def checks() -> None:  # what surgery runs after slicing: one forward, its shapes, then its values
        outputs = forward_runs(target, plan, traced.inputs)
        if expected is not None:
            check_values(outputs, expected)
    _, after = timed(checks)
    t["checks"] = before + part + after
    unshare_(target, shared)
    return t, target


def profile_graphprune(model: nn.Module, x: torch.Tensor, ratio: float, top: int = 25) -> str:
    """cProfile of one graphprune run, sorted by cumulative and by own time."""
    prof = cProfile.Profile()
    prof.enable()
    run_graphprune(model, x, ratio)
    prof.disable()
    out = io.StringIO()
    for key in ("cumulative", "tottime"):
        pstats.Stats(prof, stream=out).strip_dirs().sort_stats(key).print_stats(top)
    return out.getvalue()


# -- Torch-Pruning --------------------------------------------------------------------------------

def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Attention blocks with a fused qkv projection and a ``num_heads`` attribute (timm ViTs)."""
    return [m for m in model.modules() if isinstance(getattr(m, "qkv", None), nn.Linear)
            and isinstance(getattr(m, "num_heads", None), int)]


def tp_pruner(model: nn.Module, x: torch.Tensor, channel_ratio: float, global_pruning: bool) -> Any:
    """Torch-Pruning's pruner with group L2 magnitude; whole heads pruned at the channel ratio.

    Fresh dicts are passed on purpose: BasePruner's dict defaults are shared and mutated."""
    attn = attention_modules(model)
    return tp.pruner.MetaPruner(
        model, x, importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=channel_ratio, global_pruning=global_pruning,
        ignored_layers=[model.get_classifier()],
        num_heads={m.qkv: m.num_heads for m in attn}, prune_num_heads=bool(attn),
        prune_head_dims=not attn, head_pruning_ratio=channel_ratio if attn else 0.0,
        in_channel_groups={}, out_channel_groups={})


def tp_fixup(model: nn.Module, pruner: Any) -> None:
    """timm attention reads num_heads/head_dim/attn_dim in forward; Torch-Pruning leaves them to the user."""
    for m in attention_modules(model):
        m.num_heads = pruner.num_heads[m.qkv]
        m.head_dim = m.qkv.out_features // (3 * m.num_heads)
        if hasattr(m, "attn_dim"):
            m.attn_dim = m.num_heads * m.head_dim


def run_tp(model: nn.Module, x: torch.Tensor, channel_ratio: float,
           global_pruning: bool) -> tuple[dict[str, float], nn.Module]:
    """Pruner construction (DepGraph build + group scan) and step (+fix-up), on a deep copy."""
    target = copy.deepcopy(model)
    t: dict[str, float] = {}
    pruner, t["pruner_init"] = timed(lambda: tp_pruner(target, x, channel_ratio, global_pruning))
    _, t["step"] = timed(lambda: (pruner.step(), tp_fixup(target, pruner)))
    return t, target


def calibrate_tp(model: nn.Module, x: torch.Tensor, ratio: float, global_pruning: bool,
                 iters: int = 10, tol: float = 0.003) -> tuple[float, float, int]:
    """Channel ratio at which Torch-Pruning removes ``ratio`` of the parameters (bisection, untimed).

    Returns (channel ratio, achieved parameter ratio, trials)."""
    before, lo, hi = n_params(model), 0.0, 0.95
    best = (0.0, 0.0)
    for i in range(iters):
        mid = (lo + hi) / 2
        _, pruned = run_tp(model, x, mid, global_pruning)
        got = 1 - n_params(pruned) / before
        best = min(best, (mid, got), key=lambda b: abs(b[1] - ratio))
        if abs(got - ratio) <= tol:
            return mid, got, i + 1
        lo, hi = (mid, hi) if got < ratio else (lo, mid)
    return best[0], best[1], iters


# -- measurements ---------------------------------------------------------------------------------

@torch.no_grad()
def latencies_ms(models: dict[str, nn.Module], x: torch.Tensor, runs: int, warmup: int) -> dict[str, float]:
    """Median wall time of one batch-1 forward of each model, in milliseconds.

    The models take turns forward by forward, so load from other processes on a shared machine
    hits all of them alike and the latency ratios stay fair."""
    for model in models.values():
        for _ in range(warmup):
            model(x)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(runs):
        for key, model in models.items():
            t0 = time.perf_counter()
            model(x)
            times[key].append(time.perf_counter() - t0)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def check_forward(model: nn.Module, x: torch.Tensor, shape: torch.Size) -> str:
    with torch.no_grad():
        out = model(x)
    return "ok" if out.shape == shape and torch.isfinite(out).all() else f"bad output {tuple(out.shape)}"


def describe(model: nn.Module, x: torch.Tensor, reference: nn.Module, shape: torch.Size) -> dict[str, Any]:
    return {"params": n_params(model), "param_ratio_removed": 1 - n_params(model) / n_params(reference),
            "macs": graphprune.count_macs(model, ((x,), {})), "forward": check_forward(model, x, shape)}


def median_stages(runs: list[dict[str, float]]) -> dict[str, float]:
    stages = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    stages["total"] = statistics.median(sum(r.values()) for r in runs)
    stages["total_min"] = min(sum(r.values()) for r in runs)
    return stages


def paired_ratios(gp_runs: list[dict[str, float]], tp_runs: list[dict[str, float]]) -> dict[str, float]:
    """Median over repeats of graphprune/Torch-Pruning, each repeat's two runs taken back to back."""
    def med(gp_keys: tuple[str, ...], tp_keys: tuple[str, ...]) -> float:
        return statistics.median(sum(g[k] for k in gp_keys) / sum(t[k] for k in tp_keys)
                                 for g, t in zip(gp_runs, tp_runs))
    return {"total": med(tuple(gp_runs[0]), tuple(tp_runs[0])),
            "analysis": med(("trace", "coupling", "groups"), ("pruner_init",)),
            "pruning": med(("scores", "plan", "surgery", "checks"), ("step",))}


# -- one model --------------------------------------------------------------------------------------

def bench_model(name: str, args: argparse.Namespace) -> dict[str, Any]:
    model, x = build(name, args.seed)
    with torch.no_grad():
        shape = model(x).shape
    result: dict[str, Any] = {"model": name, "input": list(x.shape)}
    channel_ratio, tp_got, trials = calibrate_tp(model, x, args.ratio, args.tp_global)
    result["tp_calibration"] = {"channel_ratio": channel_ratio, "param_ratio": tp_got, "trials": trials}
    print(f"[{name}] Torch-Pruning channel ratio {channel_ratio:.4f} -> params -{tp_got:.2%} ({trials} trials)")
    gp_runs, tp_runs, gp_model, tp_model = [], [], None, None
    for i in range(args.repeats + 1):  # run 0 is a warm-up for both tools and is dropped
        gp_t, gp_model = run_graphprune(model, x, args.ratio)
        tp_t, tp_model = run_tp(model, x, channel_ratio, args.tp_global)
        if i:
            gp_runs.append(gp_t)
            tp_runs.append(tp_t)
        print(f"[{name}] run {i}{' (warm-up)' if not i else ''}: graphprune {sum(gp_t.values()):.2f}s, "
              f"torch-pruning {sum(tp_t.values()):.2f}s")
    result["graphprune_s"], result["torch_pruning_s"] = median_stages(gp_runs), median_stages(tp_runs)
    result["time_ratio"] = paired_ratios(gp_runs, tp_runs)
    models = {"original": model, "graphprune": gp_model, "torch_pruning": tp_model}
    lat = latencies_ms(models, x, args.latency_runs, args.latency_warmup)
    for key, m in models.items():
        result[key] = {**describe(m, x, model, shape), "latency_ms": lat[key]}
    if args.profile:
        (args.out / f"profile_{name}.txt").write_text(profile_graphprune(model, x, args.ratio))
    return result


def safe_bench(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """A failure of either tool is recorded with its full message instead of ending the run."""
    try:
        return bench_model(name, args)
    except Exception as err:
        print(f"[{name}] FAILED: {type(err).__name__}: {err}", file=sys.stderr)
        return {"model": name, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}


# -- report ---------------------------------------------------------------------------------------

def machine_info(args: argparse.Namespace) -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor()) if os.path.exists("/proc/cpuinfo") \
        else platform.processor()
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"), "cpu": cpu,
            "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__, "timm": timm.__version__, "torch_pruning": tp.__version__,
            "graphprune": graphprune.__version__, "platform": platform.platform(),
            "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],
            "args": {k: str(v) for k, v in vars(args).items()}}


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def model_lines(r: dict[str, Any]) -> list[str]:
    """Markdown for one model: stage times, then size/MACs/latency."""
    if "error" in r:
        return [f"## {r['model']}", "", "**FAILED**", "", "```", r["traceback"].rstrip(), "```", ""]
    gp, tp_, tr = r["graphprune_s"], r["torch_pruning_s"], r["time_ratio"]
    lines = [f"## {r['model']}", "", "| tool | stage | seconds (median) |", "|---|---|---:|"]
    lines += [f"| graphprune | {k} | {v:.3f} |" for k, v in gp.items()]
    lines += [f"| torch-pruning | {k} | {v:.3f} |" for k, v in tp_.items()]
    lines += ["", f"time ratio graphprune / torch-pruning (median of paired repeats): **total {tr['total']:.2f}x**, "
              f"analysis (trace+coupling+groups vs pruner init) {tr['analysis']:.2f}x, "
              f"pruning (scores+plan+surgery+checks vs step) {tr['pruning']:.2f}x", "",
              "| model | params | removed | GMACs | MAC ratio | latency ms (median) | latency ratio | forward |",
              "|---|---:|---:|---:|---:|---:|---:|---|"]
    base = r["original"]
    for key in ("original", "graphprune", "torch_pruning"):
        d = r[key]
        lines.append(f"| {key} | {d['params'] / 1e6:.2f}M | {d['param_ratio_removed']:.2%} | "
                     f"{d['macs'] / 1e9:.3f} | {ratio(d['macs'], base['macs']):.3f} | {d['latency_ms']:.1f} | "
                     f"{ratio(d['latency_ms'], base['latency_ms']):.3f} | {d['forward']} |")
    cal = r["tp_calibration"]
    lines += ["", f"Peak RSS of this model's process (both tools, all runs): {r.get('peak_rss_mb', float('nan')):.0f} MB."]
    lines += ["", f"Torch-Pruning channel ratio {cal['channel_ratio']:.4f} (calibrated in {cal['trials']} "
              f"untimed trials to remove {cal['param_ratio']:.2%} of parameters).", ""]
    return lines


def markdown(results: list[dict[str, Any]], info: dict[str, Any]) -> str:
    head = ["# graphprune vs Torch-Pruning (DepGraph)", "",
            f"{info['date']} | {info['cpu']} | {info['cores']} cores, torch threads {info['torch_threads']} | "
            f"torch {info['torch']}, timm {info['timm']}, torch-pruning {info['torch_pruning']}, "
            f"graphprune {info['graphprune']}, Python {info['python']}, load average at the end "
            f"{info.get('load_average_1_5_15')}", "",
            f"Settings: {json.dumps(info['args'])}", ""]
    return "\n".join(head + [line for r in results for line in model_lines(r)])


def in_subprocess(name: str, argv: list[str]) -> dict[str, Any]:
    """One model in a fresh process, so its peak RSS (``resource``) is its own."""
    cmd = [sys.executable, __file__, *argv, "--models", name, "--one"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    sys.stderr.write(done.stderr[-4000:])
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {"model": name, "error": f"exit {done.returncode}",
                                                 "traceback": done.stderr[-4000:]}


def main(argv: list[str] | None = None) -> int:
    if tp is None:
        sys.exit("torch-pruning is not installed: pip install -e '.[bench]' (or pip install torch-pruning)")
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.one:
        result = safe_bench(args.models[0], args)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(result))
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    rest = [f"--ratio={args.ratio}", f"--repeats={args.repeats}", f"--latency-runs={args.latency_runs}",
            f"--latency-warmup={args.latency_warmup}", f"--threads={args.threads}", f"--seed={args.seed}",
            f"--out={args.out}"] + ["--tp-global"] * args.tp_global + ["--profile"] * args.profile
    results = [in_subprocess(name, rest) for name in args.models]
    info = machine_info(args)
    (args.out / "latest.json").write_text(json.dumps({"machine": info, "results": results}, indent=1))
    text = markdown(results, info)
    (args.out / "latest.md").write_text(text + "\n")
    print(text)
    return 1 if any("error" in r for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
