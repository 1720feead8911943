"""Surgery mechanics: slice every tensor a plan names, set attributes, sync modules, roll back on error."""
from __future__ import annotations

import warnings
from typing import Any, Callable

import torch
from torch import nn

from ..coupling import attr_path
from ..errors import SurgeryError
from ..inputs import Inputs, normalize_inputs, output_shapes, run_model
from ..plan import Plan
from ..registry import Registry
from ..validate import check_plan
from .config import config_objects, hf_config, start_record_, sync_config_

SLICERS = Registry("slicer")


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


def apply_plan_(model: nn.Module, plan: Plan, example_inputs: Any = None, compensation: Any = None) -> nn.Module:
    """Prune ``model`` in place as ``plan`` says; with example inputs, check the forward still runs
    and gives the shapes it gave before. The plan is checked first (``graphprune.validate``: the
    model it was made for, its version, every index, coupled widths, attribute writes); a plan
    that does not fit raises ``PlanError`` with the model untouched. ``compensation`` (``graphprune.compensate.compensation``)
    is written first, from the columns about to go. On any failure the model is restored (the
    compensation too) and SurgeryError raised.

    >>> import timm, graphprune
    >>> m = timm.create_model("resnet18")
    >>> plan = graphprune.make_plan(m, graphprune.find_groups(m), graphprune.ShrinkConfig(ratio=0.2))
    >>> apply_plan_(m, plan) is m
    True
    """
    check_plan(model, plan)  # before anything changes: a plan may come from a file
    return apply_checked_(model, plan, example_inputs, compensation)


def apply_checked_(model: nn.Module, plan: Plan, example_inputs: Any = None, compensation: Any = None) -> nn.Module:
    """``apply_plan_`` for a plan already checked against ``model`` (``graphprune.record`` checks
    the shape plans it builds from a saved record with ``check_record``)."""
    extra = _compensated_modules(compensation)
    snapshot = _Snapshot(model, plan, extra)
    try:
        if compensation is not None:
            compensation.apply_(model)
        start_record_(model)
        _slice_tensors(model, plan)
        _set_attrs(model, plan)
        register_loaded()  # transformers may have been imported after graphprune
        for fqn in snapshot.modules:
            fix = SLICERS.lookup_mro(model.get_submodule(fqn))
            if fix is not None:
                fix(model.get_submodule(fqn))
        sync_config_(model, plan)
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


def _slice_tensors(model: nn.Module, plan: Plan) -> None:
    aliases = _aliases(model)
    tensors = {**dict(model.named_parameters(remove_duplicate=False)), **dict(model.named_buffers(remove_duplicate=False))}
    for fqn, dims in plan.keep.items():
        old = tensors[fqn]
        new = old.detach()
        for d, ix in dims.items():
            new = new.index_select(d, torch.tensor(ix, dtype=torch.long, device=new.device))
        if isinstance(old, nn.Parameter):
            new = nn.Parameter(new.clone(), requires_grad=old.requires_grad)
        else:
            new = new.clone()
        for name in aliases[id(old)]:  # tied weights stay one tensor
            owner, attr = _owner(name)
            mod = model.get_submodule(owner)
            (mod._parameters if attr in mod._parameters else mod._buffers)[attr] = new


def _set_attrs(model: nn.Module, plan: Plan) -> None:
    for fqn, attrs in plan.attrs.items():
        mod = model.get_submodule(fqn)
        for attr, value in attrs.items():
            owner, leaf = attr_path(mod, attr)  # "config.num_attention_heads": the module's config
            setattr(owner, leaf, tuple(value) if isinstance(value, list) else value)


def _validate(model: nn.Module, plan: Plan, example_inputs: Any) -> None:
    inputs: Inputs = example_inputs if _is_inputs(example_inputs) else normalize_inputs(example_inputs)
    try:
        shapes = output_shapes(run_model(model, inputs))
    except Exception as err:
        fqn = failing_module(model, err)
        failure = SurgeryError(f"the pruned model's forward fails in {fqn or '<root>'!r}, so the model was "
                               f"restored: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. "
                               f"A module computes a shape from a constant; add it to ignore=")
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
        tensors = {**dict(model.named_parameters(remove_duplicate=False)),
                   **dict(model.named_buffers(remove_duplicate=False))}
        aliases = _aliases(model)
        owners = {_owner(n)[0] for f in plan.keep for n in aliases[id(tensors[f])]}
        self.modules = sorted(owners | set(plan.attrs) | set(extra))
        self.saved = {fqn: self._save(model.get_submodule(fqn)) for fqn in self.modules}
        cfg = hf_config(model)
        self.configs = [(c, dict(c.__dict__)) for c in (config_objects(cfg) if cfg is not None else [])]
        # attributes of other objects the plan writes (a config-like object that is not the HF config)
        self.owned = [(owner, leaf, getattr(owner, leaf)) for fqn, attrs in plan.attrs.items() for a in attrs
                      if "." in a for owner, leaf in [attr_path(model.get_submodule(fqn), a)]]

    @staticmethod
    def _save(mod: nn.Module) -> dict[str, Any]:
        return {"_parameters": dict(mod._parameters), "_buffers": dict(mod._buffers),
                "attrs": {k: v for k, v in mod.__dict__.items() if not k.startswith("_") and not isinstance(v, (nn.Module, torch.Tensor))}}

    def restore(self) -> None:
        for fqn, saved in self.saved.items():
            mod = self.model.get_submodule(fqn)
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

