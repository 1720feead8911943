"""The one-call entry point: trace -> coupling -> groups -> scores -> plan -> surgery -> report."""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable, Iterable

from torch import nn

from .blocks import find_blocks
from .calibrate import Stats, calibrate
from .criteria.blocks import block_needs, score_blocks
from .depth import resolve_block_scorer
from .compat import compiled_inner, recompiled
from .compensate import Compensation, compensation
from .config import ShrinkConfig, check_callable, check_flags, check_options
from .groups import Groups, find_groups
from .inputs import check_batches, reusable
from .errors import CalibrationError, PlanError, SurgeryError
from .options import checked
from .plan import Plan, kind, make_plan, plan_from_units
from .progress import stages
from .recalibrate import batch_norm_after_, check_recalibration
from .report import Report, count_macs, make_report
from .scores import Scores, needs_of, reads_drift, score, warn_uncompensated
from .sparsity.masks import check_no_masks
from .surgery import apply_plan_shared_, shared_copy, unshare_
from .surgery.proof import check_exact_part, checkable, misread_group, reference, removed_groups, value_note
from .trace import check_module, check_runs, trace
from .surgery.tensors import copy_model


def shrink(model: nn.Module, ratio: float, *, example_inputs: Any = None, inplace: bool = False,
           return_report: bool = False, scorer: Any = None, calibration: Iterable[Any] | None = None,
           loss_fn: Callable[[Any, Any], Any] | None = None, submodules: Any = None, **options: Any) -> Any:
    """Remove ``ratio`` of ``model``'s parameters (or MACs with ``target="macs"``) by structural pruning.

    Returns a model of the same class (a pruned deep copy unless ``inplace=True``), or
    ``(model, report)`` with ``return_report=True``. Options are those of ``ShrinkConfig``.
    ``calibration``: batches (Tensor, tuple of args or dict of kwargs; a DataLoader yielding them)
    that data-aware criteria (``scorer="activation"``, ``"taylor"``, ...) and ``compensate=`` read,
    in one pass; ``loss_fn(output, batch)`` gives gradient criteria their loss (see ``calibrate``).
    ``steps=N`` removes the ratio in N rounds, re-tracing and re-scoring (and re-calibrating) the
    pruned model between them; ``report.rounds`` says where each round left it.
    ``submodules=("backbone",)``: prune only these submodules, each by ``ratio`` of its own
    parameters, traced on the inputs the model's forward gives them; the rest of the model is left
    as it is (a detector whose heads do not trace, see ``graphprune.partial``).

    >>> import timm, graphprune
    >>> small = graphprune.shrink(timm.create_model("resnet18"), 0.5)
    >>> type(small).__name__
    'ResNet'
    """
    inner = compiled_inner(model)
    if inner is not None:  # prune what torch.compile wraps: plans name its modules, data runs uncompiled
        out = shrink(inner, ratio, example_inputs=example_inputs, inplace=inplace, return_report=return_report,
                     scorer=scorer, calibration=calibration, loss_fn=loss_fn, submodules=submodules, **options)
        return (recompiled(model, out[0]), out[1]) if return_report else recompiled(model, out)
    check_module(model)
    check_flags(inplace=inplace, return_report=return_report)
    check_options(options, also=SHRINK_KEYWORDS)
    check_callable("loss_fn", loss_fn, "(output, batch) -> loss")
    if submodules is not None:
        from .partial import shrink_submodules
        return shrink_submodules(model, ratio, submodules, example_inputs=example_inputs, inplace=inplace,
                                 return_report=return_report, scorer=scorer, calibration=calibration,
                                 loss_fn=loss_fn, **options)
    config = ShrinkConfig(ratio=ratio, scorer=scorer if isinstance(scorer, str) else "l2", **options)
    config = checked(model, config)  # before tracing, which can take minutes
    check_no_masks(model)
    reads_data = needs_of(scorer or config.scorer)  # refuses an unknown name before tracing, data or not
    if calibration is None and reads_data:
        raise CalibrationError(f"scorer={getattr(scorer, '__qualname__', scorer or config.scorer)!r} reads "
                               f"calibration data; pass calibration= (an iterable of input batches)")
    if calibration is not None:
        check_batches(calibration)  # before tracing: a bare Tensor or a number is no list of batches
    check_recalibration(config, calibration)
    warn_uncompensated(scorer or config.scorer, config.compensate)
    if config.steps > 1 and config.ratio > 0:
        from .schedule import shrink_steps
        return shrink_steps(model, config, example_inputs=example_inputs, inplace=inplace, return_report=return_report,
                            scorer=scorer, calibration=calibration, loss_fn=loss_fn)
    if config.recalibrate_bn:  # read twice: by calibration and after surgery
        calibration = reusable(calibration, config.max_batches)
    with stages("shrink", ["trace", "groups", "calibrate", "score", "plan and surgery", "report"]) as step:
        step("trace")
        traced = trace(model, example_inputs)
        step("groups")
        groups = find_groups(traced, strict=config.strict, read_source=config.read_source)
        blocks = find_blocks(traced) if "layers" in config.prune else None
        step("calibrate")
        stats = _calibration(model, groups, config, scorer, calibration, loss_fn, blocks)
        step("score")
        scores = score(model, groups, scorer or config.scorer, stats, seed=config.seed)
        depth = (blocks, score_blocks(model, blocks, resolve_block_scorer(config, stats), stats)) if blocks else ()
        step("plan and surgery")
        # a copy shares the tensors a plan may slice until surgery has read them: no second full model
        target, shared = (model, frozenset()) if inplace else shared_copy(
            model, {m.fqn for g in groups.prunable for m in g.members})
        macs_before = count_macs(model, traced.inputs) if return_report else 0  # before an in-place model changes
        plan, comp, proof = _plan_and_apply_(target, model, groups, config, scores, traced.inputs, stats, shared,
                                             depth)
        unshare_(target, shared)
        bn_note = batch_norm_after_(target, config, calibration)
        if not return_report:
            return target
        step("report")
        left_out = tuple(i for i in plan.config.get("ignore", ()) if i not in config.ignore)
        report: Report = make_report(model, target, plan, groups, left_out, scores=scores, stats=stats,
                                     compensation=comp, macs_before=macs_before)
    notes = tuple(n for n in (proof, bn_note) if n)
    return target, dataclasses.replace(report, notes=(*report.notes, *notes))


SHRINK_KEYWORDS = ("example_inputs", "inplace", "return_report", "scorer", "calibration", "loss_fn")


def _calibration(model: nn.Module, groups: Groups, config: ShrinkConfig, scorer: Any, batches: Any,
                 loss_fn: Any, blocks: Any = None, reference: Any = None) -> Stats | None:
    """One calibration pass collecting what the criteria (of units and of blocks) and the
    compensation read (None: no data needed)."""
    needs = set(needs_of(scorer or config.scorer))
    if blocks and batches is not None:  # "auto" ranks blocks by their angular distance when data is given
        needs |= set(block_needs("angular" if config.block_scorer == "auto" else config.block_scorer))
    if config.compensate:
        needs |= {"inputs", "gram"} if config.compensate == "lstsq" else {"inputs"}
    if batches is None:
        if config.compensate:
            raise CalibrationError(f"compensate={config.compensate!r} reads calibration data; pass calibration= "
                                   f"(an iterable of input batches, e.g. a few hundred samples of your data)")
        return None  # a data-aware scorer says what to pass when score() runs
    if not needs:
        if config.recalibrate_bn:
            return None  # the data is for the BatchNorm statistics after surgery
        warnings.warn(f"graphprune: calibration= was given but scorer={config.scorer!r} and compensate=None read no "
                      f"data; pass scorer='activation' (or 'taylor', 'fluctuation', ...) to use it")
        return None
    # measuring drift runs the reference on every batch: only for a criterion that reads it
    reference = reference if reads_drift(scorer or config.scorer) else None
    return calibrate(model, groups, batches, needs=tuple(needs), loss_fn=loss_fn, max_batches=config.max_batches,
                     seed=config.seed, blocks=blocks, reference=reference)


MAX_RETRIES = 16


def _plan_and_apply_(target: nn.Module, model: nn.Module, groups: Any, config: ShrinkConfig, scores: Scores,
                     inputs: Any, stats: Stats | None = None, shared: frozenset[int] = frozenset(),
                     depth: tuple = ()) -> tuple[Plan, Compensation | None, str | None]:
    """Plan and prune; if the pruned forward breaks inside a module (its code derives a width from a
    constant or another tensor's shape, invisible in the traced graph), leave every module of that
    type unpruned and plan again. Surgery restores the model on each failure, so nothing half-done
    stays. Returns the plan, the compensation and the report's line on what the value check proved."""
    left_out: list[str] = []
    guessed: list[str] = []  # modules left out for their type's sake, taken back once a group explains the failure
    for _ in range(MAX_RETRIES):
        plan = _make_plan_noting(model, groups, config, scores, left_out, depth)
        comp = compensation(model, plan, groups, stats, config.compensate, config.ridge) if config.compensate else None
        if stats is not None:
            plan = dataclasses.replace(plan, config={**plan.config, "calibration": {
                "batches": stats.batches, "loss": stats.loss, "needs": list(stats.needs)}})
        chosen = checkable(plan, groups, comp)
        expected = reference(model, chosen, inputs) if chosen else None
        part_checked, misread = (False, None) if chosen else check_exact_part(model, groups, plan, comp, inputs)
        if misread is not None:  # inexact groups in the plan too: their exact part was checked alone
            config = _without_misread(model, groups, *misread, inputs, config)
            continue
        try:
            apply_plan_shared_(target, plan, inputs, comp, shared, expected)
            return plan, comp, value_note(plan, groups, comp, expected is not None or part_checked)
        except SurgeryError as err:
            if getattr(err, "values", None) is not None:
                config = _without_misread(model, groups, chosen, err, inputs, config)
                continue
            if hasattr(err, "module") and not left_out:
                check_runs(model, inputs)  # wrong example inputs fail the unpruned model too: say that
            if getattr(err, "module", None) == "":
                raise SurgeryError(f"{err} {_root_advice(model, groups, plan, inputs, config)}") from err
            culprits = _same_type(model, getattr(err, "module", None))
            if not culprits or set(culprits) <= set(config.ignore):
                config = _without_breaking(model, groups, plan, err, inputs, config, guessed)
                guessed, left_out = [], []
                continue
            warnings.warn(f"graphprune: {err}; leaving {len(culprits)} module(s) like {culprits[0]!r} unpruned")
            left_out.append(type(model.get_submodule(culprits[0])).__qualname__)
            guessed += [c for c in culprits if c not in config.ignore]
            config = dataclasses.replace(config, ignore=(*config.ignore, *culprits))
    raise SurgeryError(f"the pruned forward still fails after leaving {MAX_RETRIES} module types unpruned")


def _without_misread(model: nn.Module, groups: Any, chosen: list, err: SurgeryError, inputs: Any,
                     config: ShrinkConfig) -> ShrinkConfig:
    """``config`` leaving out the module of the group whose pruning the code misreads (found by
    halving the plan on copies), with a warning; ``err`` when no single group or module explains it."""
    group = misread_group(model, groups, chosen, inputs)
    fqn = group.members[0].fqn.rpartition(".")[0] if group is not None else ""
    if not fqn or fqn in config.ignore:
        raise SurgeryError(f"{err}. Find the group with graphprune.testing.assert_prune_matches(model) and leave "
                           f"its module out with ignore=, or compute the value from the tensor itself") from err
    warnings.warn(f"graphprune: the forward reads the width of {group.module or '<root>'} ({group.width} "
                  f"{group.unit}s) as a number: pruning it changes what the code computes, not just which units "
                  f"run; leaving {fqn!r} unpruned")
    return dataclasses.replace(config, ignore=(*config.ignore, fqn))


def _without_breaking(model: nn.Module, groups: Any, plan: Plan, err: SurgeryError, inputs: Any,
                      config: ShrinkConfig, guessed: list[str]) -> ShrinkConfig:
    """``config`` leaving out the module of the group whose pruning alone breaks the forward, where
    leaving the failing module's type unpruned did not help: the failure shows where a width
    arrives, not the module whose width the code reads (``if h.shape[-1] == 32:`` fails in the
    next layer once the branch is skipped). The ``guessed`` modules, left out for that type's
    sake, are pruned again. ``err`` when no single group or new module explains it."""
    group = misread_group(model, groups, removed_groups(plan, groups), inputs, values=False)
    fqn = group.members[0].fqn.rpartition(".")[0] if group is not None else ""
    if not fqn or fqn in config.ignore:
        said = str(err).removesuffix(" " + getattr(err, "fix", ""))  # its advice, ignore= that layer, did not help
        raise SurgeryError(f"{said} No single pruned group explains it (the code may read a sum of widths): find "
                           f"the groups it needs whole with graphprune.testing.assert_prune_matches(model) and "
                           f"leave their modules out with ignore=") from err
    warnings.warn(f"graphprune: the forward breaks when {group.module or '<root>'} ({group.width} {group.unit}s) is "
                  f"pruned (its width is read in a branch or a shape the graph fixed): leaving {fqn!r} unpruned")
    return dataclasses.replace(config, ignore=(*[i for i in config.ignore if i not in guessed], fqn))


def _make_plan_noting(model: nn.Module, groups: Any, config: ShrinkConfig, scores: Scores, left_out: list[str],
                      depth: tuple = ()) -> Plan:
    try:
        return make_plan(model, groups, config, scores=scores, blocks=depth[0] if depth else None,
                         block_scores=depth[1] if depth else None)
    except PlanError as err:
        if not left_out:
            raise
        raise PlanError(f"{err} [after leaving {', '.join(left_out)} unpruned: their forward breaks "
                        f"when pruned]") from err


def _root_advice(model: nn.Module, groups: Any, plan: Plan, inputs: Any, config: ShrinkConfig) -> str:
    """Which kinds of groups break the model's own forward (it cannot be ignored): each kind's part
    of the plan is applied alone to a copy, and the advice names the kinds that still work."""
    by_id = {g.id: g for g in groups}
    kinds = sorted({kind(by_id[i]) for i in plan.removed})
    breaking = []
    for k in kinds:
        part = plan_from_units(model, [(by_id[i], u) for i, u in plan.removed.items() if kind(by_id[i]) == k],
                               plan.config, groups)
        try:
            apply_plan_shared_(copy_model(model), part, inputs)  # made from the groups: no units check
        except SurgeryError:
            breaking.append(k)
    fine = tuple(k for k in kinds if k not in breaking)
    if breaking and fine:
        return f"Pruning {' and '.join(breaking)} breaks it; pass prune={fine} to prune the rest."
    return ("Every kind of group the plan prunes breaks it; prune the submodules that do not depend on those "
            "widths with submodules=, or compute the width from the tensor in the forward (x.shape)")


def _same_type(model: nn.Module, fqn: str | None) -> list[str]:
    """Modules sharing the failing module's code: same type, or just itself for torch.nn built-ins."""
    if not fqn:
        return []  # the root's own forward: ignoring it would leave nothing to prune
    kind = type(model.get_submodule(fqn))
    if kind.__module__.startswith("torch.nn."):
        return [fqn]
    return [name for name, mod in model.named_modules() if type(mod) is kind]
