"""Loading pruned Hugging Face models: check a config against the weights, rebuild per-layer widths.

With ``uniform=True`` the pruned model's config describes it and stock ``from_pretrained`` loads the
saved folder. With per-layer widths it cannot; ``graphprune.from_pretrained`` builds the model from
the base config recorded in ``config.graphprune``, gives every pruned tensor its saved shape, and
loads the weights.
"""
from __future__ import annotations

import glob
import os
from typing import Any

import torch
from torch import nn

from .errors import GraphPruneError
from .plan import Plan
from .surgery import apply_plan_


def config_mismatches(model: nn.Module) -> list[str]:
    """Tensors whose shape differs from what ``type(model)(model.config)`` would build (empty: consistent).

    >>> import transformers
    >>> cfg = transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...                               intermediate_size=37, vocab_size=50)
    >>> config_mismatches(transformers.BertModel(cfg))
    []
    """
    try:
        config = _without_record(model.config)
    except Exception as err:  # noqa: BLE001 - transformers validates configs in many ways
        return [f"the config cannot be built: {str(err).strip().splitlines()[-1]}"]
    with torch.device("meta"):
        fresh = type(model)._from_config(config)
    want = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    have = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    return [f"{k}: config builds {want.get(k)}, weights are {have.get(k)}"
            for k in sorted(want.keys() | have.keys()) if want.get(k) != have.get(k)]


def _without_record(cfg: Any) -> Any:
    clone = type(cfg).from_dict({k: v for k, v in cfg.to_dict().items() if k != "graphprune"})
    clone._attn_implementation = getattr(cfg, "_attn_implementation", None) or "eager"
    return clone


def from_pretrained(path: str, model_class: Any = None, **config_overrides: Any) -> nn.Module:
    """Load a pruned model saved with ``save_pretrained``, whatever its per-layer widths.

    ``model_class`` defaults to the class named in ``config.architectures``. Folders of unpruned
    models (no ``graphprune`` record) load as usual.
    """
    import transformers

    config = transformers.AutoConfig.from_pretrained(path, **config_overrides)
    cls = model_class or getattr(transformers, (config.architectures or ["AutoModel"])[0])
    record = getattr(config, "graphprune", None)
    if record is None:
        return cls.from_pretrained(path, config=config)
    base = type(config).from_dict(record["base"])
    with _no_init():
        model = cls._from_config(base)
    apply_plan_(model, _shape_plan(model, record))
    model.config = config
    _load_weights(model, path)
    return model.eval()


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


def _no_init():
    from transformers.initialization import no_init_weights

    return no_init_weights()


def _load_weights(model: nn.Module, path: str) -> None:
    from safetensors.torch import load_file

    files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    if not files:
        raise GraphPruneError(f"no *.safetensors weights in {path!r}; save the model with save_pretrained(path)")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(f))
    missing, unexpected = model.load_state_dict(state, strict=False)
    model.tie_weights()
    tied = {n for n, _ in model.named_parameters(remove_duplicate=False)} - {n for n, _ in model.named_parameters()}
    missing = [k for k in missing if k not in tied and not _non_persistent(model, k)]
    if missing or unexpected:
        raise GraphPruneError(f"weights in {path!r} do not fit the rebuilt model: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")


def _non_persistent(model: nn.Module, fqn: str) -> bool:
    owner, _, name = fqn.rpartition(".")
    return name in getattr(model.get_submodule(owner), "_non_persistent_buffers_set", ())
