"""Quality benchmark (c): a small CNN with a channel concat and a residual block, trained here on
scikit-learn's 8x8 digits, then pruned by every graphprune recipe and by Torch-Pruning at the same
parameter budget.

Measured, per ratio of parameters removed (0.3, 0.5, 0.7) and method: test accuracy right after
pruning (``acc_pruned``), after re-estimating the BatchNorm statistics on the training set
(``acc_bn``), and after one epoch of fine-tuning from there (``acc_ft``), plus pruning seconds.
Why: the concat and the residual sum couple channels across branches, which is where dependency
analysis and the choice of what to cut matter; the three accuracies separate how much a criterion
keeps by itself from how much BN recalibration and brief training can recover. Torch-Pruning is
matched to the fraction graphprune's default recipe achieved, so accuracies compare like for like.

    .venv/bin/python -m bench.quality.digits_cnn
"""
from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

import graphprune
from bench.quality import common

NAME = "digits_cnn"


def settings(quick: bool) -> dict[str, Any]:
    """Every knob of the run; quick mode only shrinks the work, never changes what is measured."""
    return {"seed": 0, "split_seed": 0, "test_fraction": 0.2, "width": 32, "epochs": 3 if quick else 12,
            "batch_size": 64, "lr": 3e-3, "ft_epochs": 1, "ft_lr": 1e-3, "calib_batches": 8,
            "ratios": [0.5] if quick else [0.3, 0.5, 0.7], "threads": 1,
            "tp_bisection_iters": 6 if quick else 12, "tp_match_tol": 0.003,
            "recipes": [label for label, _ in (common.RECIPES[:3] if quick else common.RECIPES)]}


# -- model and data --------------------------------------------------------------------------------

def conv_bn(cin: int, cout: int, k: int, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, padding=k // 2, bias=False), nn.BatchNorm2d(cout)]
    return nn.Sequential(*layers, nn.ReLU()) if relu else nn.Sequential(*layers)


class DigitsNet(nn.Module):
    """stem -> [1x1 branch | 3x3 branch] concatenated -> residual block -> pools -> linear head.

    The residual sum ties the block's output channels to the concat's, i.e. to both branches."""

    def __init__(self, width: int = 32, classes: int = 10):
        super().__init__()
        self.stem = conv_bn(1, width, 3)
        self.branch_a, self.branch_b = conv_bn(width, width, 1), conv_bn(width, width, 3)
        self.block = nn.Sequential(conv_bn(2 * width, 2 * width, 3), conv_bn(2 * width, 2 * width, 3, relu=False))
        self.pool = nn.Sequential(nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.cat([self.branch_a(x), self.branch_b(x)], dim=1)
        x = F.relu(x + self.block(x))
        return self.head(self.pool(x))


def load_data(cfg: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Digits as (N, 1, 8, 8) floats in [0, 1], split once with a fixed seed, stratified by class."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    x, y = load_digits(return_X_y=True)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=cfg["test_fraction"], random_state=cfg["split_seed"],
                                          stratify=y)
    as_img = lambda a: torch.tensor(a, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0  # noqa: E731
    return as_img(xtr), torch.tensor(ytr), as_img(xte), torch.tensor(yte)


def batches(x: torch.Tensor, y: torch.Tensor, size: int, seed: int | None = None) -> list[tuple[torch.Tensor, ...]]:
    """(x, y) batches; shuffled by a generator of its own when seeded, so every method sees one order."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)) if seed is not None \
        else torch.arange(len(x))
    return [(x[i], y[i]) for i in order.split(size)]


# -- training and evaluation ---------------------------------------------------------------------

def train_(model: nn.Module, data: list[list[tuple[torch.Tensor, ...]]], lr: float) -> nn.Module:
    """Adam over the given epochs of batches; leaves the model in eval mode."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for epoch in data:
        for x, y in epoch:
            opt.zero_grad()
            F.cross_entropy(model(x), y).backward()
            opt.step()
    model.zero_grad(set_to_none=True)  # no stale .grad for Torch-Pruning's copies to inherit
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def epochs_of(x: torch.Tensor, y: torch.Tensor, cfg: dict[str, Any], n: int, seed: int) -> list[list[tuple]]:
    return [batches(x, y, cfg["batch_size"], seed=seed + e) for e in range(n)]


# -- the methods ------------------------------------------------------------------------------------

def gp_method(options: dict[str, Any]) -> Callable:
    # calibration batches are images only: "gp taylor" then differentiates graphprune's label-free
    # random projection of the logits, not the cross-entropy Torch-Pruning's Taylor gets
    def prune(model: nn.Module, ratio: float, ctx: dict[str, Any]) -> tuple[nn.Module, float, dict]:
        small, seconds = common.gp_prune(model, ratio, [x for x, _ in ctx["calib"]], ctx["example"], **options)
        return small, seconds, {}
    return prune


class Clock:
    """Seconds Torch-Pruning spends on the copy it finally returns (pruner build and step),
    so ``seconds`` is one pruning, not the whole bisection that matched the parameter budget."""

    def __init__(self) -> None:
        self.open: dict[int, float] = {}
        self.took: dict[int, float] = {}
        self.channel_ratio: dict[int, float] = {}

    def begin(self, model: nn.Module) -> None:
        self.open[id(model)] = time.perf_counter()

    def end(self, model: nn.Module, _pruner: Any = None) -> None:
        self.took[id(model)] = time.perf_counter() - self.open.pop(id(model))


def tp_pruner(model: nn.Module, channel_ratio: float, example: torch.Tensor, importance: Any, glob: bool) -> Any:
    # fresh dicts: BasePruner's dict defaults are shared between instances and mutated
    import torch_pruning as tp
    return tp.pruner.MetaPruner(model, example, importance=importance, pruning_ratio=channel_ratio,
                                global_pruning=glob, ignored_layers=[model.head], num_heads={},
                                in_channel_groups={}, out_channel_groups={})


def label_grads(calib: list[tuple[torch.Tensor, torch.Tensor]]) -> Callable[[nn.Module], None]:
    """Taylor importance reads .grad: accumulate the cross-entropy gradient of every calibration batch."""
    def grads(model: nn.Module) -> None:
        model.eval()  # BN running statistics must not move while gradients are taken
        model.zero_grad()
        for x, y in calib:
            F.cross_entropy(model(x), y).backward()
    return grads


def tp_method(kind: str, glob: bool) -> Callable:
    def prune(model: nn.Module, ratio: float, ctx: dict[str, Any]) -> tuple[nn.Module | None, float, dict]:
        import torch_pruning as tp
        clock, t0 = Clock(), time.perf_counter()
        # gradients once, on a copy that every bisection trial inherits; their time counts as pruning
        base = common.with_grads(model, label_grads(ctx["calib"]) if kind == "taylor" else None)
        grad_s = time.perf_counter() - t0

        def make(m: nn.Module, channel_ratio: float) -> Any:
            clock.begin(m)
            clock.channel_ratio[id(m)] = channel_ratio
            imp = tp.importance.GroupMagnitudeImportance(p=2) if kind == "l2" else tp.importance.GroupTaylorImportance()
            return tp_pruner(m, channel_ratio, ctx["example"], imp, glob)
        small, _, note = common.tp_matched(base, ctx["matched"], make, after=clock.end,
                                           iters=ctx["cfg"]["tp_bisection_iters"], tol=ctx["cfg"]["tp_match_tol"])
        if small is None:
            raise RuntimeError(note)
        return small, grad_s + clock.took[id(small)], {"tp_channel_ratio": round(clock.channel_ratio[id(small)], 4)}
    return prune


def methods(cfg: dict[str, Any]) -> list[tuple[str, Callable]]:
    gp = [(label, gp_method(opts)) for label, opts in common.RECIPES if label in cfg["recipes"]]
    tps = [(f"tp {kind} {scope}", tp_method(kind, scope == "global"))
           for kind in ("l2", "taylor") for scope in ("local", "global")]
    return gp + tps


# -- one pruned model -------------------------------------------------------------------------------

def measure(small: nn.Module, base: nn.Module, ctx: dict[str, Any]) -> dict[str, float]:
    """The three accuracies, in order: as pruned, BN re-estimated, then one epoch of fine-tuning."""
    cfg, (xtr, ytr, xte, yte) = ctx["cfg"], ctx["data"]
    out = {"params_removed": 1 - common.n_params(small) / common.n_params(base),
           "acc_pruned": accuracy(small, xte, yte)}
    graphprune.recalibrate_bn_(small, [x for x, _ in batches(xtr, ytr, cfg["batch_size"])])
    out["acc_bn"] = accuracy(small, xte, yte)
    # the same seed for every method: identical batch order, so only the pruned weights differ
    train_(small, epochs_of(xtr, ytr, cfg, cfg["ft_epochs"], seed=cfg["seed"] + 1000), cfg["ft_lr"])
    out["acc_ft"] = accuracy(small, xte, yte)
    return out


def one_row(label: str, prune: Callable, model: nn.Module, ratio: float, ctx: dict[str, Any]) -> dict[str, Any]:
    """A row for one method at one ratio; an exception becomes the row's note, not the run's end."""
    row: dict[str, Any] = {"ratio": ratio, "method": label}
    try:
        torch.manual_seed(ctx["cfg"]["seed"])
        small, seconds, extra = prune(model, ratio, ctx)
        row.update(measure(small, model, ctx), seconds=seconds, **extra)
    except Exception as err:  # noqa: BLE001 - a failing method is a result
        row["note"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


# -- the run -----------------------------------------------------------------------------------------

def versions() -> dict[str, str]:
    import sklearn
    import torch_pruning as tp
    return {"torch": torch.__version__, "torch_pruning": tp.__version__, "sklearn": sklearn.__version__,
            "graphprune": graphprune.__version__}


def setup(cfg: dict[str, Any]) -> tuple[nn.Module, dict[str, Any], float]:
    """Data, the trained model, and what every method shares (calibration batches, one example)."""
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    xtr, ytr, xte, yte = load_data(cfg)
    t0 = time.perf_counter()
    model = train_(DigitsNet(cfg["width"]), epochs_of(xtr, ytr, cfg, cfg["epochs"], seed=cfg["seed"]), cfg["lr"])
    train_s = time.perf_counter() - t0
    calib = batches(xtr, ytr, cfg["batch_size"], seed=cfg["seed"] + 500)[: cfg["calib_batches"]]
    ctx = {"cfg": cfg, "data": (xtr, ytr, xte, yte), "calib": calib, "example": calib[0][0]}
    return model, ctx, train_s


def run(quick: bool = False) -> dict[str, Any]:
    t0 = time.perf_counter()
    cfg = settings(quick)
    model, ctx, train_s = setup(cfg)
    xte, yte = ctx["data"][2], ctx["data"][3]
    acc = accuracy(model, xte, yte)
    # the columns hold the original accuracy; acc_one_more_epoch is the unpruned model after the same
    # fine-tuning epoch the pruned ones get, the fair reference for their acc_ft
    rows = [{"ratio": 0.0, "method": "unpruned", "params_removed": 0.0, "acc_pruned": acc, "acc_bn": acc,
             "acc_ft": acc, "seconds": 0.0, "acc_one_more_epoch": measure(copy.deepcopy(model), model, ctx)["acc_ft"]}]
    for ratio in cfg["ratios"]:
        rows += common.ratio_rows(model, ratio, ctx, methods(cfg), one_row)
    cfg = {**cfg, "params": common.n_params(model), "train_seconds": round(train_s, 2),
           "train_size": len(ctx["data"][0]), "test_size": len(xte), **versions()}
    return {"name": NAME, "settings": cfg, "columns": ["acc_pruned", "acc_bn", "acc_ft"], "rows": rows,
            "seconds": time.perf_counter() - t0}


if __name__ == "__main__":
    common.cli(run)
