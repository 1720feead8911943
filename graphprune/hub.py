"""Loading pruned Hugging Face models: check a config against the weights, rebuild per-layer widths.

With ``uniform=True`` the pruned model's config describes it and stock ``from_pretrained`` loads the
saved folder. With per-layer widths it cannot; ``graphprune.from_pretrained`` builds the model from
the base config recorded in ``config.graphprune``, gives every pruned tensor its saved shape, and
loads the weights. Everything read from the folder is checked first (``graphprune.record``): only
safetensors weights, a model class of transformers, a record whose every field has its type and
fits the base model; errors name the folder and the field, never a raw KeyError from inside.
The modules are built from the base config and then read the saved one, so its head sizes, widths
and layer counts must also fit what the record rebuilds (``check_widths``, ``check_layer_counts``):
an edited field would otherwise give a model that runs and computes something else.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .checkpoint import INDEX, checked_index
from .errors import GraphPruneError, LoadError, PlanError
from .plan import Plan
from .record import read_record, reshape_
from .surgery.blocks import layer_fields
from .widths import FIELDS, _head_dim


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
    try:
        with torch.device("meta"):
            fresh = type(model)._from_config(config)
    except Exception as err:  # noqa: BLE001 - the model's own __init__ rejects the widths (BERT: heads | hidden)
        return [f"{type(model).__name__} cannot be built from that config: {_first_line(err)}"]
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

    ``model_class`` defaults to the class named in ``config.architectures`` (a model class of
    transformers, nothing else); ``kwargs`` go to transformers' ``from_pretrained``. Only
    safetensors weights are read (a ``.bin`` file is a pickle; pass ``use_safetensors=False``
    yourself for a folder you trust). Folders without a ``graphprune`` record load as usual.
    """
    import transformers

    kwargs.setdefault("use_safetensors", True)
    if kwargs["use_safetensors"] and (Path(path) / INDEX).is_file():
        checked_index(Path(path) / INDEX)  # transformers would follow a shard named '.bin' (a pickle) or '../x'
    config = _guarded(lambda: transformers.AutoConfig.from_pretrained(path), path, "config.json")
    raw = getattr(config, "graphprune", None)
    cls = model_class or _architecture(config, path, needed=raw is not None)
    if raw is None:
        return _guarded(lambda: cls.from_pretrained(path, **kwargs), path, "the model")
    config.graphprune = read_record(raw, f"{path}/config.json: graphprune")
    model = _guarded(lambda: _rebuilding(cls, path).from_pretrained(path, config=config, **kwargs), path, "the model")
    model.__class__ = cls  # the rebuilding subclass only served construction
    return model.eval()


def _architecture(config: Any, path: str, needed: bool) -> type:
    """The model class ``config.architectures[0]`` names, if it is one of transformers' model classes."""
    import transformers

    names = getattr(config, "architectures", None)
    if not names:
        if needed:
            raise LoadError(f"{path}/config.json names no architecture (field 'architectures'); pass "
                            f"model_class= (e.g. transformers.LlamaForCausalLM)")
        return transformers.AutoModel
    name = names[0] if isinstance(names, (list, tuple)) else names
    cls = getattr(transformers, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)):
        raise LoadError(f"{path}/config.json field 'architectures'[0] is {name!r}, which is not a model class of "
                        f"transformers; fix config.json or pass model_class=")
    return cls


def _guarded(load: Any, path: str, what: str) -> Any:
    """Run a transformers loader; its errors become one ``LoadError`` naming the folder and the fix."""
    try:
        return load()
    except GraphPruneError:
        raise
    except Exception as err:  # noqa: BLE001 - transformers raises many types for a bad folder
        hint = ("graphprune reads only safetensors weights (a .bin file is a pickle, never unpickled); if you "
                "trust the folder, load it once with transformers' from_pretrained(..., use_safetensors=False) "
                "and save_pretrained() it" if "safetensors" in str(err) else
                "check that the folder was written by save_pretrained and that config.json is intact")
        raise LoadError(f"cannot load {what} from {path!r}: {type(err).__name__}: {_first_line(err)}; {hint}") from err


def _first_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0][:300] if lines else ""


def _rebuilding(cls: type, path: str) -> type:
    """A subclass of ``cls`` that builds the base model, gives recorded tensors their pruned shapes
    and then takes on the pruned config, so transformers' own loader (key renames, shards, dtypes,
    tied weights) fills it."""

    def __init__(self, config: Any, *args: Any, **kwargs: Any) -> None:
        record = config.graphprune
        base = _guarded(lambda: type(config).from_dict(record["base"]), path, "the base config in config.json")
        base._attn_implementation = getattr(config, "_attn_implementation", None)
        check_widths(config, base, f"{path}/config.json")
        cls.__init__(self, base, *args, **kwargs)
        counts = layer_fields(self, cls)  # on the base: which config field sets which layer list's length
        reshape_(self, record, f"{path}/config.json: graphprune")
        check_layer_counts(self, config, counts, f"{path}/config.json")
        _adopt(base, config)  # submodules hold `base`: give it the pruned values, as in the pruned model

    return type(cls.__name__, (cls,), {"__init__": __init__, "__module__": cls.__module__})


def check_widths(config: Any, base: Any, where: str) -> None:
    """The pruned config's widths against the base config it was pruned from (``PlanError`` naming
    the field). The modules are built from the base and then read the pruned config, so an edited
    field would go unnoticed where a stock loader fails on shapes: a head size other than the base's
    (graphprune never changes it) would recompute rotary tables for heads the weights do not have,
    and a width field may only be the base's or smaller.

    >>> import transformers
    >>> base = transformers.LlamaConfig(hidden_size=32, num_attention_heads=4, intermediate_size=64)
    >>> check_widths(transformers.LlamaConfig(hidden_size=32, num_attention_heads=4, head_dim=2), base, "x")
    Traceback (most recent call last):
    graphprune.errors.PlanError: x field 'head_dim' is 2, but the model was pruned from one with heads of 8 ...
    """
    pairs = [("", config, base)] + [(f"{k}.", v, getattr(base, k, None)) for k, v in vars(config).items()
                                    if hasattr(v, "to_dict") and hasattr(getattr(base, k, None), "to_dict")]
    for prefix, cfg, was in pairs:
        have, want = _head_dim(cfg), _head_dim(was)
        if want is not None and have != want:
            raise PlanError(f"{where} field '{prefix}head_dim' is {have}, but the model was pruned from one with "
                            f"heads of {want} (graphprune keeps head sizes); restore it to {want}")
        for name in (n for names in FIELDS.values() for n in names):
            old, new = getattr(was, name, None), getattr(cfg, name, None)
            if type(old) is int and new != old and not (type(new) is int and 1 <= new < old):
                raise PlanError(f"{where} field '{prefix}{name}' is {new!r}, which no pruning of the base's {old} "
                                f"gives (widths only shrink); restore it or save the model again")


def check_layer_counts(model: nn.Module, config: Any, counts: dict[str, str], where: str) -> None:
    """Each layer-count field of the pruned config (``counts``: layer list -> field) against the
    list it counts, once the recorded removals are made: transformers runs
    ``layers[:config.num_hidden_layers]``, so a smaller count would skip layers without an error."""
    for fqn, dotted in counts.items():
        have = functools.reduce(getattr, dotted.split("."), config)
        want = len(model.get_submodule(fqn))
        if have != want:
            raise PlanError(f"{where} field '{dotted}' is {have!r}, but the model has {want} layers in {fqn}; "
                            f"restore it to {want}")


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
