"""Surgery mechanics, the value check: when every group a plan cuts is exact, the pruned model must
compute what the original computes with the removed units' contribution zeroed (the project's
oracle, run on the real plan). A width the code reads as a number (``h / math.sqrt(h.shape[-1])``,
``if x.shape[1] == 16``) is a constant in the traced graph, so no rule sees it; this check does.
Which plans it judges, and what the report says it proved: ``proof``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils._pytree as pytree
from torch import nn
from torch.func import functional_call
from torch.nn.modules.conv import _ConvNd

from ..errors import SurgeryError
from ..inputs import Inputs, eval_mode, first_tensor
from ..moments import consumer_of

# float error of a pruned sum against the zeroed full one is far below these; a width misread by
# code moves outputs by whole percents (a quarter of the scale in the tests)
TOLERANCE = {torch.float16: 3e-2, torch.bfloat16: 3e-2}
DEFAULT_TOLERANCE = 1e-3


def zeroed_outputs(model: nn.Module, chosen: list[tuple[Any, list[int]]], inputs: Inputs) -> Any:
    """The model's outputs with the chosen units' input weights zeroed, or None when that zeroing
    does not cut the units off: scrambling what produces them must then change nothing, and where it
    does (a weight used through an op no role reaches, such as ``w * s``) there is no reference to
    check against. A Linear's or conv's weight is zeroed (scrambled) on the channels it reads
    (writes), by a hook; only other weights are copied (``functional_call``), so a big model's check
    costs forwards, not a second copy of its MLPs."""
    if any(not _has_role(g, "in") or not _has_role(g, "out") for g, _ in chosen):
        return None  # a group nothing zeroes (or nothing produces): nothing proves its units are cut off
    for hooks in (True, False):  # hooks save copying big weights; copies where a module is not called
        zeroed, scrambled = _edits(model, chosen, "in", hooks), _edits(model, chosen, "out", hooks)
        both = _Edits({**scrambled.tensors, **zeroed.tensors}, zeroed.hooks + scrambled.hooks)
        try:
            (expected, fired), (again, fired_both) = _call(model, inputs, zeroed), _call(model, inputs, both)
        except _HookFailed:  # a module called with keyword arguments only
            continue
        if fired and fired_both:
            return expected if max_difference(expected, again) <= DEFAULT_TOLERANCE else None
    return None


def _has_role(g: Any, role: str) -> bool:
    return any(role in m.roles for m in g.members)


class _HookFailed(Exception):
    pass


@dataclass
class _Edits:
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # edited copies, by FQN
    hooks: list[tuple[str, Any]] = field(default_factory=list)  # (module FQN, forward (pre-)hook)


def _edits(model: nn.Module, chosen: list, role: str, hooks: bool = True) -> _Edits:
    """Zero ("in") or scramble ("out") the chosen units' weights playing ``role`` (by hooks on the
    activations of leaf Linears and convs when ``hooks``, else on copies of the weights)."""
    own, out = dict(model.named_parameters()), _Edits()
    members = [(m, torch.as_tensor(m.indices[units].ravel(), device=own[m.fqn].device))
               for g, units in chosen for m in g.members if role in m.roles and m.fqn in own]
    sites = [(m, index, _site(model, m, role) if hooks else None) for m, index in members]
    out.hooks = [(at[0], _hook(role, at[1], index)) for _, index, at in sites if at is not None]
    hooked = {fqn for fqn, _ in out.hooks}
    for m, index, at in sites:
        if at is not None or (role == "out" and m.fqn.rpartition(".")[0] in hooked):
            continue  # edited by its hook, or a bias of a module whose whole output is scrambled
        t = out.tensors.setdefault(m.fqn, own[m.fqn].detach().clone())
        t.index_fill_(m.dim, index, 0) if role == "in" else _scramble_(t, m.dim, index)
    return out


def _site(model: nn.Module, m: Any, role: str) -> tuple[str, int] | None:
    return consumer_of(model, m) if role == "in" else _producer_of(model, m)


def _producer_of(model: nn.Module, member: Any) -> tuple[str, int] | None:
    """(module FQN, channel dim of its output) when ``member`` is the output side of a leaf Linear
    or conv weight, so its unit j is output channel j."""
    fqn = member.fqn.rpartition(".")[0]
    if not member.fqn.endswith(".weight") or member.dim != 0 or "out" not in member.roles:
        return None
    mod = model.get_submodule(fqn)
    if isinstance(mod, nn.Linear):
        return fqn, -1
    return (fqn, 1) if isinstance(mod, _ConvNd) and not mod.transposed else None


def _hook(role: str, dim: int, index: torch.Tensor) -> Any:
    def zero_input(module: nn.Module, args: tuple) -> tuple:
        if not args or not isinstance(args[0], torch.Tensor):
            raise _HookFailed(type(module).__name__)
        return (args[0].index_fill(dim % args[0].dim(), index, 0), *args[1:])

    def scramble_output(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        output = output.clone()
        _scramble_(output, dim % output.dim(), index)
        return output
    return zero_input if role == "in" else scramble_output


def _scramble_(t: torch.Tensor, dim: int, index: torch.Tensor) -> None:
    part = t.index_select(dim, index)
    noise = torch.randn(part.shape, generator=torch.Generator().manual_seed(0)).to(part)
    t.index_copy_(dim, index, part + noise * (t.float().std().nan_to_num(1.0).item() + 1e-3))


def _call(model: nn.Module, inputs: Inputs, edits: _Edits) -> tuple[Any, bool]:
    """The edited model's outputs, and whether every hook ran (a module may hold a weight that
    its owner reads without calling the module, e.g. ``nn.MultiheadAttention``'s ``out_proj``)."""
    args, kwargs = inputs
    handles, ran = [], set()

    def counted(i: int, hook: Any) -> Any:
        return lambda *a: (ran.add(i), hook(*a))[1]
    try:
        for i, (fqn, hook) in enumerate(edits.hooks):
            mod, fn = model.get_submodule(fqn), counted(i, hook)
            handles.append(mod.register_forward_pre_hook(fn) if hook.__name__ == "zero_input"
                           else mod.register_forward_hook(fn))
        with torch.no_grad(), eval_mode(model):
            out = functional_call(model, edits.tensors, tuple(args), dict(kwargs))
        return out, len(ran) == len(edits.hooks)
    finally:
        for h in handles:
            h.remove()


def check_values(outputs: Any, expected: Any) -> None:
    """Raise ``SurgeryError`` (``.values`` set) when a pruned output differs from ``expected`` by more
    than its own dtype's tolerance (bfloat16 logits next to an integer argmax: each on its terms)."""
    pairs = _pairs(expected, outputs)
    worst = max((_relative(e, g) / TOLERANCE.get(e.dtype, DEFAULT_TOLERANCE), _relative(e, g)) for e, g in pairs) \
        if pairs else (0.0, 0.0)
    if worst[0] > 1:
        err = SurgeryError(
            f"the pruned model's output differs by {worst[1]:.3g} of its scale from the original's with the removed "
            f"units zeroed, though every pruned group is exact: code reads a pruned width as a number "
            f"(x.shape[-1] or self.fc.out_features in arithmetic or an if), which the traced graph only holds "
            f"as a constant; the model was restored")
        err.values = worst[1]
        raise err


def max_difference(expected: Any, got: Any) -> float:
    """The largest difference relative to each output's scale, over every floating output tensor
    whose shape the pruning did not change (unlike a per-head cache); integer outputs (an argmax)
    are left out, where one near tie would count as a whole class."""
    return max((_relative(e, g) for e, g in _pairs(expected, got)), default=0.0)


def _pairs(expected: Any, got: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    first = [(first_tensor(expected), first_tensor(got))]
    pairs = first + list(zip(_floats(expected), _floats(got)))
    return [(e, g) for e, g in pairs if e.is_floating_point() and g.is_floating_point() and e.shape == g.shape]


def _relative(e: torch.Tensor, g: torch.Tensor) -> float:
    return float((g.float() - e.float()).abs().max() / e.float().abs().max().clamp_min(1e-12))


def _floats(out: Any) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.is_floating_point()]
