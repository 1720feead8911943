"""Stage 7, report: what changed (parameters, MACs, groups) and what was frozen and why."""
from __future__ import annotations

import contextlib
import copy
import json
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Iterator

import torch
from torch import nn
from torch.utils._pytree import tree_map
from torch.utils.flop_counter import FlopCounterMode

from . import schema
from .inputs import Inputs, run_model

if TYPE_CHECKING:
    from .groups import Groups
    from .plan import Plan


@contextlib.contextmanager
def _params_frozen(model: nn.Module) -> Iterator[None]:
    # the flop counter's module tracker hooks autograd on every input that requires grad; a view of
    # a parameter made under no_grad (timm's cls_token.expand) requires grad yet has no grad_fn.
    # nn.MultiheadAttention's inference fast path is one fused kernel the counter does not see.
    flags = [(p, p.requires_grad) for p in model.parameters()]
    fast = torch.backends.mha.get_fastpath_enabled()
    try:
        for p, _ in flags:
            p.requires_grad_(False)
        torch.backends.mha.set_fastpath_enabled(False)
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
        for p, flag in flags:
            p.requires_grad_(flag)


def count_macs(model: nn.Module, inputs: Inputs) -> int:
    """Multiply-accumulates of one forward, counted by ``torch.utils.flop_counter``.

    A model on the meta device is counted from its exported graph (a meta forward can stop at a
    data-dependent check, e.g. transformers' masks; the graph has none left).

    >>> count_macs(nn.Linear(4, 3), ((torch.zeros(2, 4),), {}))
    24
    """
    from .trace import export_program, is_meta

    if is_meta(model):
        args, kwargs = tree_map(lambda x: x.to("meta") if isinstance(x, torch.Tensor) else x, inputs)
        program = export_program(model, (args, kwargs)).module().to("meta")  # buffers too (accelerate keeps them)
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            program(*args, **kwargs)
        return counter.get_total_flops() // 2
    with _params_frozen(model), FlopCounterMode(display=False) as counter:
        run_model(model, inputs)
    return counter.get_total_flops() // 2


def macs_by_param(model: nn.Module, inputs: Inputs) -> tuple[dict[str, float], float]:
    """MACs of each leaf module, attributed to its ``weight`` (they scale with its kept fraction)."""
    with _params_frozen(model), FlopCounterMode(display=False) as counter:
        run_model(model, inputs)
    root = type(model).__name__
    out: dict[str, float] = {}
    for key, ops in counter.get_flop_counts().items():
        fqn = key[len(root) + 1:] if key.startswith(root + ".") else None
        if fqn is None:
            continue
        mod = model.get_submodule(fqn)
        if next(mod.children(), None) is None and isinstance(getattr(mod, "weight", None), torch.Tensor):
            out[f"{fqn}.weight"] = sum(ops.values()) / 2
    return out, counter.get_total_flops() / 2


@dataclass(frozen=True)
class Report:
    """Before/after numbers and the list of what was pruned, frozen and not understood."""

    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    pruned: tuple[str, ...]
    frozen: tuple[str, ...]
    unsupported: tuple[str, ...] = field(default=())
    rule_errors: tuple[str, ...] = field(default=())  # coupling rules that raised; their nodes were frozen
    left_out: tuple[str, ...] = field(default=())  # modules whose pruned forward broke, left unpruned
    criterion: str = "l2"
    scope: str = "global"
    compensate: str | None = None
    calibration_batches: int = 0
    calibration_seconds: float = 0.0
    notes: tuple[str, ...] = field(default=())  # criterion fallbacks, compensation limits
    removed_blocks: tuple[str, ...] = field(default=())  # "fqn (criterion score)", lowest score first
    plan: "Plan | None" = field(default=None, repr=False, compare=False)
    rounds: tuple[Any, ...] = field(default=())  # steps > 1: graphprune.schedule.Round after each round

    @property
    def ratio(self) -> float:
        return 1 - self.params_after / self.params_before

    def __str__(self) -> str:
        return self.format()

    def format(self, max_rows: int | None = 20) -> str:
        """The report with at most ``max_rows`` lines per list (changes, frozen groups, ops without a
        rule, notes) and an "N more" line for the rest; ``max_rows=None`` lists everything."""
        lines = [f"parameters {self.params_before:,} -> {self.params_after:,} (-{self.ratio:.1%})",
                 f"MACs       {self.macs_before:,} -> {self.macs_after:,} "
                 f"(-{1 - self.macs_after / max(self.macs_before, 1):.1%})",
                 f"pruned {len(self.pruned)} groups, {len(self.frozen)} frozen, "
                 f"{len(self.unsupported)} ops without a rule",
                 f"criterion {self.criterion}, scope {self.scope}, compensation {self.compensate or 'none'}"
                 + (f", calibration {self.calibration_batches} batches in {self.calibration_seconds:.1f} s"
                    if self.calibration_batches else "")]
        if self.rounds:
            lines.append("rounds (of the original): " + ", ".join(
                f"{r.step}: -{r.params_ratio:.1%} params, -{r.macs_ratio:.1%} MACs" for r in self.rounds))
        lines += _rows("removed block", self.removed_blocks, max_rows)
        lines += _rows("pruned", self.pruned, max_rows)
        lines += _rows("frozen", self.frozen, max_rows)
        lines += _rows("no rule", self.unsupported, max_rows)
        lines += _rows("rule failed", self.rule_errors, max_rows)
        if self.left_out:
            lines.append(f"  left unpruned (their forward broke when pruned): {', '.join(self.left_out)}")
        lines += _rows("note", self.notes, max_rows)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """Every field but the plan (``report.plan.to_json()`` has it), JSON-ready."""
        return {f.name: list(v) if isinstance(v, tuple) else v
                for f in fields(self) if f.name != "plan" for v in [getattr(self, f.name)]}

    def to_json(self, path: str | None = None) -> str:
        """The report as JSON (written to ``path`` too if given).

        >>> import json
        >>> json.loads(Report(10, 5, 100, 40, ("fc: 4 -> 2 channels",), ()).to_json())["pruned"]
        ['fc: 4 -> 2 channels']
        """
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            schema.write_text(path, text, "the report")
        return text


def _rows(label: str, items: tuple[str, ...], max_rows: int | None) -> list[str]:
    """``  label: item`` lines, the first ``max_rows`` of them, then how many more there are.

    >>> _rows("pruned", ("a", "b", "c"), 2)
    ['  pruned: a', '  pruned: b', '  ... 1 more pruned (report.format(max_rows=None) lists all)']
    """
    shown = items if max_rows is None else items[:max_rows]
    lines = [f"  {label}: {item}" for item in shown]
    if len(items) > len(shown):
        lines.append(f"  ... {len(items) - len(shown)} more {label} (report.format(max_rows=None) lists all)")
    return lines


def make_report(before: nn.Module, after: nn.Module, plan: "Plan", groups: "Groups",
                left_out: tuple[str, ...] = (), scores: Any = None, stats: Any = None, compensation: Any = None,
                macs_before: int | None = None) -> Report:
    """``macs_before``: counted before ``before`` was pruned in place (``before`` is then ``after``)."""
    inputs = groups.traced.inputs
    by_id = {g.id: g for g in groups}
    notes = tuple(f"{scores.criterion} cannot judge {by_id[i].module or '<root>'} ({by_id[i].structure}); "
                  f"ranked by l2 there, at the judged groups' median scale" for i in (scores.fallback if scores is not None else ()))
    notes += tuple(compensation.notes) if compensation is not None else ()
    notes += tuple(groups.traced.notes)
    pruned = tuple(f"{by_id[i].module or '<root>'}: {by_id[i].width} -> {by_id[i].width - len(u)} "
                   f"{by_id[i].unit}s" for i, u in sorted(plan.removed.items()) if i in by_id)  # composed: by round
    return Report(params_before=plan.params_before, params_after=sum(p.numel() for p in after.parameters()),
                  macs_before=count_macs(before, inputs) if macs_before is None else macs_before, macs_after=count_macs(after, inputs), pruned=pruned,
                  frozen=tuple(_frozen_lines(groups)), unsupported=tuple(groups.coupling.unsupported), left_out=left_out,
                  rule_errors=tuple(groups.coupling.rule_errors),
                  criterion=str(plan.config.get("scorer", "l2")), scope=str(plan.config.get("scope", "global")),
                  compensate=plan.config.get("compensate"), calibration_batches=stats.batches if stats else 0,
                  calibration_seconds=stats.seconds if stats else 0.0, notes=notes, plan=plan,
                  removed_blocks=removed_blocks(plan))


def removed_blocks(plan: "Plan") -> tuple[str, ...]:
    """The blocks a plan removes whole, lowest score first: ``"blocks.3 (angular 0.0213)"``."""
    how = plan.config.get("block_scorer", "score")
    return tuple(f"{fqn} ({how} {s:.4g})" for fqn, s in sorted(plan.removed_blocks.items(), key=lambda kv: kv[1]))


def plan_report(model: nn.Module, groups: "Groups", plan: "Plan", scores: Any = None) -> Report:
    """The report of ``plan`` without pruning ``model``: the plan is applied to a twin of the model
    on the meta device (no tensor is copied), so it costs no memory and works for a model built on
    the meta device (``graphprune.meta_model``) as for a real one. MACs are counted from the
    exported graphs of both twins (where a CPU forward's fused attention kernel is not counted,
    the graph's attention is).

    >>> import timm, graphprune
    >>> m = timm.create_model("resnet18")
    >>> g = graphprune.find_groups(m)
    >>> r = plan_report(m, g, graphprune.make_plan(m, g, graphprune.ShrinkConfig(ratio=0.3)))
    >>> round(r.ratio, 2), r.macs_after < r.macs_before
    (0.3, True)
    """
    from .surgery import apply_plan_shared_

    before = meta_twin(model)  # before and after counted alike, from their graphs
    return make_report(before, apply_plan_shared_(meta_twin(model), plan), plan, groups, scores=scores)


def meta_twin(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are on the meta device (tied ones stay
    tied); the model's own tensors are never copied."""
    memo: dict[int, Any] = {}
    for t in [*model.parameters(), *model.buffers()]:
        twin = t.detach().to("meta")
        memo[id(t)] = nn.Parameter(twin, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else twin
    return copy.deepcopy(model, memo)


def _frozen_lines(groups: "Groups") -> list[str]:
    """Frozen groups that would otherwise be prunable channel dims (kernel sizes and the like are
    never prunable and would only be noise)."""
    out = []
    for g in groups:
        if g.frozen and g.width > 1 and any(m.roles for m in g.members):
            out.append(f"{g.module or '<root>'} ({g.structure}): {g.frozen}")
    return out


def groups_table(groups: "Groups", limit: int = 60) -> str:
    """Readable table of groups: id, width, structure, members, frozen/inexact reason."""
    rows = [f"{'id':>4}  {'structure':<16} {'members':<64} status"]
    shown = [g for g in groups if g.prunable or (g.frozen and any(m.roles for m in g.members))]
    for g in shown[:limit]:
        members = ", ".join(f"{m.fqn}:{m.dim}" for m in g.members)
        members = members if len(members) <= 64 else members[:61] + "..."
        status = f"frozen: {g.frozen}" if g.frozen else ("inexact: " + g.inexact if g.inexact else "prunable")
        rows.append(f"{g.id:>4}  {g.structure:<16} {members:<64} {status}")
    if len(shown) > limit:
        rows.append(f"... {len(shown) - limit} more (print(groups.to_json()) has all)")
    n_unsupported = len(groups.coupling.unsupported)
    n_failed = len(groups.coupling.rule_errors)
    rows.append(f"{len(groups.prunable)} prunable groups, {len(shown) - len(groups.prunable)} frozen, "
                f"{n_unsupported} ops without a rule" + (f", {n_failed} rule errors" if n_failed else ""))
    return "\n".join(rows)
