"""What surgery proves about a plan's values, plan by plan: which plans the value check of
``verify`` can judge (exact groups, nothing compensated), their exact part when inexact groups ride
along, the report's line on what was proved, and the bisection to the group whose width the code
misreads."""
from __future__ import annotations

from typing import Any

from torch import nn

from ..errors import SurgeryError
from ..inputs import Inputs
from ..trace import check_runs, is_meta
from .verify import zeroed_outputs


def checkable(plan: Any, groups: Any, compensation: Any) -> list[tuple[Any, list[int]]] | None:
    """The (group, units) a plan removes when its result is checkable against a zeroed original:
    no compensation, no whole blocks, and every removed group exact. None otherwise."""
    if _beyond_check(plan, compensation) or not plan.removed:
        return None
    chosen = _removed(plan, groups)
    return chosen if all(g is not None and g.inexact is None for g, _ in chosen) else None


def _beyond_check(plan: Any, compensation: Any) -> str | None:
    """Why no zeroed original can stand for the pruned model, whatever its groups; None if one can."""
    if compensation is not None:
        return "compensate= rewrites the kept weights"
    return "whole blocks are removed" if plan.removed_blocks else None


def _removed(plan: Any, groups: Any) -> list[tuple[Any, list[int]]]:
    """(group, units) for every group the plan removes units of (None for an id ``groups`` lacks)."""
    by_id = {g.id: g for g in groups}
    return [(by_id.get(i), list(u)) for i, u in sorted(plan.removed.items())]


def reference(model: nn.Module, chosen: list, inputs: Inputs) -> Any:
    """What the pruned model must output (``zeroed_outputs``); None on the meta device, where nothing
    runs. Inputs the unpruned model rejects (a wrong dtype passes export) are a TraceError."""
    if is_meta(model):
        return None
    try:
        return zeroed_outputs(model, chosen, inputs)
    except Exception:  # noqa: BLE001 - the unpruned model decides whether the inputs are at fault
        check_runs(model, inputs)
        return None  # the model runs, only not through functional_call: nothing to check against


def check_exact_part(model: nn.Module, groups: Any, plan: Any, compensation: Any,
                     inputs: Inputs) -> tuple[bool, tuple[list, SurgeryError] | None]:
    """For a plan that also cuts inexact groups (a transformer's hidden width under its norms), or
    whose kept weights ``compensation`` rewrites: apply only its exact groups, uncompensated, to a
    copy sharing the model's tensors and check those (code that misreads a pruned width misreads it
    whatever the weights). Returns (whether they were checked, and (the exact part, the error) when
    the code misreads a width there, else None). The copy is dropped either way."""
    if plan.removed_blocks:
        return False, None
    part = [(g, u) for g, u in _removed(plan, groups) if g is not None and g.inexact is None]
    expected = reference(model, part, inputs) if part else None
    if expected is None:
        return False, None
    from ..plan import plan_from_units  # the plan stage imports surgery
    from .core import apply_checked_
    from .tensors import shared_copy

    sub = plan_from_units(model, part, plan.config, groups)
    # parameters are shared, never written (slicing makes new tensors; the forward is in eval mode)
    trial, mine = shared_copy(model, set(sub.keep) | {n for n, _ in model.named_parameters(remove_duplicate=False)})
    try:
        apply_checked_(trial, sub, inputs, None, mine, expected, trial=True)
    except SurgeryError as err:
        return True, ((part, err) if getattr(err, "values", None) is not None else None)
    return True, None


def value_note(plan: Any, groups: Any, compensation: Any, checked: bool) -> str | None:
    """The report's line on what surgery proved of the pruned values: ``checked`` says whether the
    exact groups were compared with the zeroed original (all of the plan's, or its exact part)."""
    removed = [g for g, _ in _removed(plan, groups) if g is not None]
    if not removed and not plan.removed_blocks:
        return None
    why = _beyond_check(plan, compensation)
    inexact = [g for g in removed if g.inexact is not None]
    if compensation is not None and checked and not plan.removed_blocks:
        return ("values checked before compensation: without it the pruned model's outputs equal the original's "
                "with the removed units' weights zeroed" + (f" for {len(removed) - len(inexact)} of {len(removed)} "
                "pruned groups (the others inexact)" if inexact else "") + "; compensate= then rewrote the kept weights")
    if why is None and not checked:
        why = ("every pruned group is inexact (e.g. " + inexact[0].inexact + ")" if len(inexact) == len(removed)
               else "no reference: the zeroed model did not cut the removed units off, could not run, or is on "
                    "the meta device")
    if why is not None:
        return f"values not checked ({why}): the pruned model was checked for output shapes only"
    if not inexact:
        return ("values checked: the pruned model's outputs equal the original's with the removed units' "
                "weights zeroed")
    rest = "the other one is" if len(inexact) == 1 else f"the other {len(inexact)} are"
    return (f"values checked for {len(removed) - len(inexact)} of {len(removed)} pruned groups; {rest} inexact "
            f"(e.g. {inexact[0].module or '<root>'}: {inexact[0].inexact}), so only output shapes were checked there")


def misread_group(model: nn.Module, groups: Any, chosen: list[tuple[Any, list[int]]], inputs: Inputs,
                  values: bool = True) -> Any:
    """One group whose removal alone fails the value check (``values``) or breaks the forward (not
    ``values``: the code reads its width in a branch or a shape the graph fixed), found by halving
    ``chosen`` on copies of ``model`` (only after the check failed); None when no single group
    does (code reading a sum of widths, say)."""
    while len(chosen) > 1:
        half = chosen[: len(chosen) // 2]
        chosen = half if _misread(model, groups, half, inputs, values) else chosen[len(chosen) // 2:]
    return chosen[0][0] if chosen and _misread(model, groups, chosen, inputs, values) else None


def removed_groups(plan: Any, groups: Any) -> list[tuple[Any, list[int]]]:
    """(group, units) of every group of ``groups`` the plan removes units of."""
    return [(g, u) for g, u in _removed(plan, groups) if g is not None]


def _misread(model: nn.Module, groups: Any, part: list[tuple[Any, list[int]]], inputs: Inputs, values: bool) -> bool:
    from ..plan import plan_from_units  # the plan stage imports surgery
    from .core import apply_checked_
    from .tensors import copy_model

    plan = plan_from_units(model, part, {}, groups)
    try:
        apply_checked_(copy_model(model), plan, inputs, expected=zeroed_outputs(model, part, inputs) if values else None)
    except SurgeryError as err:
        return not values or getattr(err, "values", None) is not None
    return False
