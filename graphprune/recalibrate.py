"""After surgery: re-estimate BatchNorm running statistics on calibration data.

Removing channels changes what every later layer computes, so the running means and variances a
BatchNorm measured on the unpruned model no longer normalise what it now sees; re-estimating them
on a few hundred samples recovers much of what pruning cost a CNN (EagleEye's "adaptive BN").
``shrink(..., recalibrate_bn=True)`` does it after pruning, and after every round with ``steps > 1``
so that later rounds score a model whose statistics fit.
"""
from __future__ import annotations

import itertools
from typing import Any, Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .config import ShrinkConfig
from .errors import CalibrationError
from .inputs import eval_mode, normalize_inputs


def batch_norms(model: nn.Module) -> list[_BatchNorm]:
    """The BatchNorm layers that keep running statistics (the ones there is anything to re-estimate in)."""
    return [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recalibrate_bn_(model: nn.Module, batches: Iterable[Any], max_batches: int | None = None) -> nn.Module:
    """Re-estimate every BatchNorm's running statistics on ``batches`` (a cumulative average, as if
    trained on them), the rest of the model in eval mode. Returns ``model``.

    >>> m = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4))
    >>> _ = recalibrate_bn_(m, [torch.randn(8, 3, 5, 5) + 2])
    >>> bool(m[1].running_mean.abs().sum() > 0), m[1].training
    (True, True)
    """
    batches = iter(batches)
    first = next(batches, None)
    if first is None:
        raise CalibrationError("recalibrate_bn_ got no batches; the running statistics were left as they were")
    bns = batch_norms(model)
    saved = [(bn, bn.momentum) for bn in bns]
    try:
        with eval_mode(model):  # every module's own mode comes back afterwards
            for bn in bns:
                bn.reset_running_stats()
                bn.momentum = None  # cumulative moving average: every batch counts the same
                bn.train()
            for batch in itertools.islice(itertools.chain([first], batches), max_batches):
                args, kwargs = normalize_inputs(batch)
                model(*args, **kwargs)
    finally:
        for bn, momentum in saved:
            bn.momentum = momentum
    return model


def check_recalibration(config: ShrinkConfig, calibration: Any) -> None:
    """Refuse ``recalibrate_bn=True`` without data before anything is traced or pruned."""
    if config.recalibrate_bn and calibration is None:
        raise CalibrationError("recalibrate_bn=True re-estimates BatchNorm statistics on calibration data; pass "
                               "calibration= (an iterable of input batches, e.g. a few hundred samples of your data)")


def batch_norm_after_(model: nn.Module, config: ShrinkConfig, batches: Iterable[Any] | None) -> str | None:
    """What ``shrink`` does about BatchNorm statistics after a surgery, as the report's note:
    re-estimates them with ``recalibrate_bn=True``; otherwise, where data was given and the model
    has BatchNorms, points at the option; None where there is nothing to say."""
    if config.recalibrate_bn:
        return recalibrate_pruned_(model, config, batches)
    n = len(batch_norms(model)) if batches is not None else 0
    return (f"{n} BatchNorm layers keep the statistics the unpruned model had; recalibrate_bn=True re-estimates "
            f"them on the calibration data") if n else None


def recalibrate_pruned_(model: nn.Module, config: ShrinkConfig, batches: Iterable[Any]) -> str:
    """``recalibrate_bn_`` for a model ``shrink`` has just pruned; returns the report's note. If it
    fails, the BatchNorm statistics are put back as they were and ``CalibrationError`` says so."""
    bns = batch_norms(model)
    if not bns:
        return "recalibrate_bn=True: the model has no BatchNorm with running statistics; nothing re-estimated"
    # recalibrate_bn_ resets and refills these tensors in place, so copying the values back restores them
    saved = [(t, t.clone()) for bn in bns for t in (bn.running_mean, bn.running_var, bn.num_batches_tracked)
             if t is not None]
    try:
        recalibrate_bn_(model, batches, config.max_batches)
    except BaseException as err:  # Ctrl-C too: no BatchNorm is left half re-estimated
        for t, value in saved:
            t.copy_(value)
        if not isinstance(err, Exception):
            raise
        raise CalibrationError(f"re-estimating BatchNorm statistics on the calibration batches failed "
                               f"({type(err).__name__}: {err}); the model is pruned and its BatchNorm statistics "
                               f"are as they were; pass recalibrate_bn=False or batches its forward takes") from err
    return f"BatchNorm running statistics of {len(bns)} layers re-estimated on the calibration batches"
