"""Surgery mechanics, rollback: what surgery may change, saved before it starts, so a failure puts
the model back exactly as it was."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..attrs import attr_path, shared_attr
from ..plan import Plan
from .config import config_objects, hf_config
from .tensors import aliases_of, owner_of, uncut


class Snapshot:
    """What surgery may change, so a failure can put the model back exactly as it was."""

    def __init__(self, model: nn.Module, plan: Plan, extra: set[str] = frozenset()):
        self.model = model
        self.undo: list = []  # (released tensor, its kept part, removed slices) from _slice_tensors
        tensors = {**dict(model.named_parameters(remove_duplicate=False)),
                   **dict(model.named_buffers(remove_duplicate=False))}
        aliases = aliases_of(model)
        owners = {owner_of(n)[0] for f in plan.keep for n in aliases[id(tensors[f])]}
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
            old.data = uncut(new.detach(), removed)
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
