"""Surgery mechanics: slice every tensor a plan names, set attributes, sync modules, roll back on error."""
from __future__ import annotations

import copy
import warnings
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ..attrs import attr_path, set_attr, shared_attr
from ..errors import SurgeryError
from ..inputs import Inputs, normalize_inputs, output_shapes, run_model
from ..plan import Plan
from ..registry import Registry
from ..validate import check_plan
from .config import config_objects, hf_config, start_record_, sync_config_

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
    model it was made for, its version, every index, coupled widths, attribute writes); a plan
    that does not fit raises ``PlanError`` with the model untouched. ``compensation``
    (``graphprune.compensate.compensation``) is written first, from the columns about to go. On any failure the model is restored (the
    compensation too) and SurgeryError raised.

    Memory stays at about the model's size: each sliced tensor is replaced by a new one holding the
    kept indices and the old one's storage is released at once (its ``Parameter`` object is left
    empty; a rollback refills it from the removed slices, kept until the end).

    >>> import timm, graphprune
    >>> m = timm.create_model("resnet18")
    >>> plan = graphprune.make_plan(m, graphprune.find_groups(m), graphprune.ShrinkConfig(ratio=0.2))
    >>> apply_plan_(m, plan) is m
    True
    """
    return apply_plan_shared_(model, plan, example_inputs, compensation, frozenset())


def apply_plan_shared_(model: nn.Module, plan: Plan, example_inputs: Any = None, compensation: Any = None,
                       shared: frozenset[int] = frozenset()) -> nn.Module:
    """``apply_plan_`` for a model whose tensors with ids in ``shared`` belong to another model too
    (``shared_copy``): those are read, never released; every other sliced tensor is released as
    soon as its kept part exists, and only its removed part is kept for a rollback, so memory
    stays at about one model's size (plus one tensor) instead of two."""
    check_plan(model, plan)  # before anything changes: a plan may come from a file
    return apply_checked_(model, plan, example_inputs, compensation, shared)


def apply_checked_(model: nn.Module, plan: Plan, example_inputs: Any = None, compensation: Any = None,
                   shared: frozenset[int] = frozenset()) -> nn.Module:
    """``apply_plan_shared_`` for a plan already checked against ``model`` (``graphprune.record``
    checks the shape plans it builds from a saved record with ``check_record``)."""
    extra = _compensated_modules(compensation)
    snapshot = _Snapshot(model, plan, extra)
    try:
        if compensation is not None:
            compensation.apply_(model)
        start_record_(model)
        surgery = Surgery(snapshot, shared | _held_elsewhere(model))
        for op in ORDER:
            SURGEONS[op](model, plan, surgery)
        unshare_(model, shared)  # before any forward: a train-mode forward writes BN statistics in place
        if example_inputs is not None:
            _validate(model, plan, example_inputs)
        if plan.config.get("uniform") and hf_config(model) is not None:
            _check_config(model)
    except Exception as err:
        snapshot.restore()
        if isinstance(err, SurgeryError):
            raise
        raise SurgeryError(f"surgery failed and the model was restored: {type(err).__name__}: "
                           f"{str(err).splitlines()[0] if str(err) else ''}") from err
    return model


def _compensated_modules(compensation: Any) -> set[str]:
    if compensation is None:
        return set()
    return {_owner(f)[0] for f in compensation.updates} | set(compensation.new_biases)


def _owner(fqn: str) -> tuple[str, str]:
    return tuple(fqn.rsplit(".", 1)) if "." in fqn else ("", fqn)  # type: ignore[return-value]


def _aliases(model: nn.Module) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False)):
        out.setdefault(id(t), []).append(name)
    return out


def _slice_tensors(model: nn.Module, plan: Plan, undo: list, keep_whole: frozenset[int]) -> None:
    aliases = _aliases(model)
    tensors = {**dict(model.named_parameters(remove_duplicate=False)), **dict(model.named_buffers(remove_duplicate=False))}
    for fqn, dims in plan.keep.items():
        old = tensors[fqn]
        release = id(old) not in keep_whole
        new, removed = _cut(old.detach(), dims, save=release)
        if isinstance(old, nn.Parameter):
            new = nn.Parameter(new, requires_grad=old.requires_grad)
        for name in aliases[id(old)]:  # tied weights stay one tensor
            owner, attr = _owner(name)
            mod = model.get_submodule(owner)
            (mod._parameters if attr in mod._parameters else mod._buffers)[attr] = new
        if release:  # the snapshot holds `old` itself: give back its memory, keep what a rollback needs
            undo.append((old, new, removed))
            old.data = torch.empty(0, dtype=old.dtype, device=old.device)


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


def _uncut(t: torch.Tensor, removed: list) -> torch.Tensor:
    for d, keep, drop, part in reversed(removed):
        shape = list(t.shape)
        shape[d] = len(keep) + len(drop)
        whole = t.new_empty(shape)
        whole.index_copy_(d, keep, t)
        whole.index_copy_(d, drop, part)
        t = whole
    return t


def _held_elsewhere(model: nn.Module) -> frozenset[int]:
    """Tensors a module also holds as a plain attribute (HF rotary's ``original_inv_freq`` is its
    ``inv_freq`` buffer): releasing such a tensor's memory would empty that attribute too."""
    return frozenset(id(v) for m in model.modules() for v in vars(m).values() if isinstance(v, torch.Tensor))


def shared_copy(model: nn.Module, fqns: set[str]) -> tuple[nn.Module, frozenset[int]]:
    """A deep copy of ``model`` that shares (does not copy) the tensors named ``fqns``, those a plan
    may slice, so pruning a copy needs no second full model; ``unshare_`` copies what the plan
    left whole. Returns the copy and the ids of the shared tensors."""
    named = {**dict(model.named_parameters(remove_duplicate=False)), **dict(model.named_buffers(remove_duplicate=False))}
    memo = {id(named[f]): named[f] for f in fqns if f in named}
    return copy.deepcopy(model, memo), frozenset(memo)


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


class Surgery:
    """What surgeons share: the snapshot a failure restores, and the tensors to keep whole."""

    def __init__(self, snapshot: "_Snapshot", keep_whole: frozenset[int]):
        self.snapshot, self.keep_whole = snapshot, keep_whole


@register_surgeon("slice")
def _slice(model: nn.Module, plan: Plan, surgery: Surgery) -> None:
    _slice_tensors(model, plan, surgery.snapshot.undo, surgery.keep_whole)


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


def _validate(model: nn.Module, plan: Plan, example_inputs: Any) -> None:
    inputs: Inputs = example_inputs if _is_inputs(example_inputs) else normalize_inputs(example_inputs)
    try:
        shapes = output_shapes(run_model(model, inputs))
    except Exception as err:
        fqn = failing_module(model, err)
        fix = (f"A module computes a shape from a constant; add {fqn!r} to ignore=" if fqn else
               "The model's own forward computes a shape from a constant; leave out the kind of group it "
               "depends on with prune= (e.g. prune=('heads', 'mlp'))")
        failure = SurgeryError(f"the pruned model's forward fails in {fqn or '<root>'!r}, so the model was "
                               f"restored: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. "
                               f"{fix}")
        failure.module = fqn
        raise failure from err
    if plan.output_shapes and [list(s) for s in shapes] != [list(s) for s in plan.output_shapes]:
        raise SurgeryError(f"the pruned model's output shapes {shapes} differ from the original "
                           f"{plan.output_shapes}; the model was restored")


def failing_module(model: nn.Module, err: BaseException) -> str | None:
    """FQN of the innermost submodule whose own code raised ``err`` (None if no module frame).

    >>> m = nn.Sequential(nn.Linear(2, 3))
    >>> try:
    ...     m(torch.zeros(1, 5))
    ... except RuntimeError as e:
    ...     failing_module(m, e)
    '0'
    """
    names = {id(mod): name for name, mod in model.named_modules()}
    found, tb = None, err.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        found = names.get(id(owner), found)
        tb = tb.tb_next
    return found


def _check_config(model: nn.Module) -> None:
    """With uniform widths the config alone must rebuild the model: stock from_pretrained relies on it."""
    from ..hub import config_mismatches, sync_derived_buffers_

    wrong = config_mismatches(model)
    if wrong:
        raise SurgeryError(f"uniform pruning left model.config unable to describe the weights "
                           f"({'; '.join(wrong[:3])}): {type(model.config).__name__} derives these shapes "
                           f"from fields that cannot take the new widths; pass round_to= (e.g. 8) so widths "
                           f"stay multiples the config accepts, exclude that kind with prune= (e.g. "
                           f"prune=('heads', 'mlp')), or use per-layer widths and graphprune.from_pretrained")
    changed = sync_derived_buffers_(model)
    if changed:
        warnings.warn(f"graphprune: {', '.join(changed)} are derived from the config at construction and not "
                      f"saved; they now hold the values a reload computes from the pruned config")


def _is_inputs(x: Any) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], tuple) and isinstance(x[1], dict)


class _Snapshot:
    """What surgery may change, so a failure can put the model back exactly as it was."""

    def __init__(self, model: nn.Module, plan: Plan, extra: set[str] = frozenset()):
        self.model = model
        self.undo: list = []  # (released tensor, its kept part, removed slices) from _slice_tensors
        tensors = {**dict(model.named_parameters(remove_duplicate=False)),
                   **dict(model.named_buffers(remove_duplicate=False))}
        aliases = _aliases(model)
        owners = {_owner(n)[0] for f in plan.keep for n in aliases[id(tensors[f])]}
        # module objects, not names: dropping a list entry renames the entries after it
        self.modules = [model.get_submodule(f) for f in sorted(owners | set(plan.attrs) | set(extra))]
        self.saved = [(mod, self._save(mod)) for mod in self.modules]
        holders = {a.module.rpartition(".")[0] for a in plan.of("replace")} | {a.module for a in plan.of("drop_entries")}
        self.children = [(m, dict(m._modules)) for m in (model.get_submodule(h) for h in sorted(holders))]
        # layer-index attributes of every module in a list that loses entries (they are renumbered)
        self.inner = [(m, self._save(m)["attrs"]) for a in plan.of("drop_entries")
                      for m in model.get_submodule(a.module).modules()]
        cfg = hf_config(model)
        self.configs = [(c, dict(c.__dict__)) for c in (config_objects(cfg) if cfg is not None else [])]
        # attributes of other objects the plan writes (a config-like object that is not the HF config)
        self.owned = [(owner, leaf, getattr(owner, leaf)) for fqn, attrs in plan.attrs.items() for a in attrs
                      if shared_attr(a) for owner, leaf in [attr_path(model.get_submodule(fqn), a.split("[")[0])]]

    @staticmethod
    def _save(mod: nn.Module) -> dict[str, Any]:
        return {"class": type(mod), "_parameters": dict(mod._parameters), "_buffers": dict(mod._buffers),
                "attrs": {k: v for k, v in mod.__dict__.items() if not k.startswith("_") and not isinstance(v, (nn.Module, torch.Tensor))}}

    def restore(self) -> None:
        for old, new, removed in reversed(self.undo):
            old.data = _uncut(new.detach(), removed)
        self.undo.clear()
        for holder, children in self.children:
            holder._modules.clear()
            holder._modules.update(children)
        for mod, attrs in self.inner:
            mod.__dict__.update(attrs)
        for mod, saved in self.saved:
            mod.__class__ = saved["class"]  # a slicer may have given it a graphprune subclass
            mod._parameters.clear()
            mod._parameters.update(saved["_parameters"])
            mod._buffers.clear()
            mod._buffers.update(saved["_buffers"])
            mod.__dict__.update(saved["attrs"])
        for cfg, state in self.configs:
            cfg.__dict__.clear()
            cfg.__dict__.update(state)
        for owner, leaf, value in reversed(self.owned):
            setattr(owner, leaf, value)

