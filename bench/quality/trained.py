"""The bench's trained models, kept between runs: the byte-level Llama takes minutes to train on one
thread, and the sparsity and schedule benchmarks both start from it. The weights are cached as
safetensors under bench/.data (git-ignored), keyed by every setting that shapes them."""
from __future__ import annotations

import hashlib
import json
from typing import Any

import torch
from torch import nn

from bench.quality import common, tiny_llama

TRAINING_KEYS = ("seed", "corpus", "train_fraction", "model", "seq_len", "batch_size", "steps", "lr", "warmup_steps",
                 "weight_decay", "grad_clip")


def llama(cfg: dict[str, Any]) -> tuple[nn.Module, dict[str, Any], float]:
    """``tiny_llama.setup(cfg)`` with the trained weights read back when the same training ran before:
    (model, ctx, training seconds of the run that trained it)."""
    from safetensors.torch import load_file, save_file

    key = hashlib.sha256(json.dumps({k: cfg[k] for k in TRAINING_KEYS} | {"torch": torch.__version__},
                                    sort_keys=True).encode()).hexdigest()[:16]
    path = common.DATA / f"tiny_llama-{key}.safetensors"
    if path.exists():
        torch.set_num_threads(cfg["threads"])
        train_ids, held_ids = tiny_llama.load_bytes(cfg)
        model = tiny_llama.build(cfg)
        state = load_file(str(path))
        seconds = float(state.pop("__train_seconds__").item())
        model.load_state_dict(state)
        gen = torch.Generator().manual_seed(cfg["seed"] + 500)
        calib = [tiny_llama.random_batch(train_ids, cfg, gen) for _ in range(cfg["calib_batches"])]
        ctx = {"cfg": cfg, "calib": calib, "example": calib[0], "windows": tiny_llama.eval_windows(held_ids, cfg),
               "sizes": (len(train_ids), len(held_ids))}
        return model.eval(), ctx, seconds
    model, ctx, seconds = tiny_llama.setup(cfg)
    common.DATA.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file({**state, "__train_seconds__": torch.tensor(seconds)}, str(path))
    return model, ctx, seconds
