"""Surgery for depth: take removable blocks (``graphprune.blocks``) out of a model.

Where the parent calls a list by position and a config counts it (an HF decoder's ``layers``),
the entries leave the ``ModuleList``: later layers move up, their layer-index attributes (caches
key on them) and the config's layer count and per-layer lists follow, so ``config.json`` alone
rebuilds the model. An entry of an ``nn.Sequential`` becomes ``nn.Identity``; any other block
becomes ``Skip``, which returns its first input whatever else the call passes.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from torch import nn

from .core import register_surgeon

LAYER_INDEX = re.compile(r"^layer_?(idx|id|index|number|num)$")


class Skip(nn.Identity):
    """A removed block: returns its first input and ignores the rest of the call (attention masks,
    position embeddings, caches), so the parent's code runs unchanged.

    >>> import torch
    >>> Skip()(torch.ones(2), mask=None).tolist()
    [1.0, 1.0]
    """

    def forward(self, x: Any, *args: Any, **kwargs: Any) -> Any:
        return x


def removal_actions(model: nn.Module, fqns: Iterable[str], counted: dict[str, str] | None = None) -> tuple:
    """The plan actions that remove the blocks at ``fqns``: entries of a list whose length a config
    field sets (``counted``: list FQN -> dotted field, default ``layer_fields(model)``) leave it
    (``DropEntries``); an ``nn.Sequential`` entry becomes ``nn.Identity``, any other block ``Skip``.

    >>> m = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    >>> removal_actions(m, ["1"])
    (Replace(module='1', by='identity'),)
    """
    from ..actions import DropEntries, Replace

    counted = layer_fields(model) if counted is None else counted
    drops: dict[str, list[int]] = {}
    out = []
    for fqn in sorted(fqns):
        parent, _, name = fqn.rpartition(".")
        holder = model.get_submodule(parent)
        if parent in counted and isinstance(holder, nn.ModuleList):
            drops.setdefault(parent, []).append(int(name))
        else:
            out.append(Replace(fqn, "identity" if isinstance(holder, nn.Sequential) else "skip"))
    out += [DropEntries(f, tuple(sorted(ix)), counted[f]) for f, ix in sorted(drops.items())]
    return tuple(out)


def remove_blocks_(model: nn.Module, fqns: Iterable[str], counted: dict[str, str] | None = None) -> None:
    """Remove the blocks at ``fqns`` in place (see ``removal_actions``), without checks or rollback:
    ``apply_plan_`` of a plan holding those actions is the checked way."""
    from ..actions import Plan

    plan = Plan.build(structure=removal_actions(model, fqns, counted), config={}, params_before=0, params_after=0)
    replace_(model, plan, None)
    drop_(model, plan, None)


@register_surgeon("replace")
def replace_(model: nn.Module, plan: Any, surgery: Any) -> None:
    """``Replace`` actions: the module becomes ``nn.Identity`` or ``Skip``; an HF record notes it."""
    for a in plan.of("replace"):
        parent, _, name = a.module.rpartition(".")
        model.get_submodule(parent)._modules[name] = nn.Identity() if a.by == "identity" else Skip()
        _edit_record(model, {a.module: ""}, a)


@register_surgeon("drop_entries")
def drop_(model: nn.Module, plan: Any, surgery: Any) -> None:
    """``DropEntries`` actions: the entries leave the list, later ones move up (and are renumbered),
    and the config field counting the list and its per-layer lists follow."""
    for a in plan.of("drop_entries"):
        renames = renumbering(model.get_submodule(a.module), a.module, a.indices)
        _drop_(model.get_submodule(a.module), set(a.indices))
        if a.count:
            _config_drop_(model, a.count, list(a.indices))
        _edit_record(model, renames, a)


def renumbering(layers: nn.ModuleList, prefix: str, gone: Iterable[int]) -> dict[str, str]:
    """Old FQN -> new one for the entries of ``layers`` (at ``prefix``) when ``gone`` leave it;
    a removed entry maps to "".

    >>> renumbering(nn.ModuleList([nn.Linear(1, 1) for _ in range(3)]), "layers", [1])
    {'layers.1': '', 'layers.2': 'layers.1'}
    """
    gone, out, j = set(gone), {}, 0
    for i in range(len(layers)):
        old = f"{prefix}.{i}" if prefix else str(i)
        if i in gone:
            out[old] = ""
            continue
        if i != j:
            out[old] = f"{prefix}.{j}" if prefix else str(j)
        j += 1
    return out


def _edit_record(model: nn.Module, renames: dict[str, str], action: Any) -> None:
    """Keep an HF config's ``graphprune`` record true after modules went or moved: the action joins
    its ``structure`` log (a reload replays it on the base model first), recorded shapes under a
    removed module go and those under a moved one take its new name."""
    from .config import hf_config

    cfg = hf_config(model)
    record = getattr(cfg, "graphprune", None) if cfg is not None else None
    if record is None:
        return
    for key in ("shapes", "attrs"):
        record[key] = {new: v for k, v in record[key].items() if (new := _renamed(k, renames)) is not None}
    record["structure"] = [*record.get("structure", []), action.to_dict()]


def _renamed(fqn: str, renames: dict[str, str]) -> str | None:
    for old, new in renames.items():
        if fqn == old or fqn.startswith(old + "."):
            return None if not new else new + fqn[len(old):]
    return fqn


def _config_drop_(model: nn.Module, dotted: str, gone: list[int]) -> None:
    """The layer count ``dotted`` loses ``gone``; per-layer lists beside it (``layer_types``) lose
    those entries (the record's base config stays: a reload builds it, then replays the removal)."""
    from .config import hf_config

    owner = hf_config(model)
    if owner is None:
        return
    *path, field = dotted.split(".")
    for part in path:
        owner = getattr(owner, part)
    _drop_fields_(owner, field, gone)


def _drop_fields_(owner: Any, field: str, gone: list[int]) -> None:
    """``owner.field -= len(gone)``; every list field as long as it was loses the ``gone`` entries."""
    items = {k: v for k, v in vars(owner).items() if not k.startswith("_")}
    n = items[field]
    for key, value in items.items():
        if isinstance(value, (list, tuple)) and len(value) == n:
            setattr(owner, key, type(value)(v for i, v in enumerate(value) if i not in gone))
    setattr(owner, field, n - len(gone))


def _drop_(layers: nn.ModuleList, gone: set[int]) -> None:
    kept = [layer for i, layer in enumerate(layers) if i not in gone]
    moves = [(i, layer) for i, layer in enumerate(layers) if i not in gone]
    for j, (i, layer) in enumerate(moves):
        if i != j:
            _renumber_(layer, i, j)
    layers._modules.clear()
    for j, layer in enumerate(kept):
        layers._modules[str(j)] = layer


def _renumber_(layer: nn.Module, old: int, new: int) -> None:
    """Layer-index attributes (``layer_idx``: which cache slot a layer reads) of the layer and its
    submodules that held its old position."""
    for mod in layer.modules():
        for name, value in list(vars(mod).items()):
            if type(value) is int and value == old and LAYER_INDEX.match(name):
                setattr(mod, name, new)


def layer_fields(model: nn.Module, model_class: type | None = None) -> dict[str, str]:
    """For each ``ModuleList`` whose length a field of the model's HF config sets, that field (dotted
    for nested configs). Found by building the model on the meta device with the field one smaller
    and seeing which list got shorter, so encoder and decoder layer counts of equal value are told
    apart without knowing their names (``model_class``: the class to build, if not the model's own).

    >>> import transformers
    >>> cfg = transformers.LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
    ...                                num_attention_heads=2, vocab_size=32)
    >>> layer_fields(transformers.LlamaForCausalLM(cfg))
    {'model.layers': 'num_hidden_layers'}
    """
    import torch

    from .config import hf_config
    from ..hub import _without_record
    from .config import _set

    cfg = hf_config(model)
    if cfg is None:
        return {}
    lists = {f: len(m) for f, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m)}
    out: dict[str, str] = {}
    for dotted, value in _int_fields(cfg):
        if "layer" not in dotted.rsplit(".", 1)[-1] or value not in lists.values():
            continue
        trial = _without_record(cfg)
        _set(trial, dotted, value - 1)
        try:
            with torch.device("meta"):
                fresh = (model_class or type(model))._from_config(trial)
        except Exception:  # noqa: BLE001 - a field the config rejects changed is no layer count
            continue
        for fqn, n in lists.items():
            got = fresh.get_submodule(fqn) if _has(fresh, fqn) else None
            if isinstance(got, nn.ModuleList) and len(got) == n - 1 and fqn not in out:
                out[fqn] = dotted
    return out


def _has(model: nn.Module, fqn: str) -> bool:
    try:
        model.get_submodule(fqn)
    except AttributeError:
        return False
    return True


def _int_fields(cfg: Any, prefix: str = "") -> list[tuple[str, int]]:
    out = []
    for key, value in sorted(vars(cfg).items()):
        if key.startswith("_"):
            continue
        if type(value) is int:
            out.append((prefix + key, value))
        elif hasattr(value, "to_dict") and value is not cfg:
            out += _int_fields(value, f"{prefix}{key}.")
    return out
