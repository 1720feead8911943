"""Stage 3b for depth: what calibration batches say about each removable block.

``"blocks"``: the block influence of ShortGPT, 1 - cos(input, output) per sample, averaged: a block
that barely turns its input scores near 0. ``"bypass"``: what skipping the block alone costs, as the
increase of the loss (``loss_fn``, else the model's own), or without one the squared change of the
model's output relative to its size. Forward hooks only; the model is as it was afterwards.
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from .inputs import first_tensor, is_causal_lm, normalize_inputs

BLOCK_NEEDS = ("blocks", "bypass")


def _first(values: Any) -> torch.Tensor | None:
    try:
        return first_tensor(values)
    except Exception:  # noqa: BLE001 - an output holding no tensor: nothing to measure
        return None


class BlockProbe:
    """Running sums of both statistics over the batches of one calibration pass."""

    def __init__(self, model: nn.Module, fqns: list[str], needs: set[str], loss_fn: Callable | None):
        self.model, self.fqns, self.needs, self.loss_fn = model, fqns, needs, loss_fn
        self.turn = {f: 0.0 for f in fqns}
        self.cost = {f: 0.0 for f in fqns}
        self.samples, self.batches = 0, 0
        self.handles = [model.get_submodule(f).register_forward_hook(self._turned(f), with_kwargs=True)
                        for f in fqns] if "blocks" in needs else []

    def _turned(self, fqn: str) -> Callable:
        def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
            y = _first(out)
            x = next((a for a in [*args, *kwargs.values()] if isinstance(a, torch.Tensor) and y is not None
                      and a.shape == y.shape), None)
            if x is not None:
                cos = nn.functional.cosine_similarity(x.detach().flatten(1).double(), y.detach().flatten(1).double(), 1)
                self.turn[fqn] += float((1 - cos).sum())
        return hook

    @torch.no_grad()
    def after(self, batch: Any, loss: Callable[[Any, Any], torch.Tensor] | None) -> None:
        """Count the batch the hooks just saw; with "bypass", run it once more per skipped block."""
        args, kwargs = normalize_inputs(batch)
        if loss is None and "labels" not in kwargs and "input_ids" in kwargs and is_causal_lm(self.model):
            kwargs = {**kwargs, "labels": kwargs["input_ids"]}  # the model's own loss, as calibrate does
        self.batches += 1
        self.samples += _batch_size(args, kwargs)
        if "bypass" not in self.needs:
            return
        base = self.model(*args, **kwargs)
        for fqn in self.fqns:
            handle = self.model.get_submodule(fqn).register_forward_hook(_skip, with_kwargs=True)
            try:
                out = self.model(*args, **kwargs)
            finally:
                handle.remove()
            self.cost[fqn] += _cost(base, out, batch, loss)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()

    def result(self) -> tuple[dict[str, float], dict[str, float]]:
        turn = {f: v / max(self.samples, 1) for f, v in self.turn.items()} if "blocks" in self.needs else {}
        cost = {f: v / max(self.batches, 1) for f, v in self.cost.items()} if "bypass" in self.needs else {}
        return turn, cost


def _skip(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> Any:
    """A forward hook that makes the block return its input (in the output's structure)."""
    y = _first(out)
    x = next((a for a in [*args, *kwargs.values()] if isinstance(a, torch.Tensor) and y is not None
              and a.shape == y.shape), None)
    if x is None or isinstance(out, torch.Tensor):
        return x if x is not None else out
    if isinstance(out, tuple):
        return (x, *out[1:])
    return out


def _cost(base: Any, out: Any, batch: Any, loss: Callable | None) -> float:
    if loss is not None:
        return float(loss(out, batch) - loss(base, batch))
    own = getattr(out, "loss", None)
    if isinstance(own, torch.Tensor):
        return float(own - base.loss)
    ref, got = first_tensor(base).double(), first_tensor(out).double()
    return float((got - ref).pow(2).sum() / ref.pow(2).sum().clamp_min(1e-30))


def _batch_size(args: tuple, kwargs: dict) -> int:
    first = next((a for a in [*args, *kwargs.values()] if isinstance(a, torch.Tensor)), None)
    return int(first.shape[0]) if first is not None and first.dim() else 1
