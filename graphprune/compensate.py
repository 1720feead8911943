"""Stage 6a, compensate: fold what removed units fed their consumers into what stays, from the
calibration statistics, before surgery slices them away (BatchNorm statistics are re-estimated
after surgery: ``graphprune.recalibrate``).

For a consumer ``y = W x + b`` losing input channels R: "mean" adds ``W[:, R] E[x_R]`` to ``b`` (exact
when those inputs are constant on the data); "lstsq" refits the kept columns and the bias to minimise
``E||W x + b - W' x_K - b'||^2`` by ridge-regularised least squares on the input second moments,
each layer's damping chosen by cross-validation over the calibration batches (``graphprune.ridge``).
Layers are solved one at a time, each from the unpruned model's inputs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd

from .calibrate import Stats
from .moments import InputStats
from .config import COMPENSATE
from .errors import CalibrationError
from .groups import Groups
from .plan import Plan
from .ridge import choose_ridge

METHODS = tuple(m for m in COMPENSATE if m)


@dataclass(frozen=True, eq=False)
class Compensation:
    """New full-size values (before the plan slices them) and biases to add, by FQN."""

    method: str
    updates: Mapping[str, torch.Tensor]  # parameter or buffer FQN -> new value
    new_biases: Mapping[str, torch.Tensor]  # module FQN -> bias it gains
    notes: tuple[str, ...] = ()
    ridges: Mapping[str, float] = field(default_factory=dict)  # "lstsq": module FQN -> the damping its refit used

    def apply_(self, model: nn.Module) -> None:
        """Write the values into ``model`` as new tensors (surgery's snapshot keeps the old ones)."""
        for fqn, value in self.updates.items():
            owner, _, leaf = fqn.rpartition(".")
            mod = model.get_submodule(owner)
            if leaf in mod._parameters:
                old = mod._parameters[leaf]
                mod._parameters[leaf] = nn.Parameter(value.clone(), requires_grad=old.requires_grad)
            else:
                mod._buffers[leaf] = value.clone()
        for fqn, bias in self.new_biases.items():
            model.get_submodule(fqn).bias = nn.Parameter(bias.clone())


def _linear_view(mod: nn.Module, weight: torch.Tensor, dim: int) -> torch.Tensor | None:
    """The weight as (out, in) with ``dim`` as the input axis; None for what is no linear map of
    one input channel per column (grouped convs, bare parameters)."""
    if isinstance(mod, _ConvNd):
        if mod.groups != 1 or mod.transposed or dim != 1:
            return None
        return weight.flatten(2).sum(2) if weight.dim() > 2 else weight
    if weight.dim() != 2:
        return None
    return weight if dim == 1 else weight.T


def compensation(model: nn.Module, plan: Plan, groups: Groups, stats: Stats, method: str = "mean",
                 ridge: float | None = None) -> Compensation:
    """What ``compensate_`` would write, without writing it (a pure function of its inputs).
    ``ridge`` fixes the lstsq damping of every layer; None picks each one's by cross-validation."""
    if method not in METHODS:
        raise CalibrationError(f"compensate={method!r} is not one of {METHODS}")
    need = "gram" if method == "lstsq" else "inputs"
    if need not in stats.needs:
        raise CalibrationError(f"compensate={method!r} needs calibration statistics {need!r}; calibrate with "
                               f"needs=({need!r},) (shrink does this when given calibration=)")
    updates: dict[str, torch.Tensor] = {}
    biases: dict[str, torch.Tensor] = {}
    notes: list[str] = []
    ridges: dict[str, float] = {}
    hf = hasattr(getattr(model, "config", None), "to_dict")
    in_dims, bns = _input_dims(groups), _batch_norms_after(groups)
    for fqn, dims in plan.keep.items():
        owner, _, leaf = fqn.rpartition(".")
        cut = [d for d in in_dims.get(fqn, ()) if d in dims]
        if leaf != "weight" or len(cut) != 1 or owner not in stats.inputs:
            continue  # no consumer input lost here, or no statistics of what it read
        _one(model, bns.get(fqn), stats.inputs[owner], method, ridge, owner, cut[0], np.asarray(dims[cut[0]]), hf,
             (updates, biases, notes, ridges), dims)
    return Compensation(method, MappingProxyType(updates), MappingProxyType(biases),
                        tuple(notes) + _ridge_note(ridges, ridge), MappingProxyType(ridges))


def _ridge_note(ridges: Mapping[str, float], fixed: float | None) -> tuple[str, ...]:
    if not ridges or fixed is not None:
        return ()
    r = np.array(sorted(ridges.values()))
    return (f"lstsq damping by cross-validation over the calibration batches: {r[0]:.0e} to {r[-1]:.0e} "
            f"(median {np.median(r):.0e}) of the mean input energy, over {len(r)} layers",)


def _input_dims(groups: Groups) -> dict[str, set[int]]:
    """Per parameter, the dims along which it consumes coupled channels ('in' role)."""
    out: dict[str, set[int]] = {}
    for g in groups:
        for m in g.members:
            if "in" in m.roles:
                out.setdefault(m.fqn, set()).add(m.dim)
    return out


def _one(model, next_bn, seen: InputStats, method, ridge, owner, in_dim, keep, hf, into, keep_out=None) -> None:
    updates, biases, notes, ridges = into
    mod = model.get_submodule(owner)
    w2 = _linear_view(mod, mod.weight.detach().double(), in_dim)
    if w2 is None or w2.shape[1] != seen.sum.shape[0]:
        notes.append(f"{owner}: not a linear map of its input channels; nothing compensated")
        return
    bias = getattr(mod, "bias", None)
    can_bias = bias is not None or not hf  # an HF config that says "no bias" would drop it on reload
    bn = None if bias is not None else next_bn
    if method == "lstsq" and refits(mod):
        with_bias = can_bias or bn is not None
        ridges[owner] = choose_ridge(w2, seen, keep, with_bias) if ridge is None else ridge
        w_new, b_new = _refit(w2, bias, seen, keep, ridges[owner], with_bias=with_bias)
        updates[f"{owner}.weight"] = _unview(mod, w_new, in_dim).to(mod.weight.dtype)
    else:
        if method == "lstsq":
            notes.append(f"{owner}: a {tuple(mod.weight.shape[2:])} kernel is no pointwise map; mean used instead")
        drop = np.setdiff1d(np.arange(w2.shape[1]), keep)
        base = bias.detach().double() if bias is not None else torch.zeros(w2.shape[0], dtype=torch.float64)
        b_new = base + w2[:, drop] @ torch.from_numpy(seen.mean[drop])
    _place_bias(mod, owner, bias, bn, b_new, can_bias, updates, biases, notes, keep_out)


def refits(mod: nn.Module) -> bool:
    """Whether ``compensate="lstsq"`` refits this consumer (a linear map per position: Linear, 1x1
    conv); the others get the mean (a recurrent layer, which has no ``weight``: neither)."""
    weight = getattr(mod, "weight", None)
    if not isinstance(weight, torch.Tensor):
        return False
    return weight.dim() == 2 or (isinstance(mod, _ConvNd) and all(k == 1 for k in mod.kernel_size))


def _unview(mod: nn.Module, w2: torch.Tensor, in_dim: int) -> torch.Tensor:
    if isinstance(mod, _ConvNd):
        return w2.reshape(mod.weight.shape)
    return w2 if in_dim == 1 else w2.T


def _refit(w: torch.Tensor, bias: torch.Tensor | None, seen: InputStats, keep: np.ndarray, ridge: float,
           with_bias: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Ridge least squares for the kept columns (and the bias): the normal equations of
    min E||W x + b - W_K' x_K - b'||^2 + ridge' ||W_K' - W_K||^2, from the second moments, in float64."""
    n = max(seen.count, 1)
    g, mu = torch.tensor(seen.gram) / n, torch.tensor(seen.mean)
    b = bias.detach().double() if bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    k = torch.from_numpy(keep)
    if with_bias:  # z = [x_K, 1]: E[z z^T] and E[(W x + b) z^T]
        m = torch.zeros(len(k) + 1, len(k) + 1, dtype=torch.float64)
        m[:-1, :-1], m[:-1, -1], m[-1, :-1], m[-1, -1] = g[k][:, k], mu[k], mu[k], 1.0
        rhs = torch.cat([w @ g[:, k] + b[:, None] * mu[k][None], (w @ mu + b)[:, None]], 1)
    else:
        m, rhs = g[k][:, k].clone(), w @ g[:, k]
    # damped towards the current weights, not towards zero: where the data say nothing (a dead
    # input, too few samples) the refit keeps what the layer had
    damp = ridge * float(torch.diagonal(g[k][:, k]).mean().clamp_min(1e-12))
    m[: len(k), : len(k)] += damp * torch.eye(len(k), dtype=torch.float64)
    rhs[:, : len(k)] += damp * w[:, k]
    sol = torch.linalg.lstsq(m, rhs.T).solution.T  # m is symmetric; lstsq copes with dead channels
    w_new = w.clone()
    w_new[:, k] = sol[:, : len(k)]
    return w_new, (sol[:, -1] if with_bias else None)


def _place_bias(mod, owner, bias, bn, b_new, can_bias, updates, biases, notes, keep_out=None) -> None:
    if b_new is None or not torch.is_tensor(b_new):
        return
    if bias is not None:
        updates[f"{owner}.bias"] = b_new.to(bias.dtype)
    elif bn is not None:  # BN(x + d) with running mean m equals BN(x) with running mean m - d
        rm = bn.running_mean
        updates[f"{bn.fqn}.running_mean"] = (rm.detach().double() - b_new).to(rm.dtype)
    elif can_bias:  # the new bias is not in the plan: give it the output rows the plan keeps
        out_dim = 1 if mod.weight.dim() == 2 and not isinstance(mod, nn.Linear) else 0
        rows = keep_out.get(out_dim) if keep_out else None
        biases[owner] = (b_new if rows is None else b_new[torch.as_tensor(rows)]).to(mod.weight.dtype)
    else:
        notes.append(f"{owner} has no bias and its HF config declares none: what removed inputs contributed "
                     f"on average is lost there")


@dataclass(frozen=True)
class _BN:
    fqn: str
    running_mean: torch.Tensor


def _batch_norms_after(groups: Groups) -> dict[str, _BN]:
    """Weight FQN -> the BatchNorm that alone reads the conv/linear using it, from one walk of the
    traced graph."""
    traced = groups.traced
    fqn_of, out = traced.tensor_fqn, {}
    for node in traced.graph.nodes:
        if node.op != "call_function" or len(node.args) < 2 or len(node.users) != 1:
            continue
        weight = fqn_of.get(getattr(node.args[1], "name", None))
        user = next(iter(node.users))
        if weight is None or "batch_norm" not in getattr(user.target, "__name__", "") or len(user.args) < 4:
            continue
        owner = fqn_of.get(getattr(user.args[3], "name", None), "").rpartition(".")[0]
        mod = traced.model.get_submodule(owner) if owner else None
        if isinstance(mod, _BatchNorm) and mod.running_mean is not None:
            out[weight] = _BN(owner, mod.running_mean)
    return out


def compensate_(model: nn.Module, plan: Plan, stats: Stats, groups: Groups, method: str = "mean",
                ridge: float | None = None) -> Compensation:
    """Fold what ``plan`` removes into what it keeps, in place. Call it on the model the plan is about
    to be applied to, before ``apply_plan_`` (the removed columns are read here); ``shrink(...,
    compensate=...)`` does both, and rolls both back if surgery fails.
    """
    comp = compensation(model, plan, groups, stats, method, ridge)
    comp.apply_(model)
    return comp
