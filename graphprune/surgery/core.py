"""Surgery mechanics, the frame: the surgeon and slicer registries, and ``apply_plan_``, which runs the
surgeons in order (slice every tensor a plan names, set attributes, sync modules and config, remove
blocks) inside a snapshot a failure restores. ``tensors`` slices, ``checks`` tests the result,
``snapshot`` rolls back."""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

from ..attrs import set_attr
from ..compat import compiled_inner
from ..errors import SurgeryError
from ..plan import Plan
from ..registry import Registry
from ..validate import check_plan
from .checks import as_inputs, check_config, check_forward
from .config import hf_config, start_record_, sync_config_
from .snapshot import Snapshot
from .tensors import held_elsewhere, owner_of, slice_tensors, unshare_
from .verify import check_values

SLICERS = Registry("slicer")
SURGEONS = Registry("surgeon")
# the order surgeons run in: widths first (on the tensors as the plan names them), then the
# removal of whole modules, which renames what follows a dropped list entry
ORDER = ("slice", "set_attr", "set_config", "replace", "drop_entries")


def register_loaded() -> None:
    from .hf import register_loaded as hf  # late import: hf registers into SLICERS defined here
    hf()


def register_slicer(*types: type, override: bool = False) -> Callable:
    """Register ``fn(module)`` that fixes a module after its tensors were sliced, found along the MRO.

    >>> from torch import nn
    >>> @register_slicer(nn.Identity, override=True)
    ... def identity(module): pass
    """
    return SLICERS.register(*types, override=override)


def register_surgeon(op: str, override: bool = False) -> Callable:
    """Register ``fn(model, plan, surgery)`` applying every action of kind ``op`` (``graphprune.actions``).

    >>> "drop_entries" in SURGEONS
    True
    """
    return SURGEONS.register(op, override=override)


def apply_plan_(model: nn.Module, plan: Plan, example_inputs: Any = None, compensation: Any = None) -> nn.Module:
    """Prune ``model`` in place as ``plan`` says; with example inputs, check the forward still runs
    and gives the shapes it gave before. The plan is checked first (``graphprune.validate``: the
    model it was made for, its version, every index, coupled widths, attribute writes, and, where
    the model traces, that it drops whole units of the model's own groups, the same in every
    coupled tensor); a plan that does not fit raises ``PlanError`` with the model untouched. ``compensation``
    (``graphprune.compensate.compensation``) is written first, from the columns about to go. On any
    failure the model is restored (the compensation too) and SurgeryError raised; an interrupt
    (Ctrl-C, ``SystemExit``) restores it too and propagates as itself.

    Memory stays at about the model's size: each sliced tensor is replaced by a new one holding the
    kept indices and the old one's storage is released at once (its ``Parameter`` object is left
    empty; a rollback refills it from the removed slices, kept until the end).

    >>> import timm, graphprune
    >>> m = timm.create_model("resnet18")
    >>> plan = graphprune.make_plan(m, graphprune.find_groups(m), graphprune.ShrinkConfig(ratio=0.2))
    >>> apply_plan_(m, plan) is m
    True
    """
    inner = compiled_inner(model)
    if inner is not None:  # a torch.compile'd model: plans name what it wraps (as shrink makes them)
        apply_plan_(inner, plan, example_inputs, compensation)
        return model
    verify_plan(model, plan, example_inputs)
    return apply_checked_(model, plan, example_inputs, compensation)


def verify_plan(model: nn.Module, plan: Plan, example_inputs: Any = None) -> None:
    """Every check ``apply_plan_`` makes before it changes anything: ``validate.check_plan`` (the
    plan alone) and ``check_plan_units`` (against the model's own groups, where it traces). A plan
    may come from a file."""
    check_plan(model, plan)
    check_plan_units(model, plan, example_inputs)


def check_plan_units(model: nn.Module, plan: Plan, example_inputs: Any = None) -> bool:
    """``validate.check_units`` against the groups of ``model`` (a trace); False, with a warning,
    where the model does not trace (the plan's other checks still ran)."""
    import warnings

    from ..errors import GraphPruneError
    from ..groups import find_groups
    from ..inputs import Call
    from ..validate import named_tensors
    from ..blocks import find_blocks
    from ..validate.units import check_blocks, check_units

    if not plan.keep and not plan.structure:
        return True  # nothing sliced or removed: attribute writes have checks of their own
    try:
        groups = find_groups(model, None if example_inputs is None else Call(*as_inputs(example_inputs)))
    except GraphPruneError as err:
        warnings.warn(f"graphprune: the plan's kept indices were not checked against the model's coupled units, "
                      f"since the model does not trace ({str(err).splitlines()[0]}); pass example_inputs= to check")
        return False
    if plan.structure:
        check_blocks(plan, find_blocks(groups.traced))
    check_units(plan, groups, named_tensors(model))
    return True


def apply_plan_shared_(model: nn.Module, plan: Plan, example_inputs: Any = None, compensation: Any = None,
                       shared: frozenset[int] = frozenset(), expected: Any = None) -> nn.Module:
    """``apply_plan_`` for a model whose tensors with ids in ``shared`` belong to another model too
    (``shared_copy``): those are read, never released; every other sliced tensor is released as
    soon as its kept part exists, and only its removed part is kept for a rollback, so memory
    stays at about one model's size (plus one tensor) instead of two. ``expected``: the original's
    outputs with the removed units zeroed (``verify.zeroed_outputs``), which the pruned ones must equal."""
    check_plan(model, plan)  # before anything changes: a plan may come from a file
    return apply_checked_(model, plan, example_inputs, compensation, shared, expected)


def apply_checked_(model: nn.Module, plan: Plan, example_inputs: Any = None, compensation: Any = None,
                   shared: frozenset[int] = frozenset(), expected: Any = None, trial: bool = False) -> nn.Module:
    """``apply_plan_shared_`` for a plan already checked against ``model`` (``graphprune.record``
    checks the shape plans it builds from a saved record with ``check_record``). ``trial``: a
    throw-away copy run once in eval mode, which keeps reading the shared tensors instead of
    copying them (no second model in memory)."""
    extra = _compensated_modules(compensation)
    snapshot = Snapshot(model, plan, extra)
    try:
        if compensation is not None:
            compensation.apply_(model)
        start_record_(model)
        surgery = Surgery(snapshot, shared | held_elsewhere(model))
        for op in ORDER:
            SURGEONS[op](model, plan, surgery)
        if not trial:  # before any forward: a train-mode forward writes BN statistics in place
            unshare_(model, shared)
        if example_inputs is not None:
            outputs = check_forward(model, plan, example_inputs)
            if expected is not None:
                check_values(outputs, expected)
        if plan.config.get("uniform") and hf_config(model) is not None:
            check_config(model)
    except BaseException as err:  # Ctrl-C mid-surgery too: never hand back a half-sliced model
        snapshot.restore()
        if isinstance(err, SurgeryError) or not isinstance(err, Exception):
            raise
        raise SurgeryError(f"surgery failed and the model was restored: {type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}") from err
    return model


def _compensated_modules(compensation: Any) -> set[str]:
    if compensation is None:
        return set()
    return {owner_of(f)[0] for f in compensation.updates} | set(compensation.new_biases)


class Surgery:
    """What surgeons share: the snapshot a failure restores, and the tensors to keep whole."""

    def __init__(self, snapshot: "Snapshot", keep_whole: frozenset[int]):
        self.snapshot, self.keep_whole = snapshot, keep_whole


@register_surgeon("slice")
def _slice(model: nn.Module, plan: Plan, surgery: Surgery) -> None:
    slice_tensors(model, plan, surgery.snapshot.undo, surgery.keep_whole)


@register_surgeon("set_attr")
def _attrs(model: nn.Module, plan: Plan, surgery: Surgery) -> None:
    """Set the width attributes, then let each touched module's slicer fix the rest of its state."""
    _set_attrs(model, plan)
    register_loaded()  # transformers may have been imported after graphprune
    for mod in surgery.snapshot.modules:
        fix = SLICERS.lookup_mro(mod)
        if fix is not None:
            fix(mod)


@register_surgeon("set_config")
def _config(model: nn.Module, plan: Plan, surgery: Surgery) -> None:
    sync_config_(model, plan)


def _set_attrs(model: nn.Module, plan: Plan) -> None:
    for fqn, attrs in plan.attrs.items():
        mod = model.get_submodule(fqn)
        for attr, value in attrs.items():  # "config.num_attention_heads": the module's config
            set_attr(mod, attr, tuple(value) if isinstance(value, list) else value)


