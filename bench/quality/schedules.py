"""Quality benchmark (f): schedules. (1) Iterative (5 rounds, each re-tracing, re-calibrating and
re-scoring the pruned model, judged against the original's outputs) against one-shot structured
pruning at 50% and 70%, on the sentence encoder of (a) and the Llama of (d), no fine-tuning, for
the default criterion and three data-aware recipes, each on ``DRAWS`` calibration sets drawn apart (one-shot and iterative see the same draw), so the
table shows the change with its spread over draws next to its mean.
(2) On the digits CNN of (c), accuracy right after pruning (no fine-tuning), one-shot and iterative,
each without and with BatchNorm statistics re-estimated on the calibration batches
(``recalibrate_bn=True``: after the surgery, and after every round), on ``DRAWS`` calibration draws.
(3) On the same CNN: prune-then-fine-tune (one-shot, then every epoch on the small model)
against pruning during fine-tuning (``graphprune.Pruner``: a slice at the end of each epoch of the
first half, one optimizer remapped through the surgery, the second half trains the final model),
with and without its group-sparsity penalty, at the same total epochs, learning rate and batch
order; mean test accuracy over seeds of the batch order.

    .venv/bin/python -m bench.quality.schedules [--quick]
"""
from __future__ import annotations

import copy
import itertools
import json
import statistics
import sys
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

import graphprune
from bench.quality import common, digits_cnn, minilm, tiny_llama, trained

NAME = "schedules"
RATIOS = (0.5, 0.7)  # the 50%, and a higher ratio, where the literature expects iterating to pay
STEPS = 5
DRAWS = 3  # calibration draws per recipe: a change smaller than its spread over draws is noise
RECIPES = [("l2 (default)", {}), ("taylor", dict(scorer="taylor")), ("activation", dict(scorer="activation")),
           ("fluctuation+lstsq", dict(scorer="fluctuation", compensate="lstsq")),
           ("obs+lstsq", dict(scorer="obs", compensate="lstsq"))]


def _pair(model: nn.Module, ratio: float, calib: list, example: Any, options: dict[str, Any],
          measure: Callable[[nn.Module], dict[str, float]], base: dict[str, Any], removed: Callable) -> list[dict]:
    """One-shot and iterative rows for one recipe (a failure is the row's note)."""
    rows = []
    for schedule, steps in (("one-shot", 1), (f"iterative {STEPS}", STEPS)):
        row = {**base, "schedule": schedule}
        try:
            t0 = time.perf_counter()
            small, _ = common.gp_prune(model, ratio, calib, example, steps=steps, **options)
            row.update(seconds=time.perf_counter() - t0, params_removed=removed(small), **measure(small))
        except Exception as err:  # noqa: BLE001 - a failing recipe is a result
            row["note"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
        rows.append(row)
        print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def _ratios(quick: bool) -> tuple[float, ...]:
    return RATIOS[:1] if quick else RATIOS


def _recipes(quick: bool, draw: int) -> list[tuple[str, dict[str, Any]]]:
    """The recipes to run on calibration draw ``draw``: one that reads no data runs on draw 0 only."""
    recipes = RECIPES[:1] if quick else RECIPES
    return recipes if draw == 0 else [(label, o) for label, o in recipes if common.needs_data(o)]


def encoder_rows(quick: bool) -> list[dict[str, Any]]:
    model, tok = minilm.load()
    evals = minilm.batches(tok, minilm.sentences("lee.cor", 48 if quick else 256), 32)
    size = 32 if quick else 128
    pool = minilm.sentences("lee_background.cor", size * DRAWS)
    ref, enc = minilm.embed(model, evals), common.n_params(model, "encoder.")
    measure = lambda m: minilm.fidelity(ref, minilm.embed(m, evals))  # noqa: E731
    removed = lambda m: 1 - common.n_params(m, "encoder.") / enc  # noqa: E731
    rows = []
    for draw in range(1 if quick else DRAWS):  # draw 0: the first sentences, as the other benches calibrate
        calib = minilm.batches(tok, pool[draw * size:(draw + 1) * size], 16)
        for ratio, (label, options) in itertools.product(_ratios(quick), _recipes(quick, draw)):
            rows += _pair(model, minilm.encoder_fraction(model, ratio), calib, calib[0],
                          {"prune": ("heads", "mlp"), **options}, measure,
                          {"model": "minilm", "method": label, "ratio": ratio, "draw": draw}, removed)
    return rows


def lm_rows(quick: bool) -> tuple[list[dict[str, Any]], float]:
    cfg = tiny_llama.settings(quick)
    model, ctx, _ = trained.llama(cfg)
    train_ids, _ = tiny_llama.load_bytes(cfg)
    measure = lambda m: {"ppl": tiny_llama.perplexity(m, ctx["windows"], cfg["eval_batch"])}  # noqa: E731
    removed = lambda m: 1 - common.n_params(m) / common.n_params(model)  # noqa: E731
    rows = []
    for draw in range(1 if quick else DRAWS):
        calib = ctx["calib"] if draw == 0 else _llama_calib(train_ids, cfg, draw)
        for ratio, (label, options) in itertools.product(_ratios(quick), _recipes(quick, draw)):
            rows += _pair(model, ratio, calib, calib[0], {"prune": ("heads", "mlp"), **options}, measure,
                          {"model": "tiny_llama", "method": label, "ratio": ratio, "draw": draw}, removed)
    return rows, measure(model)["ppl"]


def _llama_calib(train_ids: torch.Tensor, cfg: dict[str, Any], draw: int) -> list[dict[str, torch.Tensor]]:
    """Calibration windows of another draw: the same count and length as ``ctx["calib"]`` (draw 0)."""
    gen = torch.Generator().manual_seed(cfg["seed"] + 500 + 1000 * draw)
    return [tiny_llama.random_batch(train_ids, cfg, gen) for _ in range(cfg["calib_batches"])]


# -- (2) the digits CNN: when to prune during fine-tuning ---------------------------------------------

def digits_settings(quick: bool) -> dict[str, Any]:
    base = digits_cnn.settings(quick)
    return {**{k: base[k] for k in ("seed", "split_seed", "test_fraction", "width", "epochs", "batch_size", "lr")},
            "ft_epochs": 6, "ft_lr": 1e-3, "pruner_steps": 3, "ratios": [0.9] if quick else [0.8, 0.9, 0.95],
            "seeds": [0] if quick else [0, 1, 2], "reg": 1e-3, "threads": 1}


def _fine_tune(model: nn.Module, epochs: list, cfg: dict[str, Any], pruner: graphprune.Pruner | None = None,
               reg: float = 0.0, prune_after: int = 0) -> nn.Module:
    """Adam over the epochs; with a pruner, one slice at the end of each of the first ``prune_after``
    epochs (the optimizer follows the surgery) and ``reg`` times its penalty in the loss."""
    opt = torch.optim.Adam(model.parameters(), lr=cfg["ft_lr"])
    for e, epoch in enumerate(epochs):
        model.train()
        for x, y in epoch:
            loss = F.cross_entropy(model(x), y) + (reg * pruner.regularizer() if reg else 0.0)
            opt.zero_grad()
            loss.backward()
            opt.step()
        if pruner is not None and e < prune_after:
            pruner.step(opt)
    return model.eval()


def digits_methods(cfg: dict[str, Any]) -> list[tuple[str, Callable]]:
    def then_ft(scorer: str) -> Callable:
        def run(model, ratio, epochs, ctx):
            small = graphprune.shrink(model, ratio, example_inputs=ctx["example"], scorer=scorer)
            return _fine_tune(small, epochs, cfg)
        return run

    def during(scorer: str, reg: float) -> Callable:
        def run(model, ratio, epochs, ctx):
            model = copy.deepcopy(model)
            pruner = graphprune.Pruner(model, ratio, steps=cfg["pruner_steps"], example_inputs=ctx["example"],
                                       scorer=scorer)
            return _fine_tune(model, epochs, cfg, pruner, reg, cfg["pruner_steps"])
        return run
    return [("prune, then fine-tune (l2)", then_ft("l2")), ("Pruner during fine-tune (l2)", during("l2", 0.0)),
            ("Pruner + group lasso (l2)", during("l2", cfg["reg"])),
            ("prune, then fine-tune (bn_scale)", then_ft("bn_scale")),
            ("Pruner + BN-L1 (bn_scale, network slimming)", during("bn_scale", cfg["reg"]))]


# the data-aware recipes; on a CNN activation gets the mean compensation its removed channels need
CNN_RECIPES = [("taylor", dict(scorer="taylor")), ("activation+mean", dict(scorer="activation", compensate="mean")),
               ("fluctuation+lstsq", dict(scorer="fluctuation", compensate="lstsq"))]


def cnn_bn_rows(quick: bool) -> list[dict[str, Any]]:
    """(2): one-shot and iterative, each as pruned and with ``recalibrate_bn=True``, per draw."""
    cfg = digits_cnn.settings(quick)
    model, ctx, _ = digits_cnn.setup(cfg)
    xtr, ytr, xte, yte = ctx["data"]
    rows = []
    for draw, ratio, (label, options) in itertools.product(range(1 if quick else DRAWS), _ratios(quick), CNN_RECIPES):
        calib = [x for x, _ in digits_cnn.batches(xtr, ytr, cfg["batch_size"],
                                                  seed=cfg["seed"] + 500 + draw)[: cfg["calib_batches"]]]
        for (schedule, steps), bn in itertools.product((("one-shot", 1), (f"iterative {STEPS}", STEPS)), (False, True)):
            row = {"model": "digits_cnn_pruned", "method": label, "ratio": ratio, "draw": draw, "schedule": schedule,
                   "bn": bn}
            try:
                small = graphprune.shrink(model, ratio, example_inputs=ctx["example"], calibration=calib, steps=steps,
                                          recalibrate_bn=bn, **options)
                row.update(acc=digits_cnn.accuracy(small, xte, yte),
                           params_removed=1 - common.n_params(small) / common.n_params(model))
            except Exception as err:  # noqa: BLE001 - a failing recipe is a result
                row["note"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    return rows


def digits_rows(quick: bool) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    cfg = digits_settings(quick)
    torch.manual_seed(cfg["seed"])
    xtr, ytr, xte, yte = digits_cnn.load_data(cfg)
    model = digits_cnn.train_(digits_cnn.DigitsNet(cfg["width"]), digits_cnn.epochs_of(xtr, ytr, cfg, cfg["epochs"],
                                                                                      seed=cfg["seed"]), cfg["lr"])
    ctx = {"example": xtr[:1]}
    rows = [{"model": "digits_cnn", "method": "unpruned", "ratio": 0.0, "acc": digits_cnn.accuracy(model, xte, yte)}]
    for ratio in cfg["ratios"]:
        for label, method in digits_methods(cfg):
            accs, removed, t0 = [], 0.0, time.perf_counter()
            for seed in cfg["seeds"]:
                torch.manual_seed(seed)
                epochs = digits_cnn.epochs_of(xtr, ytr, cfg, cfg["ft_epochs"], seed=1000 + 100 * seed)
                small = method(model, ratio, epochs, ctx)
                accs.append(digits_cnn.accuracy(small, xte, yte))
                removed = 1 - common.n_params(small) / common.n_params(model)
            rows.append({"model": "digits_cnn", "method": label, "ratio": ratio, "acc": statistics.mean(accs),
                         "acc_min": min(accs), "params_removed": removed, "seconds": time.perf_counter() - t0})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return rows, cfg


def run(quick: bool = False) -> dict[str, Any]:
    t0 = time.perf_counter()
    torch.set_num_threads(1)
    lm, dense_ppl = lm_rows(quick)
    enc = encoder_rows(quick)
    cnn = cnn_bn_rows(quick)
    digits, dcfg = digits_rows(quick)
    return {"name": NAME, "render": NAME, "rows": enc + lm + cnn + digits, "seconds": time.perf_counter() - t0,
            "settings": {"ratios": list(RATIOS), "iterative_steps": STEPS, "llama_dense_ppl": dense_ppl, "digits": dcfg,
                         "threads": 1, "torch": torch.__version__}}


def section(r: dict[str, Any]) -> list[str]:
    """Markdown for quality.md: one-shot vs iterative per model and recipe, then the digits schedules."""
    out = [f"## {r['name']}: iterative vs one-shot, and pruning during fine-tuning", "",
           f"Settings: `{json.dumps(r['settings'])}`; whole run {r['seconds']:.0f} s.", ""]
    for (model, metric, sign), ratio in itertools.product((("minilm", "cosine", 1), ("tiny_llama", "ppl", -1)),
                                                          r["settings"].get("ratios", [0.5])):
        rows = [x for x in r["rows"] if x["model"] == model and x["ratio"] == ratio]
        draws = len({x.get("draw", 0) for x in rows})
        out += [f"{model} at {ratio:g}, {draws} calibration draw(s): mean {metric}, and the change iterative "
                f"minus one-shot per draw ({'higher' if sign > 0 else 'lower'} is better; a recipe that reads "
                f"no data runs once)", "",
                f"| recipe | one-shot {metric} | iterative {metric} | change (mean) | change (min / max) | "
                f"iterative no worse | removed (one-shot / iterative) |", "|---|---|---|---|---|---|---|"]
        for method in dict.fromkeys(x["method"] for x in rows):
            out.append(_schedule_row(method, [x for x in rows if x["method"] == method], metric, sign))
        out.append("")
    out += _cnn_bn_section([x for x in r["rows"] if x["model"] == "digits_cnn_pruned"])
    rows = [x for x in r["rows"] if x["model"] == "digits_cnn"]
    ratios = sorted({x["ratio"] for x in rows if x["ratio"] > 0})
    d = r["settings"]["digits"]
    out += [f"digits CNN, test accuracy after {d['ft_epochs']} fine-tuning epochs in all (mean over {len(d['seeds'])} "
            f"batch orders; unpruned {rows[0]['acc']:.3f}); Pruner: {d['pruner_steps']} slices, penalty weight "
            f"{d['reg']:g}", "",
            "| method | " + " | ".join(f"{ratio:g}" for ratio in ratios) + " |", "|---" * (len(ratios) + 1) + "|"]
    for method in dict.fromkeys(x["method"] for x in rows if x["ratio"] > 0):
        cells = [next((f"{x['acc']:.3f}" for x in rows if x["method"] == method and x["ratio"] == ratio), "-")
                 for ratio in ratios]
        out.append(f"| {method} | " + " | ".join(cells) + " |")
    return out + [""]


def _cnn_bn_section(rows: list[dict[str, Any]]) -> list[str]:
    """(2): per ratio and recipe, mean accuracy of the four variants over draws, and iterative minus
    one-shot when both re-estimate BatchNorm (paired by draw)."""
    if not rows:
        return []
    out = []
    for ratio in sorted({x["ratio"] for x in rows}):
        at = [x for x in rows if x["ratio"] == ratio]
        out += [f"digits CNN at {ratio:g}, test accuracy right after pruning, {len({x['draw'] for x in at})} "
                f"calibration draw(s) (mean); + BN: recalibrate_bn=True", "",
                "| recipe | one-shot | one-shot + BN | iterative | iterative + BN | iterative + BN minus one-shot + BN "
                "(mean; min / max) |", "|---|---|---|---|---|---|"]
        for method in dict.fromkeys(x["method"] for x in at):
            out.append(_cnn_bn_row(method, [x for x in at if x["method"] == method]))
        out.append("")
    return out


def _cnn_bn_row(method: str, rows: list[dict[str, Any]]) -> str:
    notes = [x["note"] for x in rows if "acc" not in x]
    if notes:
        return f"| {method} | {notes[0]} | - | - | - | - |"
    cell = lambda it, bn: statistics.mean(x["acc"] for x in rows if (x["schedule"] != "one-shot") == it and x["bn"] == bn)  # noqa: E731
    one = {x["draw"]: x["acc"] for x in rows if x["schedule"] == "one-shot" and x["bn"]}
    change = [x["acc"] - one[x["draw"]] for x in rows if x["schedule"] != "one-shot" and x["bn"]]
    return (f"| {method} | {cell(False, False):.3f} | {cell(False, True):.3f} | {cell(True, False):.3f} | "
            f"{cell(True, True):.3f} | {statistics.mean(change):+.3f}; {min(change):+.3f} / {max(change):+.3f} |")


def _schedule_row(method: str, rows: list[dict[str, Any]], metric: str, sign: int) -> str:
    """One recipe's line: means over draws, and the paired change (same draw) with its range."""
    pairs = [(one, it) for one in rows if one["schedule"] == "one-shot"
             for it in rows if it["schedule"] != "one-shot" and it.get("draw", 0) == one.get("draw", 0)]
    notes = [x["note"] for pair in pairs for x in pair if metric not in x]
    if notes or not pairs:
        return f"| {method} | {notes[0] if notes else 'no runs'} | - | - | - | - | - |"
    mean = statistics.mean
    change = [it[metric] - one[metric] for one, it in pairs]
    wins = sum(sign * c >= 0 for c in change)
    return (f"| {method} | {mean([o[metric] for o, _ in pairs]):.3f} | {mean([i[metric] for _, i in pairs]):.3f} | "
            f"{mean(change):+.3f} | {min(change):+.3f} / {max(change):+.3f} | {wins} of {len(pairs)} | "
            f"{mean([o['params_removed'] for o, _ in pairs]):.3f} / {mean([i['params_removed'] for _, i in pairs]):.3f} |")


if __name__ == "__main__":
    common.cli(run)
