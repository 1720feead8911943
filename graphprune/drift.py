"""Stage 3b helper, drift: how far what each consuming module writes has moved from what a reference
model's module of the same name writes on the same batch. Iterative rounds calibrate the pruned
model against the ORIGINAL one, so data-aware criteria judge a unit by what removing it does to
the remaining error, not to an output that is already off.

For a consumer ``y = W x + b`` whose reference output is ``y0``, the drift ``e = y - y0`` is kept as
two running sums over rows: ``cross = sum e x^T`` (out x in) and ``total = sum e``. Removing input
channel ``j`` changes the squared error by ``||W[:, j]||^2 sum x_j^2 - 2 W[:, j] . cross[:, j]``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .inputs import eval_mode, first_tensor


@dataclass(frozen=True, eq=False)
class Reference:
    """The model to measure drift from, and per consumer FQN the reference's output channels the
    current module still has, in order (absent: all of them, same width)."""

    model: nn.Module
    rows: Mapping[str, Sequence[int]] = field(default_factory=dict)


def rows_of(output: torch.Tensor, dim: int) -> torch.Tensor:
    """An output or input as (rows, channels) in float64, channels along ``dim``."""
    return output.detach().movedim(dim, -1).reshape(-1, output.shape[dim]).double().cpu()


class DriftHooks:
    """Forward hooks on both models: the reference's consumers record what they write on a batch
    (``before`` runs the reference on it), the current model's add ``e x^T`` and ``e`` to sums.
    A consumer whose outputs do not line up (another call count, shape or row count) is dropped."""

    def __init__(self, model: nn.Module, reference: Reference, consumers: Mapping[str, int]):
        ref_mods = dict(reference.model.named_modules())
        self.dims = {f: d for f, d in consumers.items() if f in ref_mods and reference.rows.get(f) != ()}
        self.reference, self.seen, self.bad = reference, {f: [] for f in self.dims}, set()
        self.acc: dict[str, list[torch.Tensor]] = {}
        self.output: torch.Tensor | None = None  # the reference's own output on the current batch
        self.handles = [ref_mods[f].register_forward_hook(self._record(f)) for f in self.dims]
        self.handles += [model.get_submodule(f).register_forward_hook(self._add(f)) for f in self.dims]

    def before(self, args: tuple, kwargs: dict) -> None:
        for f in self.seen:
            self.seen[f] = []
        with torch.no_grad(), eval_mode(self.reference.model):
            self.output = first_tensor(self.reference.model(*args, **kwargs))

    def output_loss(self, y: torch.Tensor) -> torch.Tensor | None:
        """``e . y`` with the output's drift ``e = y - y_reference`` held fixed: its gradient gives,
        per unit, the first-order change of ``||e||^2 / 2`` (None where the outputs differ in shape)."""
        if self.output is None or self.output.shape != y.shape:
            return None
        return ((y - self.output.to(y.device, y.dtype)).detach() * y).sum()

    def _record(self, fqn: str) -> Callable:
        def hook(module: nn.Module, args: tuple, out: Any) -> None:
            if isinstance(out, torch.Tensor) and out.dim() >= 2:
                # kept as it came (dtype, device) until the current model's module meets it: one
                # batch of every consumer's output is held at a time, not float64 copies of them
                keep = self.reference.rows.get(fqn)
                y0 = out.detach() if keep is None else out.detach().index_select(
                    self.dims[fqn], torch.as_tensor(list(keep), device=out.device))
                self.seen[fqn].append(y0)
        return hook

    def _add(self, fqn: str) -> Callable:
        def hook(module: nn.Module, args: tuple, out: Any) -> None:
            x = next((a for a in args if isinstance(a, torch.Tensor)), None)
            if fqn in self.bad or x is None or not isinstance(out, torch.Tensor) or not self.seen[fqn]:
                self.bad.add(fqn)
                return
            y0, y, xs = (rows_of(t, self.dims[fqn]) for t in (self.seen[fqn].pop(0), out, x))
            if y0.shape != y.shape or xs.shape[0] != y.shape[0]:
                self.bad.add(fqn)
                return
            e = y - y0
            acc = self.acc.setdefault(fqn, [0.0, 0.0])
            acc[0], acc[1] = acc[0] + e.T @ xs, acc[1] + e.sum(0)
        return hook

    def result(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Consumer FQN -> (sum e x^T, sum e) for every consumer that lined up on every batch."""
        return {f: (c, t) for f, (c, t) in self.acc.items() if f not in self.bad}

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def reference_to(original: nn.Module, current: nn.Module, keep: Mapping[str, Mapping[int, Sequence[int]]]) -> Reference:
    """The ``Reference`` for measuring ``current`` (pruned from ``original`` by a plan whose kept
    indices, composed over rounds, are ``keep``) against ``original``: per module with a weight, the
    original output channels it still writes. One whose output axis in its weight is unknown and
    whose width changed is left out, so no drift is measured there.

    >>> import copy, graphprune
    >>> from graphprune.plan import plan_from_units
    >>> mlp = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 2))
    >>> groups = graphprune.find_groups(mlp, torch.randn(2, 4))
    >>> (g,) = groups.prunable
    >>> plan = plan_from_units(mlp, [(g, [1, 4])], {}, groups)
    >>> small = graphprune.apply_plan_(copy.deepcopy(mlp), plan, groups.traced.inputs)
    >>> ref = reference_to(mlp, small, plan.keep)
    >>> ref.rows["0"]
    (0, 2, 3, 5)
    >>> stats = graphprune.calibrate(small, graphprune.find_groups(small, torch.randn(2, 4)),
    ...                              [torch.randn(8, 4)], reference=ref)
    >>> stats.inputs["2"].drift.shape  # sum over rows of (output - original's) x input^T
    (2, 4)
    """
    ref_mods, rows = dict(original.named_modules()), {}
    for fqn, mod in current.named_modules():
        weight, old = getattr(mod, "weight", None), getattr(ref_mods.get(fqn), "weight", None)
        if not isinstance(weight, torch.Tensor) or not isinstance(old, torch.Tensor) or weight.dim() < 2:
            continue
        out_dim = 1 if hasattr(mod, "nf") else 0  # GPT-2's Conv1D stores (in, out)
        kept = keep.get(f"{fqn}.weight", {}).get(out_dim)
        if kept is not None and len(kept) == weight.shape[out_dim]:
            rows[fqn] = tuple(kept)
        elif weight.shape[out_dim] != old.shape[out_dim]:
            rows[fqn] = ()  # no way to line the outputs up: DriftHooks drops it
    return Reference(original, rows)
