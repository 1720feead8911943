"""Stage 3b, calibrate: one streaming pass over the user's batches that collects what data-aware
criteria and compensation read: per-channel moments of what every consuming module reads, and
gradient x weight per unit. Only running sums are kept, never the activations themselves.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import nn

from .block_stats import BLOCK_NEEDS, BlockProbe
from .config import check_callable
from .drift import DriftHooks, Reference
from .errors import CalibrationError
from .grads import PROJECTION, Grads, loss_of, requires_grad
from .groups import Groups
from .inputs import check_batches, first_tensor, is_causal_lm, normalize_inputs
from .moments import InputHooks, InputStats, consumer_of, readonly
from .trace import _describe, _eval_mode, _first_line

# channel moments; full second moments (lstsq); gradients; per block: turn and cost of skipping it
NEEDS = ("inputs", "gram", "grads", *BLOCK_NEEDS)


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
    # against a reference model: group id -> per unit, mean over batches of the signed sum of
    # w * d(e . y)/dw, e the output's drift from the reference's (held fixed)
    taylor_drift: Mapping[int, np.ndarray] = field(default_factory=dict)
    block_turn: Mapping[str, float] = field(default_factory=dict)  # block FQN -> mean 1 - cos(input, output)
    block_cost: Mapping[str, float] = field(default_factory=dict)  # block FQN -> loss increase when skipped
    batches: int = 0
    seconds: float = 0.0
    loss: str = ""
    needs: tuple[str, ...] = ()

    def __repr__(self) -> str:
        return (f"Stats(batches={self.batches}, needs={self.needs}, modules={len(self.inputs)}, "
                f"loss={self.loss!r}, seconds={self.seconds:.2f})")


def calibrate(model: nn.Module, groups: Groups | None, batches: Iterable[Any], *, needs: Iterable[str] = ("inputs",),
              loss_fn: Callable[[Any, Any], torch.Tensor] | None = None, max_batches: int | None = None,
              progress: bool | None = None, seed: int = 0, modules: Mapping[str, int] | None = None,
              blocks: Any = None, reference: Reference | None = None) -> Stats:
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

    ``reference`` (a ``graphprune.drift.Reference``) runs another model on every batch too, and adds to
    each consumer's ``InputStats`` how far its output has drifted from the reference module's of the
    same name (iterative rounds pass the original model, so the pruned one is judged against it).

    >>> from torch import nn
    >>> from graphprune.groups import find_groups
    >>> m = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> stats = calibrate(m, find_groups(m, torch.randn(2, 4)), [torch.randn(16, 4) for _ in range(3)])
    >>> stats.batches, stats.inputs["2"].count, stats.inputs["2"].sum.shape
    (3, 48, (8,))
    """
    needs = _check_needs(needs)
    check_batches(batches)
    check_callable("loss_fn", loss_fn, "(output, batch) -> loss")
    if groups is None and "grads" in needs:
        raise CalibrationError("needs=('grads',) reduces gradients onto groups: pass groups=find_groups(model)")
    consumers = {c[0]: c[1] for g in (groups.prunable if groups is not None else ()) for m in g.members
                 if (c := consumer_of(model, m))}
    consumers.update(modules or {})
    start, count, loss_name = time.perf_counter(), 0, ""
    hooks = InputHooks(model, consumers, "gram" in needs) if {"inputs", "gram"} & set(needs) else None
    grads = Grads(model, groups) if "grads" in needs else None
    probe = _probe(model, blocks, needs, loss_fn)
    drift = DriftHooks(model, reference, consumers if hooks else {}) if reference is not None else None
    try:
        with _eval_mode(model), requires_grad(grads.params if grads else []):
            for i, batch in enumerate(_bar(batches, max_batches, progress)):
                if drift is not None:
                    drift.before(*normalize_inputs(batch))
                if hooks is not None:
                    hooks.batch = i
                loss_name = _step(model, batch, i, grads, loss_fn, seed, drift)
                if probe is not None:
                    probe.after(batch, loss_fn)
                count += 1
    finally:
        for h in (hooks, probe, drift):
            if h is not None:
                h.remove()
    if count == 0:
        raise CalibrationError("calibration= yielded no batches; pass an iterable (a list, a generator or a "
                               "DataLoader) of Tensors, tuples of positional args or dicts of keyword args")
    return Stats(inputs=MappingProxyType(_with_drift(hooks.result(), drift) if hooks else {}),
                 taylor=MappingProxyType({k: readonly(v / count) for k, v in grads.taylor.items()} if grads else {}),
                 fisher=MappingProxyType({k: readonly(v / count) for k, v in grads.fisher.items()} if grads else {}),
                 taylor_drift=MappingProxyType({k: readonly(v / count) for k, v in grads.drift.items()} if grads else {}),
                 **_block_fields(probe), batches=count, seconds=time.perf_counter() - start, loss=loss_name,
                 needs=needs)


def _with_drift(inputs: dict[str, InputStats], drift: DriftHooks | None) -> dict[str, InputStats]:
    for fqn, (cross, total) in (drift.result() if drift else {}).items():
        if fqn in inputs:
            inputs[fqn] = replace(inputs[fqn], drift=readonly(cross.numpy()), drift_sum=readonly(total.numpy()))
    return inputs


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


def _step(model: nn.Module, batch: Any, i: int, grads: Grads | None, loss_fn: Any, seed: int,
          drift: DriftHooks | None = None) -> str:
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
        loss, name = loss_of(out, batch, loss_fn, seed + i)
        # the random projection stands for the output itself: against a reference, also how each unit
        # moves the output's distance to the reference's (a task loss is its own judge)
        near = drift.output_loss(first_tensor(out)) if drift is not None and name == PROJECTION else None
        grads.add(torch.autograd.grad(loss, grads.params, allow_unused=True, retain_graph=near is not None),
                  torch.autograd.grad(near, grads.params, allow_unused=True) if near is not None else None)
    return name


def _forward(model: nn.Module, args: tuple, kwargs: dict, i: int) -> Any:
    try:
        return model(*args, **kwargs)
    except Exception as err:  # noqa: BLE001 - any failure here means the batch does not fit
        raise CalibrationError(
            f"calibration batch {i} ({_describe((args, kwargs))}) does not fit {type(model).__qualname__}.forward: "
            f"{type(err).__name__}: {_first_line(err)}; pass batches the forward accepts (like example_inputs); "
            f"for (inputs, labels) pairs pass the inputs alone and a loss_fn=") from err


def _bar(batches: Iterable[Any], total: int | None, progress: bool | None) -> Iterable[Any]:
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 1):
        raise CalibrationError(f"max_batches={total!r} must be a whole number >= 1 (or None for every batch)")
    from tqdm.auto import tqdm

    if hasattr(batches, "__len__"):
        total = len(batches) if total is None else min(total, len(batches))  # type: ignore[arg-type]
    # progress=None: a bar only on a terminal (tqdm's own rule), so logs and CI stay clean
    return tqdm(itertools.islice(batches, total), total=total, desc="graphprune calibrate", unit="batch",
                disable=None if progress is None else not progress, leave=False)
