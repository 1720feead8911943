"""Schedules, pruning inside the user's training loop: ``Pruner.step()`` removes the next slice of
the budget physically and remaps the optimizer; ``Pruner.regularizer()`` is a group-sparsity penalty."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from ..config import ShrinkConfig, check_callable
from ..errors import ConfigError, PlanError
from ..groups import find_groups
from ..inputs import reusable
from ..plan import Plan, count_params
from ..recalibrate import check_recalibration
from ..scores import warn_uncompensated
from ..sparsity.masks import check_no_masks
from ..trace import _eval_mode, check_module
from . import regularize
from .optim import ParamMap, check_optimizer, param_map, remap_optimizer_, snapshot
from .rounds import Round, baseline, notes_of, prune_round_


@dataclass(frozen=True, eq=False)
class PruneStep:
    """What one ``Pruner.step()`` did: where it left the model (fractions of the original) and how the
    parameters changed (``params``, what ``remap_optimizer_`` reads). ``notes`` are what a report
    would say about the step, e.g. that BatchNorm statistics still describe the unpruned model."""

    step: int
    params_ratio: float
    macs_ratio: float
    plan: Plan | None
    params: ParamMap
    notes: tuple[str, ...] = ()


class Pruner:
    """Prune ``model`` in place, by ``ratio`` of its parameters (or MACs) in ``steps`` slices, from
    inside your own training loop. Options are ``shrink``'s. Call ``step()`` after an optimizer step;
    pass the optimizer (here or to ``step``) and its param groups and state follow the surgery.

    Before training, the same object with a gradient criterion prunes at initialisation:
    ``Pruner(model, 0.5, scorer="taylor", calibration=batches, loss_fn=...).step()``.

    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 4))
    >>> opt = torch.optim.AdamW(model.parameters())
    >>> pruner = Pruner(model, 0.5, steps=2, example_inputs=torch.randn(2, 8), optimizer=opt)
    >>> for epoch in range(2):
    ...     loss = model(torch.randn(16, 8)).square().mean() + 1e-3 * pruner.regularizer()
    ...     opt.zero_grad(); loss.backward(); opt.step()
    ...     _ = pruner.step()
    >>> round(pruner.ratio, 2), model[0].out_features
    (0.5, 16)
    """

    def __init__(self, model: nn.Module, ratio: float, *, steps: int = 1, scorer: Any = None,
                 calibration: Iterable[Any] | None = None, loss_fn: Callable | None = None,
                 example_inputs: Any = None, optimizer: torch.optim.Optimizer | None = None, **options: Any):
        self.config = ShrinkConfig(ratio=ratio, scorer=scorer if isinstance(scorer, str) else "l2", steps=steps,
                                   **options)
        check_module(model)
        check_no_masks(model)
        check_callable("loss_fn", loss_fn, "(output, batch) -> loss")
        check_recalibration(self.config, calibration)
        warn_uncompensated(scorer or self.config.scorer, self.config.compensate)
        if optimizer is not None:
            check_optimizer(optimizer, model)
        self.model, self.optimizer, self.scorer, self.loss_fn = model, optimizer, scorer, loss_fn
        self.calibration = reusable(calibration, self.config.max_batches)
        self.base = baseline(model, example_inputs)
        self.history: list[Round] = []
        self._terms: dict[str, list] = {}

    @property
    def done(self) -> bool:
        return len(self.history) >= self.config.steps

    @property
    def ratio(self) -> float:
        """Fraction of the original model's parameters removed so far."""
        return 1 - count_params(self.model) / self.base.params

    def step(self, optimizer: torch.optim.Optimizer | None = None) -> PruneStep:
        """Prune the next slice (to ``ratio * k / steps`` of the original after step k) and remap the
        optimizer. The model is restored if the surgery fails; the optimizer is untouched then."""
        if self.done:
            raise PlanError(f"all {self.config.steps} steps of this Pruner are done (the model is at "
                            f"{self.ratio:.1%}); make a new Pruner to prune further")
        optimizer = optimizer or self.optimizer
        if optimizer is not None:
            check_optimizer(optimizer, self.model)
        before, k = snapshot(self.model), len(self.history) + 1
        done = prune_round_(self.model, self.base, self.config, k, self.scorer, self.calibration, self.loss_fn)
        params = param_map(before, self.model, done.plan) if done else ParamMap(())
        if optimizer is not None:
            remap_optimizer_(optimizer, params)
        self.history.append(Round(k, *self.base.fractions(self.model), done.plan if done else None))
        self._terms = {}
        notes = tuple(notes_of(done)) if done else ()
        return PruneStep(k, self.history[-1].params_ratio, self.history[-1].macs_ratio,
                         done.plan if done else None, params, notes)

    def regularizer(self, kind: str | None = None) -> torch.Tensor:
        """A penalty to add (scaled) to the loss: ``"group_lasso"`` (the default; every unit's L2
        norm over its parameter slices, summed, so whole units shrink together) or ``"bn_l1"`` (the
        L1 norm of the norm layers' scales over prunable channels, network slimming; the default
        with ``scorer="bn_scale"``). Differentiable; recomputed from the current parameters."""
        kind = kind or ("bn_l1" if self.config.scorer == "bn_scale" else "group_lasso")
        if kind not in regularize.KINDS:
            raise ConfigError(f"regularizer kind={kind!r} is not one of {regularize.KINDS}")
        if kind not in self._terms:
            with _eval_mode(self.model):
                groups = find_groups(self.model, self.base.example, strict=self.config.strict,
                                     read_source=self.config.read_source)
            live = regularize.live_groups(self.model, groups, self.config)
            self._terms[kind] = regularize.terms(self.model, live, kind)
        return regularize.penalty(self.model, self._terms[kind], kind)
