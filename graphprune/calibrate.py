"""Stage 3b, calibrate: one streaming pass over the user's batches that collects what data-aware
criteria and compensation read: per-channel moments of what every consuming module reads, and
gradient x weight per unit. Only running sums are kept, never the activations themselves.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from .block_stats import BLOCK_NEEDS, BlockProbe
from .errors import CalibrationError
from .groups import Groups, Member
from .inputs import first_tensor, is_causal_lm, normalize_inputs
from .trace import _describe, _eval_mode, _first_line

# channel moments; full second moments (lstsq); gradients; per block: turn and cost of skipping it
NEEDS = ("inputs", "gram", "grads", *BLOCK_NEEDS)


def _frozen(a: np.ndarray) -> np.ndarray:
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


@dataclass(frozen=True, eq=False)
class Stats:
    """What one calibration pass measured; read-only, so criteria and compensation can share it.

    ``inputs``: consuming module FQN -> ``InputStats``. ``taylor``: group id -> per unit, the mean
    over batches of |sum of w * dL/dw| over the unit's slices. ``fisher``: (parameter FQN, dim) ->
    per index, the mean over batches of the summed (w * dL/dw)^2 (a diagonal Fisher times w^2).
    """

    inputs: Mapping[str, InputStats]
    taylor: Mapping[int, np.ndarray] = field(default_factory=dict)
    fisher: Mapping[tuple[str, int], np.ndarray] = field(default_factory=dict)
    block_turn: Mapping[str, float] = field(default_factory=dict)  # block FQN -> mean 1 - cos(input, output)
    block_cost: Mapping[str, float] = field(default_factory=dict)  # block FQN -> loss increase when skipped
    batches: int = 0
    seconds: float = 0.0
    loss: str = ""
    needs: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return (f"Stats(batches={self.batches}, needs={self.needs}, modules={len(self.inputs)}, "
                f"loss={self.loss!r}, seconds={self.seconds:.2f})")


def consumer_of(model: nn.Module, member: Member) -> tuple[str, int] | None:
    """(module FQN, channel dim of its input) when ``member`` is the input side of a leaf module that
    multiplies its first input by that weight (Linear, GPT-2's Conv1D, an ungrouped conv), so input
    channel j meets index j of ``member.dim``; None where no such module runs (bare parameters)."""
    if "in" not in member.roles or not member.fqn.endswith(".weight"):
        return None
    fqn = member.fqn[: -len(".weight")]
    try:
        mod = model.get_submodule(fqn)
    except AttributeError:
        return None
    if next(mod.children(), None) is not None:
        return None
    if isinstance(mod, _ConvNd):
        return (fqn, 1) if mod.groups == 1 and not mod.transposed and member.dim == 1 else None
    weight = getattr(mod, "weight", None)
    return (fqn, -1) if isinstance(weight, torch.Tensor) and weight.dim() == 2 else None


class _Inputs:
    """Forward pre-hooks that add each consumer's input to running sums (float64, on the CPU)."""

    def __init__(self, model: nn.Module, consumers: dict[str, int], gram: bool):
        self.dims, self.gram = consumers, gram
        self.acc: dict[str, list] = {}
        self.handles = [model.get_submodule(f).register_forward_pre_hook(self._hook(f)) for f in consumers]

    def _hook(self, fqn: str) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            x = next((a for a in args if isinstance(a, torch.Tensor)), None)
            if x is None or not x.is_floating_point() or x.dim() < 2:
                return
            rows = x.detach().movedim(self.dims[fqn], -1).reshape(-1, x.shape[self.dims[fqn]]).double().cpu()
            acc = self.acc.setdefault(fqn, [0, 0.0, 0.0, 0.0])
            acc[0] += rows.shape[0]
            acc[1] = acc[1] + rows.sum(0)
            acc[2] = acc[2] + rows.pow(2).sum(0)
            if self.gram:
                acc[3] = acc[3] + rows.T @ rows
        return hook

    def result(self) -> dict[str, InputStats]:
        return {f: InputStats(n, _frozen(s.numpy()), _frozen(q.numpy()), _frozen(g.numpy()) if self.gram else None)
                for f, (n, s, q, g) in sorted(self.acc.items())}

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class _Grads:
    """Per batch, w * dL/dw reduced onto every member dim: |unit sums| (Taylor) and squares (Fisher)."""

    def __init__(self, model: nn.Module, groups: Groups):
        params = dict(model.named_parameters())
        self.groups = [g for g in groups.prunable if any(m.fqn in params for m in g.members)]
        self.names = sorted({m.fqn for g in self.groups for m in g.members if m.fqn in params})
        self.params = [params[n] for n in self.names]
        self.dims = {n: sorted({m.dim for g in self.groups for m in g.members if m.fqn == n}) for n in self.names}
        self.taylor = {g.id: np.zeros(g.width) for g in self.groups}
        self.fisher: dict[tuple[str, int], np.ndarray] = {}

    def add(self, grads: tuple[torch.Tensor | None, ...]) -> None:
        signed: dict[tuple[str, int], np.ndarray] = {}
        for name, p, g in zip(self.names, self.params, grads):
            wg = (p.detach() * g).double() if g is not None else torch.zeros_like(p, dtype=torch.float64)
            for d in self.dims[name]:
                other = [i for i in range(wg.dim()) if i != d]
                signed[name, d] = (wg.sum(other) if other else wg).cpu().numpy()
                sq = (wg.pow(2).sum(other) if other else wg.pow(2)).cpu().numpy()
                self.fisher[name, d] = self.fisher.get((name, d), 0.0) + sq
        for gr in self.groups:
            units = sum(signed[m.fqn, m.dim][m.indices].sum(1) for m in gr.members if (m.fqn, m.dim) in signed)
            self.taylor[gr.id] += np.abs(units)


def calibrate(model: nn.Module, groups: Groups | None, batches: Iterable[Any], *, needs: Iterable[str] = ("inputs",),
              loss_fn: Callable[[Any, Any], torch.Tensor] | None = None, max_batches: int | None = None,
              progress: bool | None = None, seed: int = 0, modules: Mapping[str, int] | None = None,
              blocks: Any = None) -> Stats:
    """Run the model's own forward (and, for "grads", a backward) over ``batches`` and return ``Stats``.

    A batch is a Tensor, a tuple of positional args or a dict of keyword args (a ``DataLoader`` may
    yield them). Gradients come from ``loss_fn(output, batch)`` if given, else the model's own loss
    (an HF causal LM gets ``labels=input_ids``), else ``<output, r>`` for a fresh Gaussian ``r`` per
    batch, whose squared gradient averages to the squared first-order change of the output. The
    model's parameters, ``.grad``, modes and hooks are as they were afterwards. "blocks" and
    "bypass" measure the removable ``blocks`` (``graphprune.find_blocks``), see ``block_stats``.

    ``modules`` adds leaf modules (FQN -> channel dim of their first input) whose input moments to
    collect besides the groups' consumers; with ``groups=None`` only those are read ("inputs" and
    "gram" only: gradients are reduced onto groups), which is how ``sparsify_`` gets Wanda's norms.

    >>> from torch import nn
    >>> from graphprune.groups import find_groups
    >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> stats = calibrate(m, find_groups(m, torch.randn(2, 4)), [torch.randn(16, 4) for _ in range(3)])
    >>> stats.batches, stats.inputs["2"].count, stats.inputs["2"].sum.shape
    (3, 48, (8,))
    """
    needs = _check_needs(needs)
    if groups is None and "grads" in needs:
        raise CalibrationError("needs=('grads',) reduces gradients onto groups: pass groups=find_groups(model)")
    consumers = {c[0]: c[1] for g in (groups.prunable if groups is not None else ()) for m in g.members
                 if (c := consumer_of(model, m))}
    consumers.update(modules or {})
    start, count, loss_name = time.perf_counter(), 0, ""
    hooks = _Inputs(model, consumers, "gram" in needs) if {"inputs", "gram"} & set(needs) else None
    grads = _Grads(model, groups) if "grads" in needs else None
    probe = _probe(model, blocks, needs, loss_fn)
    try:
        with _eval_mode(model), _requires_grad(grads.params if grads else []):
            for i, batch in enumerate(_bar(batches, max_batches, progress)):
                loss_name = _step(model, batch, i, grads, loss_fn, seed)
                if probe is not None:
                    probe.after(batch, loss_fn)
                count += 1
    finally:
        for h in (hooks, probe):
            if h is not None:
                h.remove()
    if count == 0:
        raise CalibrationError("calibration= yielded no batches; pass an iterable (a list, a generator or a "
                               "DataLoader) of Tensors, tuples of positional args or dicts of keyword args")
    return Stats(inputs=MappingProxyType(hooks.result() if hooks else {}),
                 taylor=MappingProxyType({k: _frozen(v / count) for k, v in grads.taylor.items()} if grads else {}),
                 fisher=MappingProxyType({k: _frozen(v / count) for k, v in grads.fisher.items()} if grads else {}),
                 **_block_fields(probe), batches=count, seconds=time.perf_counter() - start, loss=loss_name,
                 needs=needs)


def _probe(model: nn.Module, blocks: Any, needs: tuple[str, ...], loss_fn: Any) -> BlockProbe | None:
    wanted = set(needs) & set(BLOCK_NEEDS)
    if not wanted:
        return None
    if blocks is None:
        raise CalibrationError(f"needs={sorted(wanted)} measure removable blocks; pass blocks=graphprune.find_blocks(model)")
    return BlockProbe(model, [b.fqn for b in blocks], wanted, loss_fn)


def _block_fields(probe: BlockProbe | None) -> dict[str, Any]:
    if probe is None:
        return {}
    turn, cost = probe.result()
    return {"block_turn": MappingProxyType(turn), "block_cost": MappingProxyType(cost)}


def _check_needs(needs: Iterable[str]) -> tuple[str, ...]:
    needs = set((needs,) if isinstance(needs, str) else needs)
    needs = tuple(sorted(needs | ({"inputs"} if "gram" in needs else set())))  # the gram's hooks see both
    unknown = set(needs) - set(NEEDS)
    if unknown:
        raise CalibrationError(f"needs={sorted(unknown)} are not statistics calibrate collects; choose from {NEEDS}")
    return needs


def _step(model: nn.Module, batch: Any, i: int, grads: _Grads | None, loss_fn: Any, seed: int) -> str:
    try:
        args, kwargs = normalize_inputs(batch)
    except Exception as err:  # noqa: BLE001 - the trace error names the accepted forms
        raise CalibrationError(f"calibration batch {i}: {err}") from err
    if grads is None:
        with torch.no_grad():
            _forward(model, args, kwargs, i)
        return ""
    if loss_fn is None and "labels" not in kwargs and "input_ids" in kwargs and is_causal_lm(model):
        kwargs = {**kwargs, "labels": kwargs["input_ids"]}
    with torch.enable_grad():
        out = _forward(model, args, kwargs, i)
        loss, name = _loss(out, batch, loss_fn, seed + i)
        grads.add(torch.autograd.grad(loss, grads.params, allow_unused=True))
    return name


def _forward(model: nn.Module, args: tuple, kwargs: dict, i: int) -> Any:
    try:
        return model(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - any failure here means the batch does not fit
        raise CalibrationError(
            f"calibration batch {i} ({_describe((args, kwargs))}) does not fit {type(model).__qualname__}.forward: "
            f"{type(err).__name__}: {_first_line(err)}; pass batches the forward accepts (like example_inputs); "
            f"for (inputs, labels) pairs pass the inputs alone and a loss_fn=") from err


def _loss(out: Any, batch: Any, loss_fn: Any, seed: int) -> tuple[torch.Tensor, str]:
    if loss_fn is not None:
        loss, name = loss_fn(out, batch), getattr(loss_fn, "__qualname__", "loss_fn")
    elif _own_loss(out) is not None:
        loss, name = _own_loss(out), "the model's own loss"
    else:
        y = first_tensor(out)
        r = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed)).to(y.device, y.dtype)
        loss, name = (y * r).sum(), "random projection of the output"
    if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise CalibrationError(f"the calibration loss ({name}) gave {shape}; it must be a scalar tensor that "
                               f"depends on the parameters (e.g. loss_fn=lambda out, batch: out.logits.mean())")
    return loss.reshape(()), name


def _own_loss(out: Any) -> torch.Tensor | None:
    loss = out.get("loss") if isinstance(out, dict) else getattr(out, "loss", None)
    return loss if isinstance(loss, torch.Tensor) else None


class _requires_grad:
    """Parameters need requires_grad for autograd.grad; the user's own flags come back afterwards."""

    def __init__(self, params: list[torch.Tensor]):
        self.flags = [(p, p.requires_grad) for p in params]

    def __enter__(self) -> None:
        for p, _ in self.flags:
            p.requires_grad_(True)

    def __exit__(self, *exc: Any) -> None:
        for p, flag in self.flags:
            p.requires_grad_(flag)


def _bar(batches: Iterable[Any], total: int | None, progress: bool | None) -> Iterable[Any]:
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 1):
        raise CalibrationError(f"max_batches={total!r} must be a whole number >= 1 (or None for every batch)")
    from tqdm.auto import tqdm

    if hasattr(batches, "__len__"):
        total = len(batches) if total is None else min(total, len(batches))  # type: ignore[arg-type]
    # progress=None: a bar only on a terminal (tqdm's own rule), so logs and CI stay clean
    return tqdm(itertools.islice(batches, total), total=total, desc="graphprune calibrate", unit="batch",
                disable=None if progress is None else not progress, leave=False)
