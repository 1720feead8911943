"""Stage 3b, calibrate: gradients. Per batch, ``w * dL/dw`` reduced onto every unit (Taylor, and the
diagonal Fisher), from the user's loss, the model's own, or a random projection of the output.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import CalibrationError
from .groups import Groups
from .inputs import first_tensor


class Grads:
    """Per batch, w * dL/dw reduced onto every member dim: |unit sums| (Taylor) and squares (Fisher)."""

    def __init__(self, model: nn.Module, groups: Groups):
        params = dict(model.named_parameters())
        self.groups = [g for g in groups.prunable if any(m.fqn in params for m in g.members)]
        self.names = sorted({m.fqn for g in self.groups for m in g.members if m.fqn in params})
        self.params = [params[n] for n in self.names]
        self.dims = {n: sorted({m.dim for g in self.groups for m in g.members if m.fqn == n}) for n in self.names}
        self.taylor = {g.id: np.zeros(g.width) for g in self.groups}
        self.fisher: dict[tuple[str, int], np.ndarray] = {}
        self.drift: dict[int, np.ndarray] = {}  # against a reference: per unit, sum of w * d(e . y)/dw

    def add(self, grads: tuple[torch.Tensor | None, ...], drift: tuple[torch.Tensor | None, ...] | None = None) -> None:
        """One batch's gradients; ``drift``: those of ``DriftHooks.output_loss``, summed signed per unit."""
        for gr, units in self._units(grads, fisher=True).items():
            self.taylor[gr] += np.abs(units)
        for gr, units in (self._units(drift, fisher=False) if drift is not None else {}).items():
            self.drift[gr] = self.drift.get(gr, 0.0) + units

    def _units(self, grads: tuple[torch.Tensor | None, ...], fisher: bool) -> dict[int, np.ndarray]:
        signed: dict[tuple[str, int], np.ndarray] = {}
        for name, p, g in zip(self.names, self.params, grads):
            wg = (p.detach() * g).double() if g is not None else torch.zeros_like(p, dtype=torch.float64)
            for d in self.dims[name]:
                other = [i for i in range(wg.dim()) if i != d]
                signed[name, d] = (wg.sum(other) if other else wg).cpu().numpy()
                if fisher:
                    sq = (wg.pow(2).sum(other) if other else wg.pow(2)).cpu().numpy()
                    self.fisher[name, d] = self.fisher.get((name, d), 0.0) + sq
        return {gr.id: sum(signed[m.fqn, m.dim][m.indices].sum(1) for m in gr.members if (m.fqn, m.dim) in signed)
                for gr in self.groups}


def loss_of(out: Any, batch: Any, loss_fn: Any, seed: int) -> tuple[torch.Tensor, str]:
    if loss_fn is not None:
        loss, name = loss_fn(out, batch), getattr(loss_fn, "__qualname__", "loss_fn")
    elif _own_loss(out) is not None:
        loss, name = _own_loss(out), "the model's own loss"
    else:
        y = first_tensor(out)
        r = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y.device, y.dtype)
        loss, name = (y * r).sum(), PROJECTION
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise CalibrationError(f"the calibration loss ({name}) gave {shape}; it must be a scalar tensor that "
                               f"depends on the parameters (e.g. loss_fn=lambda out, batch: out.logits.mean())")
    return loss.reshape(()), name


PROJECTION = "random projection of the output"


def _own_loss(out: Any) -> torch.Tensor | None:
    loss = out.get("loss") if isinstance(out, dict) else getattr(out, "loss", None)
    return loss if isinstance(loss, torch.Tensor) else None


class requires_grad:
    """Parameters need requires_grad for autograd.grad; the user's own flags come back afterwards."""

    def __init__(self, params: list[torch.Tensor]):
        self.flags = [(p, p.requires_grad) for p in params]

    def __enter__(self) -> None:
        for p, _ in self.flags:
            p.requires_grad_(True)

    def __exit__(self, *exc: Any) -> None:
        for p, flag in self.flags:
            p.requires_grad_(flag)
