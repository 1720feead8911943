"""Surgery for a Hugging Face ``config``: new width fields plus a record that can rebuild the model.

``config.graphprune`` holds the config the model was built from (``base``), the shape of every tensor
pruning changed and the module attributes it set; ``save_pretrained`` writes it into config.json,
and ``graphprune.from_pretrained`` rebuilds per-layer widths from it.
"""
from __future__ import annotations

import copy
from typing import Any

from torch import nn

from ..plan import Plan
from ..record import RECORD_VERSION
from ..validate import fingerprint


def hf_config(model: nn.Module) -> Any:
    """The model's Hugging Face config, or None."""
    cfg = getattr(model, "config", None)
    return cfg if hasattr(cfg, "to_dict") and hasattr(cfg, "save_pretrained") else None


def config_objects(cfg: Any) -> list[Any]:
    """The config and its nested configs (text_config, vision_config, ...)."""
    return [cfg] + [v for v in vars(cfg).values() if hasattr(v, "to_dict") and v is not cfg]


def start_record_(model: nn.Module) -> None:
    """Give ``model.config`` a ``graphprune`` record holding the config as it is now, before surgery
    sets any attribute (a module may write its width into the shared config: Phi-3's heads)."""
    cfg = hf_config(model)
    if cfg is not None:
        start_config_record_(cfg, fingerprint(model))


def start_config_record_(cfg: Any, model_print: str = "") -> None:
    """The ``graphprune`` record of a config (kept if it has one: a pruned model pruned again), with
    the fingerprint of the model it was built for when known (a reload then checks it)."""
    if getattr(cfg, "graphprune", None) is None:
        cfg.graphprune = {"version": RECORD_VERSION, "base": cfg.to_dict(), "shapes": {}, "attrs": {}}
        if model_print:
            cfg.graphprune["fingerprint"] = model_print


def sync_config_(model: nn.Module, plan: Plan) -> None:
    """Write the plan's width fields into ``model.config`` and extend its ``graphprune`` record
    (``start_record_`` made it before surgery began)."""
    cfg = hf_config(model)
    if cfg is None:
        return
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    record_plan_(cfg, plan, {f: list(tensors[f].shape) for f in plan.keep if f in tensors})


def record_plan_(cfg: Any, plan: Plan, shapes: dict[str, list[int]]) -> None:
    """Set the plan's width fields on a config and record the pruned ``shapes`` and attributes, as
    in-memory surgery does; ``graphprune.prune_checkpoint`` writes a folder's config.json the same way."""
    # a new dict, so a rollback that restores the config's attributes also restores the record
    record = copy.deepcopy(cfg.graphprune)
    old = {dotted: _set(cfg, dotted, value) for dotted, value in plan.model_config.items()}
    if not _valid(cfg):
        if plan.config.get("uniform"):
            raise ValueError(f"{type(cfg).__name__} rejects the uniform widths {plan.model_config}: "
                             f"{_why_invalid(cfg)}; pass round_to= (e.g. 8) or exclude a kind with prune=")
        # per-layer widths: the standard fields cannot describe the model anyway; keep them valid
        # and let the record (below) carry the real shapes
        for dotted, value in old.items():
            _set(cfg, dotted, value)
    record["shapes"].update(shapes)
    for fqn, attrs in plan.attrs.items():
        record["attrs"].setdefault(fqn, {}).update({a: list(v) if isinstance(v, tuple) else v for a, v in attrs.items()})
    cfg.graphprune = record


def _set(cfg: Any, dotted: str, value: Any) -> Any:
    *path, name = dotted.split(".")
    for part in path:
        cfg = getattr(cfg, part)
    previous = getattr(cfg, name, None)
    setattr(cfg, name, value)
    return previous


def _valid(cfg: Any) -> bool:
    return _why_invalid(cfg) is None


def _why_invalid(cfg: Any) -> str | None:
    """transformers 5 configs validate themselves (e.g. hidden size a multiple of the head count)."""
    validate = getattr(cfg, "validate", None)
    if validate is None:
        return None
    try:
        validate()
    except Exception as err:  # noqa: BLE001 - any validator failure means the config cannot be saved
        return str(err).strip().splitlines()[-1]
    return None
