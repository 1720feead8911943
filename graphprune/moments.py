"""Running moments of what each consuming module reads (one calibration pass): the ``InputStats``
that activation criteria, Wanda-style scores and least-squares compensation share, and the forward
pre-hooks that accumulate them. Only running sums are kept, never the activations themselves."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from .drift import rows_of
from .groups import Member


def readonly(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    a.flags.writeable = False
    return a


@dataclass(frozen=True, eq=False)
class InputStats:
    """Moments of the channels one module reads, over every sample and position (``count`` rows)."""

    count: int
    sum: np.ndarray
    sumsq: np.ndarray
    gram: np.ndarray | None = None  # sum of x x^T, only when "gram" was asked for
    # against a reference model (graphprune.drift): sum of e x^T (out x in) and of e, e = y - y_reference
    drift: np.ndarray | None = None
    drift_sum: np.ndarray | None = None
    # with "gram": the same moments over the odd-numbered batches alone, so a refit can be judged
    # on batches it was not fitted on (graphprune.ridge); None from a single batch
    fold: "InputStats | None" = None

    @property
    def mean(self) -> np.ndarray:
        return self.sum / max(self.count, 1)

    @property
    def var(self) -> np.ndarray:
        return np.maximum(self.sumsq / max(self.count, 1) - self.mean ** 2, 0.0)

    @property
    def norm(self) -> np.ndarray:
        """L2 norm of each channel over all rows (Wanda's ||X_j||)."""
        return np.sqrt(self.sumsq)


def consumer_of(model: nn.Module, member: Member) -> tuple[str, int] | None:
    """(module FQN, channel dim of its input) when ``member`` is the input side of a leaf module that
    multiplies its first input by that weight (Linear, GPT-2's Conv1D, an ungrouped conv; the first
    layer's input weights of a recurrent layer or cell), so input channel j meets index j of
    ``member.dim``; None where no such module runs (bare parameters)."""
    fqn, _, leaf = member.fqn.rpartition(".")
    if "in" not in member.roles or leaf not in ("weight", *RECURRENT_INPUT_WEIGHTS):
        return None
    try:
        mod = model.get_submodule(fqn)
    except AttributeError:
        return None
    if next(mod.children(), None) is not None:
        return None
    if leaf != "weight":  # x[..., j] meets column j of each direction's first input weights
        recurrent = isinstance(mod, (nn.RNNBase, nn.RNNCellBase))
        return (fqn, -1) if recurrent and member.dim == 1 else None
    if isinstance(mod, _ConvNd):
        return (fqn, 1) if mod.groups == 1 and not mod.transposed and member.dim == 1 else None
    weight = getattr(mod, "weight", None)
    return (fqn, -1) if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None


# the weights a recurrent module multiplies its own input by: layer 0's of each direction, or a cell's
RECURRENT_INPUT_WEIGHTS = ("weight_ih_l0", "weight_ih_l0_reverse", "weight_ih")


class InputHooks:
    """Forward pre-hooks that add each consumer's input to running sums (float64, on the CPU). With
    ``gram``, the odd-numbered batches (``batch``, set by the caller before each) are also summed
    apart, for ``InputStats.fold``."""

    def __init__(self, model: nn.Module, consumers: dict[str, int], gram: bool):
        self.dims, self.gram, self.batch = consumers, gram, 0
        self.acc: dict[str, list] = {}
        self.odd: dict[str, list] = {}
        self.handles = [model.get_submodule(f).register_forward_pre_hook(self._hook(f)) for f in consumers]

    def _hook(self, fqn: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            x = next((a for a in args if isinstance(a, torch.Tensor)), None)
            if x is None or not x.is_floating_point() or x.dim() < 2:
                return
            rows = rows_of(x, self.dims[fqn])
            _add(self.acc.setdefault(fqn, [0, 0.0, 0.0, 0.0]), rows, self.gram)
            if self.gram and self.batch % 2:
                _add(self.odd.setdefault(fqn, [0, 0.0, 0.0, 0.0]), rows, True)
        return hook

    def result(self) -> dict[str, InputStats]:
        out = {f: _stats(acc, self.gram) for f, acc in sorted(self.acc.items())}
        for f, odd in self.odd.items():
            if 0 < odd[0] < out[f].count:  # both folds saw rows
                out[f] = replace(out[f], fold=_stats(odd, True))
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _add(acc: list, rows: torch.Tensor, gram: bool) -> None:
    acc[0] += rows.shape[0]
    acc[1] = acc[1] + rows.sum(0)
    acc[2] = acc[2] + rows.pow(2).sum(0)
    if gram:
        acc[3] = acc[3] + rows.T @ rows


def _stats(acc: list, gram: bool) -> InputStats:
    n, s, q, g = acc
    return InputStats(n, readonly(s.numpy()), readonly(q.numpy()), readonly(g.numpy()) if gram else None)
