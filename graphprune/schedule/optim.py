"""Schedules, the optimizer: surgery replaces every sliced parameter by a new ``nn.Parameter``;
``remap_optimizer_`` puts the new ones into the optimizer's param groups and slices their state
(AdamW's exp_avg and exp_avg_sq, SGD's momentum, ...) with the plan's kept indices, so a kept
unit continues exactly where it was."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import OptimizerError
from ..plan import Plan


@dataclass(frozen=True, eq=False)
class ParamMap:
    """How one pruning step changed the parameters: ``replaced`` holds (old, new, kept indices per
    dim; empty where only the values changed[, the old shape]), ``added`` (new parameter, a
    parameter of the same module) for biases compensation created. The old shape is given where
    the old parameter no longer has it (in-place surgery releases a sliced tensor's memory)."""

    replaced: tuple[tuple, ...]
    added: tuple[tuple[nn.Parameter, nn.Parameter | None], ...] = ()


def snapshot(model: nn.Module) -> dict[str, tuple[nn.Parameter, tuple[int, ...]]]:
    """The model's parameters by name with their shapes now (surgery may empty a sliced one)."""
    return {n: (p, tuple(p.shape)) for n, p in model.named_parameters(remove_duplicate=False)}


def param_map(before: dict[str, nn.Parameter], model: nn.Module, plan: Plan) -> ParamMap:
    """Pair the parameters ``snapshot(model)`` saw before ``plan`` was applied with what it holds now."""
    after = {n: p for n, (p, _) in snapshot(model).items()}
    keep_of = {id(before[f][0]): dims for f, dims in plan.keep.items() if f in before}
    replaced, seen = [], set()
    for name, (old, shape) in before.items():
        new = after.get(name)
        if new is not None and new is not old and id(old) not in seen:
            seen.add(id(old))
            replaced.append((old, new, keep_of.get(id(old), {}), shape))
    added = [(p, _sibling(after, name)) for name, p in after.items() if name not in before]
    return ParamMap(tuple(replaced), tuple(added))


def _sibling(params: dict[str, nn.Parameter], name: str) -> nn.Parameter | None:
    owner = name.rpartition(".")[0]
    return next((p for n, p in params.items() if n.rpartition(".")[0] == owner and n != name), None)


def check_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module) -> None:
    """Every parameter the optimizer updates must be one of ``model``'s, and its state either a scalar
    or shaped like the parameter (the only layout that can be sliced with it)."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise OptimizerError(f"optimizer={optimizer!r} is not a torch.optim.Optimizer; pass the one your training "
                             f"loop steps, e.g. torch.optim.AdamW(model.parameters())")
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    for i, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            if id(p) not in names:
                raise OptimizerError(
                    f"{type(optimizer).__name__} param group {i} holds a {tuple(p.shape)} tensor that is not a "
                    f"parameter of this {type(model).__qualname__}; build the optimizer from the model being "
                    f"pruned (shrink returns a copy unless inplace=True): torch.optim.AdamW(model.parameters())")
            for key, value in optimizer.state.get(p, {}).items():
                if torch.is_tensor(value) and value.numel() > 1 and value.shape != p.shape:
                    raise OptimizerError(
                        f"{type(optimizer).__name__} keeps state {key!r} of {names[id(p)]} as {tuple(value.shape)}, "
                        f"not shaped like the parameter {tuple(p.shape)}, so it cannot be sliced with it; build a "
                        f"new optimizer after each pruner.step() instead of passing this one")


def remap_optimizer_(optimizer: torch.optim.Optimizer, params: ParamMap) -> torch.optim.Optimizer:
    """Swap old parameters for new ones in ``optimizer`` and slice their state (and ``.grad``);
    returns the optimizer. New biases join the param group of their module's other parameters.

    >>> lin = nn.Linear(3, 2)
    >>> opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9)
    >>> lin(torch.ones(1, 3)).sum().backward(); opt.step()
    >>> new = nn.Parameter(lin.weight.detach()[:, [0, 2]].clone())
    >>> _ = remap_optimizer_(opt, ParamMap(((lin.weight, new, {1: [0, 2]}),)))
    >>> opt.state[new]["momentum_buffer"].shape
    torch.Size([2, 2])
    """
    swap = {id(old): new for old, new, *_ in params.replaced}
    for group in optimizer.param_groups:
        group["params"] = [swap.get(id(p), p) for p in group["params"]]
    for old, new, keep, *shape in params.replaced:
        was = shape[0] if shape else tuple(old.shape)
        state = optimizer.state.pop(old, None)
        if state is not None:
            optimizer.state[new] = {k: _sliced(v, was, keep) for k, v in state.items()}
        if old.grad is not None and new.grad is None:
            new.grad = _sliced(old.grad, was, keep)
    for new, sibling in params.added:
        group = next((g for g in optimizer.param_groups if any(p is sibling for p in g["params"])), None)
        if group is not None:
            group["params"].append(new)
    return optimizer


def _sliced(value: Any, shape: tuple[int, ...], keep: dict[int, list[int]]) -> Any:
    if not torch.is_tensor(value) or tuple(value.shape) != shape:
        return value  # a step count, a scalar learning rate
    for d, ix in keep.items():
        value = value.index_select(d, torch.as_tensor(ix, dtype=torch.long, device=value.device))
    return value.clone()
