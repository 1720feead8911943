"""Quality benchmark (d): a tiny Llama-shaped byte-level causal LM (4 layers, hidden 128, 8 query /
4 key-value heads), trained here on a text corpus from gensim's wheel, then pruned by every graphprune
recipe (attention heads and MLP neurons; the residual width is left alone) and by Torch-Pruning.

Measured: held-out perplexity (exp of the mean next-byte cross-entropy over a fixed set of held-out
windows) of the unpruned model and of each pruned one at 0.2 and 0.5 of the parameters removed, with
no fine-tuning, plus pruning seconds. Why: a transformer has grouped-query heads, rotary embeddings
and gated MLPs whose couplings a pruner must get right, and perplexity straight after pruning shows
how much each criterion (and compensation) keeps of what the model learnt.

Torch-Pruning is matched to the parameter fraction graphprune's default recipe achieved. Its head
pruning is tried under a time limit (its group search does not return on this model, see the note);
an MLP-only Torch-Pruning baseline (attention, embeddings and lm_head ignored) always runs.

    .venv/bin/python -m bench.quality.tiny_llama
"""
from __future__ import annotations

import json
import math
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
import transformers
from torch import nn

from bench.quality import common
from bench.quality.digits_cnn import Clock  # times one Torch-Pruning candidate

NAME = "tiny_llama"
SHAPE = dict(hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=4, vocab_size=256, max_position_embeddings=256, use_cache=False)


def settings(quick: bool) -> dict[str, Any]:
    """Every knob of the run; quick mode only shrinks the work."""
    return {"seed": 0, "corpus": "gensim-4.4.0 test_data/head500.noblanks.cor", "train_fraction": 0.9,
            "model": SHAPE, "seq_len": 128, "batch_size": 16, "steps": 30 if quick else 800, "lr": 2e-3,
            "warmup_steps": 40, "weight_decay": 0.01, "grad_clip": 1.0, "calib_batches": 2 if quick else 8,
            "eval_windows": 64 if quick else 512, "eval_batch": 32, "ratios": [0.5] if quick else [0.2, 0.5],
            "prune": ["heads", "mlp"], "threads": 1,
            "tp_bisection_iters": 6 if quick else 12, "tp_match_tol": 0.003,
            "tp_heads_time_limit_s": 20,
            "recipes": [label for label, _ in (common.RECIPES[:3] if quick else common.RECIPES)]}


# -- data ------------------------------------------------------------------------------------------

def load_bytes(cfg: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """UTF-8 bytes of the corpus, split by characters: first 90% to train, the rest held out."""
    text = common.gensim_text("head500.noblanks.cor")
    cut = int(len(text) * cfg["train_fraction"])
    as_ids = lambda s: torch.tensor(list(s.encode("utf-8")), dtype=torch.long)  # noqa: E731
    return as_ids(text[:cut]), as_ids(text[cut:])


def random_batch(ids: torch.Tensor, cfg: dict[str, Any], gen: torch.Generator) -> dict[str, torch.Tensor]:
    starts = torch.randint(0, len(ids) - cfg["seq_len"], (cfg["batch_size"],), generator=gen)
    return {"input_ids": torch.stack([ids[s:s + cfg["seq_len"]] for s in starts.tolist()])}


def eval_windows(ids: torch.Tensor, cfg: dict[str, Any]) -> torch.Tensor:
    """A fixed set of equally spaced, non-overlapping held-out windows: (eval_windows, seq_len)."""
    n, length = cfg["eval_windows"], cfg["seq_len"]
    starts = torch.linspace(0, len(ids) - length, n).long()
    return torch.stack([ids[s:s + length] for s in starts.tolist()])


# -- model, training, perplexity --------------------------------------------------------------------

def build(cfg: dict[str, Any]) -> nn.Module:
    torch.manual_seed(cfg["seed"])
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(**cfg["model"]))


def schedule(cfg: dict[str, Any]) -> Callable[[int], float]:
    """Linear warm-up, then cosine decay to a tenth of the peak learning rate."""
    def factor(step: int) -> float:
        if step < cfg["warmup_steps"]:
            return (step + 1) / cfg["warmup_steps"]
        done = (step - cfg["warmup_steps"]) / max(1, cfg["steps"] - cfg["warmup_steps"])
        return 0.1 + 0.45 * (1 + math.cos(math.pi * min(done, 1.0)))
    return factor


def train_(model: nn.Module, train_ids: torch.Tensor, cfg: dict[str, Any]) -> nn.Module:
    """A fixed number of AdamW steps on random training windows (seeded); leaves eval mode."""
    opt = torch.optim.AdamW(model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
    lr = torch.optim.lr_scheduler.LambdaLR(opt, schedule(cfg))
    gen, model = torch.Generator().manual_seed(cfg["seed"]), model.train()
    for _ in range(cfg["steps"]):
        batch = random_batch(train_ids, cfg, gen)
        opt.zero_grad()
        model(**batch, labels=batch["input_ids"]).loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"])
        opt.step()
        lr.step()
    model.zero_grad(set_to_none=True)  # no stale .grad for Torch-Pruning's copies to inherit
    return model.eval()


@torch.no_grad()
def perplexity(model: nn.Module, windows: torch.Tensor, batch: int) -> float:
    """exp of the mean cross-entropy of every next-byte prediction inside the windows."""
    model.eval()
    total, count = 0.0, 0
    for ids in windows.split(batch):
        logits = model(input_ids=ids).logits[:, :-1]
        total += float(F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"))
        count += ids[:, 1:].numel()
    return math.exp(total / count)


# -- the methods ------------------------------------------------------------------------------------

def gp_method(options: dict[str, Any]) -> Callable:
    def prune(model: nn.Module, ratio: float, ctx: dict[str, Any]) -> tuple[nn.Module, float]:
        return common.gp_prune(model, ratio, ctx["calib"], ctx["example"], prune=tuple(ctx["cfg"]["prune"]), **options)
    return prune


def attention(model: nn.Module) -> list[nn.Module]:
    return [layer.self_attn for layer in model.model.layers]


def tp_pruner(model: nn.Module, channel_ratio: float, example: dict, heads: bool, glob: bool) -> Any:
    """MetaPruner with group L2 magnitude. Embeddings and lm_head are ignored, which also freezes the
    residual width (its group holds the embedding's output); ``heads=False`` ignores the attention
    projections as well, leaving the MLP neurons. Fresh dicts: BasePruner's defaults are shared."""
    import torch_pruning as tp
    ignored = [model.lm_head, model.model.embed_tokens]
    num_heads: dict[nn.Module, int] = {}
    for a in attention(model):
        if heads:
            kv = model.config.num_key_value_heads
            num_heads.update({a.q_proj: model.config.num_attention_heads, a.k_proj: kv, a.v_proj: kv})
        else:
            ignored += [a.q_proj, a.k_proj, a.v_proj, a.o_proj]
    return tp.pruner.MetaPruner(
        model, example, importance=tp.importance.GroupMagnitudeImportance(p=2), pruning_ratio=channel_ratio,
        global_pruning=glob, ignored_layers=ignored, num_heads=num_heads, prune_num_heads=heads,
        prune_head_dims=False, head_pruning_ratio=channel_ratio if heads else 0.0,
        output_transform=lambda out: out.logits, in_channel_groups={}, out_channel_groups={})


def tp_fixup(model: nn.Module, pruner: Any) -> None:
    """Llama attention repeats each key/value head num_key_value_groups times; keep that in step."""
    for a in attention(model):
        if a.q_proj in pruner.num_heads:
            a.num_key_value_groups = pruner.num_heads[a.q_proj] // pruner.num_heads[a.k_proj]


class time_limit:
    """Raise TimeoutError after ``seconds`` (SIGALRM): Torch-Pruning's group search can loop for ever."""

    def __init__(self, seconds: float):
        self.seconds = seconds

    def _raise(self, _signum: int, frame: Any) -> None:
        where = f"{Path(frame.f_code.co_filename).parent.name}/{Path(frame.f_code.co_filename).name}" \
                f":{frame.f_code.co_qualname}" if frame is not None else "?"
        raise TimeoutError(f"Torch-Pruning did not finish in {self.seconds:g} s (it was in {where})")

    def __enter__(self) -> None:
        self.old = signal.signal(signal.SIGALRM, self._raise)
        signal.setitimer(signal.ITIMER_REAL, self.seconds)

    def __exit__(self, *_: Any) -> None:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, self.old)


def tp_method(heads: bool, glob: bool) -> Callable:
    def prune(model: nn.Module, ratio: float, ctx: dict[str, Any]) -> tuple[nn.Module, float]:
        clock = Clock()  # seconds of the returned copy's pruner build + step, not of the bisection

        def make(m: nn.Module, channel_ratio: float) -> Any:
            clock.begin(m)
            return tp_pruner(m, channel_ratio, ctx["example"], heads, glob)

        def after(m: nn.Module, pruner: Any) -> None:
            tp_fixup(m, pruner)
            clock.end(m)
        with time_limit(ctx["cfg"]["tp_heads_time_limit_s"] if heads else 600):
            small, _, note = common.tp_matched(model, ctx["matched"], make, after=after,
                                               iters=ctx["cfg"]["tp_bisection_iters"], tol=ctx["cfg"]["tp_match_tol"])
        if small is None:
            raise RuntimeError(note)
        return small, clock.took[id(small)]
    return prune


def methods(cfg: dict[str, Any]) -> list[tuple[str, Callable]]:
    gp = [(label, gp_method(opts)) for label, opts in common.RECIPES if label in cfg["recipes"]]
    return gp + [("tp l2", tp_method(heads=True, glob=False)),
                 ("tp l2 mlp-only local", tp_method(heads=False, glob=False)),
                 ("tp l2 mlp-only global", tp_method(heads=False, glob=True))]


# -- rows and the run --------------------------------------------------------------------------------

def one_row(label: str, prune: Callable, model: nn.Module, ratio: float, ctx: dict[str, Any]) -> dict[str, Any]:
    """A row for one method at one ratio; an exception becomes the row's note, not the run's end."""
    row: dict[str, Any] = {"ratio": ratio, "method": label}
    try:
        torch.manual_seed(ctx["cfg"]["seed"])
        small, seconds = prune(model, ratio, ctx)
        row.update(params_removed=1 - common.n_params(small) / common.n_params(model),
                   ppl=perplexity(small, ctx["windows"], ctx["cfg"]["eval_batch"]), seconds=seconds)
    except Exception as err:  # noqa: BLE001 - a failing method is a result
        row["note"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"[:300]
    print(json.dumps(row), file=sys.stderr, flush=True)
    return row


def versions() -> dict[str, str]:
    import graphprune
    import torch_pruning as tp
    return {"torch": torch.__version__, "torch_pruning": tp.__version__, "transformers": transformers.__version__,
            "graphprune": graphprune.__version__}


def setup(cfg: dict[str, Any]) -> tuple[nn.Module, dict[str, Any], float]:
    """Data, the trained model, and what every method shares (calibration batches, one example)."""
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    train_ids, held_ids = load_bytes(cfg)
    t0 = time.perf_counter()
    model = train_(build(cfg), train_ids, cfg)
    train_s = time.perf_counter() - t0
    gen = torch.Generator().manual_seed(cfg["seed"] + 500)  # calibration windows apart from training's draw
    calib = [random_batch(train_ids, cfg, gen) for _ in range(cfg["calib_batches"])]
    ctx = {"cfg": cfg, "calib": calib, "example": calib[0], "windows": eval_windows(held_ids, cfg),
           "sizes": (len(train_ids), len(held_ids))}
    return model, ctx, train_s


def run(quick: bool = False) -> dict[str, Any]:
    t0 = time.perf_counter()
    cfg = settings(quick)
    warnings.filterwarnings("ignore", module="torch_pruning")  # its per-model notices, not results
    model, ctx, train_s = setup(cfg)
    rows = [{"ratio": 0.0, "method": "unpruned", "params_removed": 0.0,
             "ppl": perplexity(model, ctx["windows"], cfg["eval_batch"]), "seconds": 0.0}]
    for ratio in cfg["ratios"]:
        rows += common.ratio_rows(model, ratio, ctx, methods(cfg), one_row)
    cfg = {**cfg, "params": common.n_params(model), "train_seconds": round(train_s, 2),
           "train_bytes": ctx["sizes"][0], "heldout_bytes": ctx["sizes"][1], **versions()}
    return {"name": NAME, "settings": cfg, "columns": ["ppl"], "rows": rows, "seconds": time.perf_counter() - t0}


if __name__ == "__main__":
    common.cli(run)
