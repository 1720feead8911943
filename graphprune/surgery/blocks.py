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


def renumbering(model: nn.Module, fqns: Iterable[str], counted: set[str]) -> dict[str, str]:
    """Old FQN prefix -> new one for the entries that move up when ``fqns`` leave the lists in
    ``counted`` (removed entries map to "").

    >>> m = nn.Module(); m.layers = nn.ModuleList([nn.Linear(1, 1) for _ in range(3)])
    >>> renumbering(m, ["layers.1"], {"layers"})
    {'layers.1': '', 'layers.2': 'layers.1'}
    """
    gone = set(fqns)
    out: dict[str, str] = {}
    for stack in sorted(counted):
        n, j = len(model.get_submodule(stack)), 0
        for i in range(n):
            old = f"{stack}.{i}" if stack else str(i)
            if old in gone:
                out[old] = ""
                continue
            new = f"{stack}.{j}" if stack else str(j)
            if new != old:
                out[old] = new
            j += 1
    return out


def remove_blocks_(model: nn.Module, fqns: Iterable[str], counted: dict[str, str] | None = None) -> None:
    """Remove the blocks at ``fqns`` in place. Entries of a list whose length a config field sets
    (``counted``: list FQN -> dotted field, from ``layer_fields``) leave it, and the config follows;
    others become ``nn.Identity`` in an ``nn.Sequential`` and ``Skip`` elsewhere."""
    counted = layer_fields(model) if counted is None else counted
    by_parent: dict[str, list[str]] = {}
    for fqn in fqns:
        parent, _, name = fqn.rpartition(".")
        by_parent.setdefault(parent, []).append(name)
    for parent, names in sorted(by_parent.items()):
        holder = model.get_submodule(parent)
        if parent in counted and isinstance(holder, nn.ModuleList):
            gone = sorted(int(n) for n in names)
            _drop_(holder, set(gone))
            _config_drop_(model, counted[parent], gone)
        else:
            for name in names:
                holder._modules[name] = nn.Identity() if isinstance(holder, nn.Sequential) else Skip()


def _config_drop_(model: nn.Module, dotted: str, gone: list[int]) -> None:
    """The layer count ``dotted`` loses ``gone``; per-layer lists beside it (``layer_types``) lose
    those entries, in the live config and in the base a per-layer reload builds from."""
    from .config import _set, hf_config

    cfg = hf_config(model)
    *path, field = dotted.split(".")
    owners = [cfg]
    record = getattr(cfg, "graphprune", None)
    if record is not None:
        owners.append(record["base"])
    for owner in owners:
        for part in path:
            owner = owner[part] if isinstance(owner, dict) else getattr(owner, part)
        _drop_fields_(owner, field, gone)


def _drop_fields_(owner: Any, field: str, gone: list[int]) -> None:
    get = owner.get if isinstance(owner, dict) else lambda k, d=None: getattr(owner, k, d)
    put = owner.__setitem__ if isinstance(owner, dict) else lambda k, v: setattr(owner, k, v)
    n = get(field)
    items = owner.items() if isinstance(owner, dict) else vars(owner).items()
    for key, value in list(items):
        if isinstance(value, (list, tuple)) and len(value) == n and not key.startswith("_"):
            put(key, type(value)(v for i, v in enumerate(value) if i not in gone))
    put(field, n - len(gone))


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


def layer_fields(model: nn.Module) -> dict[str, str]:
    """For each ``ModuleList`` whose length a field of the model's HF config sets, that field (dotted
    for nested configs). Found by building the model on the meta device with the field one smaller
    and seeing which list got shorter, so encoder and decoder layer counts of equal value are told
    apart without knowing their names.

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
                fresh = type(model)._from_config(trial)
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
