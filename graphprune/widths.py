"""Plan helper: named widths (HF config fields, module attributes) that must follow a plan.

Modules often store the widths they were built with (``hidden_size``, ``intermediate_size``,
``num_attention_heads``) and a Hugging Face ``config`` rebuilds the model from the same names. A
field follows the groups of its kind whose original width it counts: ``hidden_size`` the residual
stream, ``intermediate_size`` MLP neurons, ``num_attention_heads`` heads (a multiple of the unit count
under GQA). It changes only when every such group keeps the same fraction; otherwise (per-layer
widths) it keeps its value and the per-tensor shapes recorded in the config describe the model.
"""
from __future__ import annotations

from fractions import Fraction
from typing import Any

from torch import nn

from .coupling import HEAD_COUNT_ATTRS
from .groups import Group

FIELDS = {
    "hidden": ("hidden_size", "d_model", "n_embd", "embed_dim", "dim"),
    "mlp": ("intermediate_size", "ffn_dim", "d_ff", "n_inner", "hidden_dim", "encoder_ffn_dim", "decoder_ffn_dim",
            "moe_intermediate_size"),
    "heads": ("num_attention_heads", "num_key_value_heads", "encoder_attention_heads",
              "decoder_attention_heads", "num_heads", "n_head", "n_heads", "num_kv_heads"),
}


def new_value(value: Any, kind: str, changes: list[tuple[int, int]]) -> int | None:
    """The new value of a field counting ``changes`` [(old width, new width)], or None if unchanged
    or not one number (per-layer widths).

    >>> new_value(8, "heads", [(4, 2), (4, 2)])   # 8 query heads over 4 kv-head units, half kept
    4
    >>> new_value(128, "mlp", [(128, 64), (128, 96)]) is None
    True
    """
    if type(value) is not int:
        return None
    fits = [(w, n) for w, n in changes if (value % w == 0 if kind == "heads" else w == value)]
    scaled = {Fraction(value * n, w) for w, n in fits}
    if len(scaled) != 1 or all(w == n for w, n in fits):
        return None  # no group counted by it, per-layer widths, or nothing removed
    (only,) = scaled
    return int(only) if only.denominator == 1 else None


def width_changes(groups: list[Group], removed: dict[int, int], kind_of) -> dict[str, list[tuple[int, int]]]:
    """(old, new) widths of every group, by kind."""
    out: dict[str, list[tuple[int, int]]] = {k: [] for k in FIELDS}
    for g in groups:
        # a frozen layer width pins the field that counts it; the model's own input and output
        # widths (vocabulary, classes) are counted by other fields, even when the number is the same
        pinned = any(m.roles for m in g.members) and not str(g.frozen).startswith(("model input", "model output"))
        if g.frozen is None or pinned:
            out[kind_of(g)].append((g.width, g.width - removed.get(g.id, 0)))
    return out


def module_updates(model: nn.Module, groups: list[Group], removed: dict[int, int], kind_of,
                   skip: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Width attributes of submodules, each following the groups with members inside that module."""
    out: dict[str, dict[str, int]] = {}
    under = _groups_under(groups)
    for fqn, mod in model.named_modules():
        names = [(k, n) for k, ns in FIELDS.items() for n in ns if type(mod.__dict__.get(n)) is int]
        if not fqn or not names:
            continue
        inside = [groups[i] for i in sorted(under.get(fqn, ())) if _heads_here(groups[i], fqn)]
        changes = width_changes(inside, removed, kind_of)
        for k, name in names:
            value = new_value(mod.__dict__[name], k, changes[k])
            if value is not None and name not in skip.get(fqn, {}):
                out.setdefault(fqn, {})[name] = value
    return out


def _heads_here(g: Group, fqn: str) -> bool:
    """Heads that bind a head count belong to the module binding it: another module the group
    reaches (the residual stream a Swin-style block couples to its heads) keeps its own count."""
    counts = [a.fqn for a in g.attrs if a.attr.rsplit(".", 1)[-1].split("[")[0] in HEAD_COUNT_ATTRS]
    return g.unit != "head" or not counts or any(c == fqn or c.startswith(fqn + ".") for c in counts)


def _groups_under(groups: list[Group]) -> dict[str, set[int]]:
    """Module path -> indices of the groups with a member inside that module (one pass over the
    members' ancestors, instead of a scan of every group per module)."""
    out: dict[str, set[int]] = {}
    for i, g in enumerate(groups):
        for m in g.members:
            parts = m.fqn.split(".")
            for k in range(1, len(parts)):
                out.setdefault(".".join(parts[:k]), set()).add(i)
    return out


def config_updates(config: Any, groups: list[Group], removed: dict[int, int], kind_of) -> dict[str, int]:
    """New values of a Hugging Face config's width fields (only those all layers agree on), with
    nested configs (``text_config``, ``vision_config``) as dotted names."""
    if config is None or not hasattr(config, "to_dict"):
        return {}
    changes = width_changes(groups, removed, kind_of)
    out: dict[str, int] = {}
    for prefix, cfg in [("", config)] + [(f"{k}.", v) for k, v in vars(config).items() if hasattr(v, "to_dict")]:
        found = {f"{prefix}{n}": v for k, names in FIELDS.items() for n in names
                 if (v := new_value(getattr(cfg, n, None), k, changes[k])) is not None}
        head_dim = _head_dim(cfg)
        if found and head_dim is not None:
            # head_dim is kept; configs without the field derive it from hidden_size // heads, so
            # write it explicitly before either changes (most modules read config.head_dim first)
            found.setdefault(f"{prefix}head_dim", head_dim)
        out.update({k: v for k, v in found.items() if _settable(cfg, k.rsplit(".", 1)[-1])})
    return out


def _settable(cfg: Any, name: str) -> bool:
    """False for a read-only property (Falcon's ``head_dim`` is ``hidden_size // num_heads``)."""
    prop = getattr(type(cfg), name, None)
    return not isinstance(prop, property) or prop.fset is not None


def head_dim_follows_hidden(config: Any) -> bool:
    """True where the config computes ``head_dim`` from ``hidden_size`` and cannot be told otherwise
    (a read-only property): a pruned hidden size would make it describe heads the weights lack,
    and a reload recompute rotary tables of the wrong size.

    >>> import transformers
    >>> head_dim_follows_hidden(transformers.FalconConfig()), head_dim_follows_hidden(transformers.LlamaConfig())
    (True, False)
    """
    return hasattr(config, "hidden_size") and not _settable(config, "head_dim")


def _head_dim(config: Any) -> int | None:
    """One head size for every layer, or None where the config has none (Swin lists heads per stage).

    >>> import types
    >>> _head_dim(types.SimpleNamespace(hidden_size=64, num_attention_heads=4)), _head_dim(types.SimpleNamespace(num_heads=[2, 4]))
    (16, None)
    """
    if type(getattr(config, "head_dim", None)) is int and config.head_dim:
        return config.head_dim
    hidden, heads = getattr(config, "hidden_size", None), getattr(config, "num_attention_heads", None)
    if type(hidden) is int and type(heads) is int and heads > 0:
        return hidden // heads
    return None


def describes(config: Any, kind: str, width: int) -> bool:
    """Whether some width field of ``config`` (or a nested config) counts a group of this kind and width.

    >>> import transformers
    >>> cfg = transformers.BertConfig(hidden_size=64, intermediate_size=160, num_attention_heads=4)
    >>> describes(cfg, "mlp", 160), describes(cfg, "mlp", 64)
    (True, False)
    """
    configs = [config] + [v for v in vars(config).values() if hasattr(v, "to_dict")]
    values = [getattr(c, n, None) for c in configs for n in FIELDS[kind]]
    return any(type(v) is int and (v % width == 0 if kind == "heads" else v == width) for v in values)
