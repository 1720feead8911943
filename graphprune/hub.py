"""Loading pruned Hugging Face models: check a config against the weights, rebuild per-layer widths.

With ``uniform=True`` the pruned model's config describes it and stock ``from_pretrained`` loads the
saved folder. With per-layer widths it cannot; ``graphprune.from_pretrained`` builds the model from
the base config recorded in ``config.graphprune``, gives every pruned tensor its saved shape, and
loads the weights.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .plan import Plan
from .surgery import apply_plan_


def config_mismatches(model: nn.Module, plan: Plan | None = None) -> list[str]:
    """Tensors whose shape differs from what ``type(model)(model.config)`` builds (empty: consistent).
    With ``plan``, a dry run: the config and shapes the model would have after it (nothing changes).

    >>> import transformers
    >>> cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...                               intermediate_size=37, vocab_size=50)
    >>> config_mismatches(transformers.BertModel(cfg))
    []
    """
    from .surgery.config import _set, _why_invalid

    try:
        config = _without_record(model.config)
    except Exception as err:  # noqa: BLE001 - transformers validates configs in many ways
        return [f"the config cannot be built: {str(err).strip().splitlines()[-1]}"]
    for dotted, value in (plan.model_config if plan else {}).items():
        _set(config, dotted, value)
    why = _why_invalid(config)
    if why:
        return [f"the config cannot be built: {why}"]
    with torch.device("meta"):
        fresh = type(model)._from_config(config)
    want = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    have = {k: _kept_shape(v, plan.keep.get(k, {}) if plan else {}) for k, v in model.state_dict().items()}
    return [f"{k}: config builds {want.get(k)}, weights are {have.get(k)}"
            for k in sorted(want.keys() | have.keys()) if want.get(k) != have.get(k)]


def _kept_shape(t: torch.Tensor, dims: dict[int, list[int]]) -> tuple[int, ...]:
    return tuple(len(dims[d]) if d in dims else n for d, n in enumerate(t.shape))


def sync_derived_buffers_(model: nn.Module) -> list[str]:
    """Non-persistent buffers are not saved: a loader recomputes them from the config (Gemma's
    embedding scale is sqrt(hidden_size)). Give the pruned model the values a reload will have, so
    the saved model and the one in memory agree; returns the names that changed."""
    from transformers.initialization import no_init_weights

    with no_init_weights():
        fresh = type(model)._from_config(_without_record(model.config))
    fresh_buffers = dict(fresh.named_buffers())
    changed = []
    for name, buf in model.named_buffers():
        owner, _, leaf = name.rpartition(".")
        if leaf in model.get_submodule(owner)._non_persistent_buffers_set and name in fresh_buffers:
            new = fresh_buffers[name].to(buf.device, buf.dtype)
            if new.shape == buf.shape and not torch.equal(new, buf):
                buf.copy_(new)
                changed.append(name)
    return changed


def _without_record(cfg: Any) -> Any:
    clone = type(cfg).from_dict({k: v for k, v in cfg.to_dict().items() if k != "graphprune"})
    clone._attn_implementation = getattr(cfg, "_attn_implementation", None) or "eager"
    return clone


def from_pretrained(path: str, model_class: Any = None, **kwargs: Any) -> nn.Module:
    """Load a pruned model saved with ``save_pretrained``, whatever its per-layer widths.

    ``model_class`` defaults to the class named in ``config.architectures``; ``kwargs`` go to
    transformers' ``from_pretrained``. Folders without a ``graphprune`` record load as usual.
    """
    import transformers

    config = transformers.AutoConfig.from_pretrained(path)
    cls = model_class or getattr(transformers, (config.architectures or ["AutoModel"])[0])
    if getattr(config, "graphprune", None) is None:
        return cls.from_pretrained(path, **kwargs)
    model = _rebuilding(cls).from_pretrained(path, config=config, **kwargs)
    model.__class__ = cls  # the rebuilding subclass only served construction
    return model.eval()


def _rebuilding(cls: type) -> type:
    """A subclass of ``cls`` that builds the base model, gives recorded tensors their pruned shapes
    and then takes on the pruned config, so transformers' own loader (key renames, shards, dtypes,
    tied weights) fills it."""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        record = config.graphprune
        base = type(config).from_dict(record["base"])
        base._attn_implementation = getattr(config, "_attn_implementation", None)
        cls.__init__(self, base, *args, **kwargs)
        apply_plan_(self, _shape_plan(self, record))
        _adopt(base, config)  # submodules hold `base`: give it the pruned values, as in the pruned model

    return type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__})


def _adopt(target: Any, source: Any) -> None:
    """Copy a config's values into another config object in place, nested configs included; private
    state (the attention implementation transformers picked at construction) stays the target's."""
    for key, value in vars(source).items():
        if key.startswith("_"):
            continue
        inner = getattr(target, key, None) if hasattr(value, "to_dict") else None
        if inner is not None and hasattr(inner, "to_dict"):
            _adopt(inner, value)
        else:
            target.__dict__[key] = value


def _shape_plan(model: nn.Module, record: dict[str, Any]) -> Plan:
    """A plan that gives each recorded tensor its saved shape (which indices does not matter: the
    weights are loaded over them)."""
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    keep = {f: {d: list(range(n)) for d, n in enumerate(shape) if n != tensors[f].shape[d]}
            for f, shape in record["shapes"].items() if f in tensors}
    attrs = {f: {a: tuple(v) if isinstance(v, list) else v for a, v in av.items()} for f, av in record["attrs"].items()}
    n = sum(p.numel() for p in model.parameters())
    return Plan(keep={f: d for f, d in keep.items() if d}, attrs=attrs, removed={}, config={"rebuild": True},
                params_before=n, params_after=n)
