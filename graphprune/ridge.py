"""Stage 6a helper, ridge: how strongly ``compensate="lstsq"`` damps each refit, chosen from the data.

A refit of ``n`` kept columns from a few hundred calibration samples fits their noise too: on the
bench's sentence encoder at 50%, the refit model agreed with the original at 0.89 cosine on the
calibration sentences but 0.81 on others, and pruning in rounds, which refits the same layers again
and again, paid for that more than one-shot did. So each consumer's damping is picked by two-fold
cross-validation over calibration batches (even-numbered against odd-numbered, ``InputStats.fold``):
for every damping on ``GRID``, refit on one fold, measure the output error on the other, both ways,
and keep the damping with the least held-out error. Only moments are read, never activations.

With the bias free, the refit is the centred ridge regression (``d = ridge * mean E[x_k^2]``)::

    W_K' = (W Cov(x, x_K) + d W_K) (Cov(x_K, x_K) + d I)^-1

(without a bias to refit, as for an HF layer whose config declares none, the same with the
uncentred ``E[x x_K^T]``), and one eigendecomposition of ``Cov(x_K, x_K)`` per fold serves every
damping on the grid.
"""
from __future__ import annotations

import numpy as np
import torch

from .moments import InputStats

GRID = tuple(float(10.0 ** e) for e in np.arange(-4.0, 0.01, 0.5))  # relative to the mean input energy
RIDGE = 1e-3  # the fixed damping: without two folds (a single calibration batch), and what obs judges with


def choose_ridge(w: torch.Tensor, seen: InputStats, keep: np.ndarray, with_bias: bool = True) -> float:
    """The damping on ``GRID`` whose refit of ``w``'s (out, in) kept columns ``keep`` (and of the
    bias, ``with_bias``) errs least on the calibration batches it was not fitted on; ``RIDGE``
    without two folds.

    >>> import torch, numpy as np
    >>> from graphprune.moments import InputStats
    >>> def moments(x):
    ...     x = x.double()
    ...     return InputStats(len(x), x.sum(0).numpy(), x.pow(2).sum(0).numpy(), (x.T @ x).numpy())
    >>> g = torch.Generator().manual_seed(0)
    >>> x = torch.randn(40, 30, generator=g)  # 30 channels, 20 rows a fold: a refit overfits
    >>> seen = moments(x)
    >>> seen = InputStats(**{**seen.__dict__, "fold": moments(x[1::2])})
    >>> choose_ridge(torch.randn(3, 30, generator=g).double(), seen, np.arange(15)) > 1e-3
    True
    """
    if seen.fold is None or seen.gram is None:
        return RIDGE
    odd = _Moments.of(seen.fold)
    even = _Moments.of(seen).minus(odd)
    k = torch.from_numpy(np.asarray(keep))
    err = _held_out(w, k, odd, even, with_bias) + _held_out(w, k, even, odd, with_bias)
    return GRID[int(torch.argmin(err))]


class _Moments:
    """Count, mean and uncentred second moment (divided by the count) of one fold."""

    def __init__(self, count: int, total: torch.Tensor, gram: torch.Tensor):
        self.count, self.total, self.gram = count, total, gram
        self.mean, self.second = total / max(count, 1), gram / max(count, 1)

    @classmethod
    def of(cls, seen: InputStats) -> "_Moments":
        return cls(seen.count, torch.tensor(seen.sum), torch.tensor(seen.gram))

    def minus(self, part: "_Moments") -> "_Moments":
        return _Moments(self.count - part.count, self.total - part.total, self.gram - part.gram)


def _held_out(w: torch.Tensor, k: torch.Tensor, fit: _Moments, test: _Moments, with_bias: bool) -> torch.Tensor:
    """Per damping on ``GRID``: the total squared output error on ``test`` of the refit on ``fit``,
    up to a term that is the same for every damping."""
    centre = fit.mean if with_bias else torch.zeros_like(fit.mean)
    cov = fit.second - torch.outer(centre, centre)
    lam, vec = torch.linalg.eigh(cov[k][:, k])
    scale = float(torch.diagonal(fit.second)[k].mean().clamp_min(1e-12))  # as compensate._refit damps
    q, q2 = (w @ cov[:, k]) @ vec, w[:, k] @ vec
    # test inputs centred on the FIT fold's mean: the refit bias carries that mean, not the test's
    moved = test.second - torch.outer(test.mean, centre) - torch.outer(centre, test.mean) + torch.outer(centre, centre)
    z, h = (w @ moved[:, k]) @ vec, vec.T @ moved[k][:, k] @ vec
    out = []
    for r in GRID:
        d = r * scale
        s = (q + d * q2) / (lam.clamp_min(0) + d)  # the refit W_K' in the eigenbasis: W_K' = s vec^T
        out.append((s * (s @ h)).sum() - 2 * (s * z).sum())
    return torch.stack(out) * test.count
