"""Surgery mechanics, the value check: when every group a plan cuts is exact, the pruned model must
compute what the original computes with the removed units' contribution zeroed (the project's
oracle, run on the real plan). A width the code reads as a number (``h / math.sqrt(h.shape[-1])``,
``if x.shape[1] == 16``) is a constant in the traced graph, so no rule sees it; this check does.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn
from torch.func import functional_call

from ..errors import SurgeryError
from ..inputs import Inputs, eval_mode, first_tensor, run_model

# float error of a pruned sum against the zeroed full one is far below these; a width misread by
# code moves outputs by whole percents (a quarter of the scale in the tests)
TOLERANCE = {torch.float16: 3e-2, torch.bfloat16: 3e-2}
DEFAULT_TOLERANCE = 1e-3


def checkable(plan: Any, groups: Any, compensation: Any) -> list[tuple[Any, list[int]]] | None:
    """The (group, units) a plan removes when its result is checkable against a zeroed original:
    no compensation, no whole blocks, and every removed group exact. None otherwise."""
    if compensation is not None or plan.removed_blocks or not plan.removed:
        return None
    by_id = {g.id: g for g in groups}
    chosen = [(by_id.get(i), list(u)) for i, u in sorted(plan.removed.items())]
    if any(g is None or g.inexact is not None for g, _ in chosen):
        return None
    return chosen


def zeroed_outputs(model: nn.Module, chosen: list[tuple[Any, list[int]]], inputs: Inputs) -> Any:
    """The model's outputs with the chosen units' input weights zeroed, or None when that zeroing
    does not cut the units off: scrambling the weights that produce them must then change nothing,
    and where it does (a weight used through an op no role reaches, such as ``w * s``) there is no
    reference to check against. Only the touched tensors are copied (``functional_call``)."""
    zeroed = _with_units(model, chosen, "in", lambda t, d, ix: t.index_fill_(d, ix, 0))
    if not zeroed or not _with_units(model, chosen, "out", lambda *_: None):
        return None  # nothing to zero, or no weight producing the units: nothing proves they are cut off
    scrambled = _with_units(model, chosen, "out", _scramble_, zeroed)
    expected = _call(model, zeroed, inputs)
    return expected if max_difference(expected, _call(model, scrambled, inputs)) <= DEFAULT_TOLERANCE else None


def _with_units(model: nn.Module, chosen: list, role: str, edit_: Any, tensors: dict | None = None) -> dict:
    """``tensors`` plus copies of the parameters playing ``role`` for the chosen units, edited there."""
    own, tensors = dict(model.named_parameters()), dict(tensors or {})
    for g, units in chosen:
        for m in g.members:
            if role in m.roles and m.fqn in own:
                t = tensors.setdefault(m.fqn, own[m.fqn].detach().clone())
                edit_(t, m.dim, torch.as_tensor(m.indices[units].ravel(), device=t.device))
    return tensors


def _scramble_(t: torch.Tensor, dim: int, index: torch.Tensor) -> None:
    part = t.index_select(dim, index)
    noise = torch.randn(part.shape, generator=torch.Generator().manual_seed(0)).to(part)
    t.index_copy_(dim, index, part + noise * (t.float().std().nan_to_num(1.0).item() + 1e-3))


def _call(model: nn.Module, tensors: dict[str, torch.Tensor], inputs: Inputs) -> Any:
    args, kwargs = inputs
    with torch.no_grad(), eval_mode(model):
        return functional_call(model, tensors, tuple(args), dict(kwargs))


def check_values(model: nn.Module, inputs: Inputs, expected: Any) -> None:
    """Raise ``SurgeryError`` (``.values`` set) when the pruned outputs differ from ``expected``."""
    worst = max_difference(expected, run_model(model, inputs))
    dtype = first_tensor(expected).dtype
    if worst > TOLERANCE.get(dtype, DEFAULT_TOLERANCE):
        err = SurgeryError(
            f"the pruned model's output differs by {worst:.3g} of its scale from the original's with the removed "
            f"units zeroed, though every pruned group is exact: code reads a pruned width as a number "
            f"(x.shape[-1] or self.fc.out_features in arithmetic or an if), which the traced graph only holds "
            f"as a constant; the model was restored")
        err.values = worst
        raise err


def max_difference(expected: Any, got: Any) -> float:
    """The largest difference relative to each output's scale, over every floating output tensor
    (the main one always; others whose shape the pruning did not change, unlike a per-head cache)."""
    pairs = [(first_tensor(expected), first_tensor(got))]
    pairs += [(e, g) for e, g in zip(_floats(expected), _floats(got)) if e.shape == g.shape]
    return max(float((g.float() - e.float()).abs().max() / e.float().abs().max().clamp_min(1e-12))
               for e, g in pairs if e.shape == g.shape)


def _floats(out: Any) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]


def misread_group(model: nn.Module, groups: Any, chosen: list[tuple[Any, list[int]]], inputs: Inputs) -> Any:
    """One group whose removal alone fails the value check, found by halving ``chosen`` on copies
    of ``model`` (only after the check failed); None when no single group does (code reading a sum
    of widths, say)."""
    while len(chosen) > 1:
        half = chosen[: len(chosen) // 2]
        chosen = half if _misread(model, groups, half, inputs) else chosen[len(chosen) // 2:]
    return chosen[0][0] if chosen and _misread(model, groups, chosen, inputs) else None


def _misread(model: nn.Module, groups: Any, part: list[tuple[Any, list[int]]], inputs: Inputs) -> bool:
    from ..plan import plan_from_units  # the plan stage imports surgery
    from .core import apply_checked_
    from .tensors import copy_model

    plan = plan_from_units(model, part, {}, groups)
    try:
        apply_checked_(copy_model(model), plan, inputs, expected=zeroed_outputs(model, part, inputs))
    except SurgeryError as err:
        return getattr(err, "values", None) is not None
    return False
