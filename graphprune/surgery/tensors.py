"""Surgery mechanics, tensors: slice a plan's tensors into new ones, releasing the old storage at
once (only the removed slices are kept, for a rollback); copies that share the tensors a plan may
slice, so pruning a copy needs no second full model."""
from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from ..plan import Plan
from ..trace import aliases_of


def owner_of(fqn: str) -> tuple[str, str]:
    """``(module FQN, attribute)`` of a tensor FQN."""
    return tuple(fqn.rsplit(".", 1)) if "." in fqn else ("", fqn)  # type: ignore[return-value]


def slice_tensors(model: nn.Module, plan: Plan, undo: list, keep_whole: frozenset[int]) -> None:
    aliases = aliases_of(model)
    tensors = {**dict(model.named_parameters(remove_duplicate=False)), **dict(model.named_buffers(remove_duplicate=False))}
    for fqn, dims in plan.keep.items():
        old = tensors[fqn]
        release = id(old) not in keep_whole
        new, removed = _cut(old.detach(), dims, save=release)
        new = new.contiguous(memory_format=_layout(old))
        if isinstance(old, nn.Parameter):
            new = nn.Parameter(new, requires_grad=old.requires_grad)
        for name in aliases[id(old)]:  # tied weights stay one tensor
            owner, attr = owner_of(name)
            mod = model.get_submodule(owner)
            (mod._parameters if attr in mod._parameters else mod._buffers)[attr] = new
        if release:  # the snapshot holds `old` itself: give back its memory, keep what a rollback needs
            undo.append((old, new, removed))
            old.data = torch.empty(0, dtype=old.dtype, device=old.device)


def _layout(t: torch.Tensor) -> torch.memory_format:
    """The memory format ``t`` is stored in (a channels-last conv weight stays channels-last: its
    kernels are what the GPU picked the layout for)."""
    if t.dim() in (4, 5) and not t.is_contiguous():
        fmt = torch.channels_last if t.dim() == 4 else torch.channels_last_3d
        if t.is_contiguous(memory_format=fmt):
            return fmt
    return torch.contiguous_format


def _cut(t: torch.Tensor, dims: dict[int, list[int]], save: bool) -> tuple[torch.Tensor, list]:
    """``t`` with only the kept indices along each dim (a new tensor), and with ``save`` the
    removed slices, one per dim, from which ``_uncut`` rebuilds ``t``."""
    removed = []
    for d, ix in dims.items():
        keep = torch.tensor(ix, dtype=torch.long, device=t.device)
        if save:
            gone = np.ones(t.shape[d], dtype=bool)
            gone[ix] = False
            drop = torch.as_tensor(np.flatnonzero(gone), device=t.device)
            removed.append((d, keep, drop, t.index_select(d, drop)))
        t = t.index_select(d, keep)
    return (t if dims else t.clone()), removed


def uncut(t: torch.Tensor, removed: list) -> torch.Tensor:
    for d, keep, drop, part in reversed(removed):
        shape = list(t.shape)
        shape[d] = len(keep) + len(drop)
        whole = t.new_empty(shape)
        whole.index_copy_(d, keep, t)
        whole.index_copy_(d, drop, part)
        t = whole
    return t


def held_elsewhere(model: nn.Module) -> frozenset[int]:
    """Tensors a module also holds as a plain attribute (HF rotary's ``original_inv_freq`` is its
    ``inv_freq`` buffer): releasing such a tensor's memory would empty that attribute too."""
    return frozenset(id(v) for m in model.modules() for v in vars(m).values() if isinstance(v, torch.Tensor))


def shared_copy(model: nn.Module, fqns: set[str]) -> tuple[nn.Module, frozenset[int]]:
    """A deep copy of ``model`` that shares (does not copy) the tensors named ``fqns``, those a plan
    may slice, so pruning a copy needs no second full model; ``unshare_`` copies what the plan
    left whole. Returns the copy and the ids of the shared tensors."""
    named = {**dict(model.named_parameters(remove_duplicate=False)), **dict(model.named_buffers(remove_duplicate=False))}
    memo = {id(named[f]): named[f] for f in fqns if f in named}
    return copy_model(model, memo), frozenset(memo)


def copy_model(model: nn.Module, memo: dict[int, Any] | None = None) -> nn.Module:
    """``copy.deepcopy(model, memo)`` that also copies a tensor a forward left on a module as a plain
    attribute with its autograd history (old ``torch.nn.utils.weight_norm`` keeps ``weight`` so until
    a no-grad forward), which deepcopy refuses: the copy holds it detached, and the hook that wrote
    it recomputes it on the next forward anyway.

    >>> lin = torch.nn.utils.weight_norm(nn.Linear(2, 3))
    >>> copy_model(lin).weight.grad_fn is None
    True
    """
    memo = dict(memo or {})
    for mod in model.modules():
        for value in vars(mod).values():
            if isinstance(value, torch.Tensor) and value.grad_fn is not None and id(value) not in memo:
                memo[id(value)] = value.detach().clone()
    return copy.deepcopy(model, memo)


def unshare_(model: nn.Module, shared: frozenset[int]) -> None:
    """Give ``model`` its own copy of every tensor it still shares with the model it was copied from."""
    copies: dict[int, torch.Tensor] = {}
    for mod in model.modules():
        for store in (mod._parameters, mod._buffers):
            for k, t in store.items():
                if t is not None and id(t) in shared:
                    if id(t) not in copies:
                        copies[id(t)] = (nn.Parameter(t.detach().clone(), requires_grad=t.requires_grad)
                                         if isinstance(t, nn.Parameter) else t.detach().clone())
                    store[k] = copies[id(t)]
