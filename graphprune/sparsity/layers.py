"""Masks, which layers: every module with a registered layout, except those that must stay dense
(embeddings, norms, the output head, tied weights, ``ignore=``), each listed with the reason."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from ..config import _ignore_names
from ..inputs import default_inputs, normalize_inputs, run_model
from .layout import Layout, layout_of

NORMS = (_NormBase, nn.GroupNorm, nn.LayerNorm, nn.RMSNorm)


@dataclass(frozen=True, eq=False)
class Candidate:
    fqn: str
    module: nn.Module
    weight: torch.Tensor  # effective (masked) weight, detached
    layout: Layout


def choose_layers(model: nn.Module, ignore: Iterable[str | type], head: bool,
                  example: Any) -> tuple[list[Candidate], list[tuple[str, str]]]:
    """(layers to mask, [(fqn, why it stays dense)]) in module order."""
    from .masks import is_masked

    ignore = _ignore_names(ignore)
    names = _names_of_params(model)
    heads = set() if head else output_heads(model, example)
    chosen, dense = [], []
    for fqn, mod in model.named_modules():
        chain = getattr(getattr(mod, "parametrizations", None), "weight", None)
        if chain is not None and not is_masked(mod):
            dense.append((fqn, "its weight has another parametrization"))
            continue
        raw = chain.original if chain is not None else mod._parameters.get("weight")
        if not isinstance(raw, nn.Parameter):
            continue
        why = _why_dense(model, fqn, mod, raw, ignore, heads, names)
        if why:
            dense.append((fqn, why))
        else:
            chosen.append(Candidate(fqn, mod, mod.weight.detach(), layout_of(mod)))
    return chosen, dense


def _why_dense(model: nn.Module, fqn: str, mod: nn.Module, raw: nn.Parameter, ignore: tuple[str, ...],
               heads: set[str], names: dict[int, list[str]]) -> str | None:
    if _ignored(model, fqn, ignore):
        return "ignored"
    if fqn in heads:
        return "output head (head=True masks it)"
    if isinstance(mod, nn.Embedding | nn.EmbeddingBag):
        return "embedding"
    if isinstance(mod, NORMS):
        return "norm"
    if len(names[id(raw)]) > 1:
        return f"tied: {', '.join(n for n in names[id(raw)] if not n.startswith(fqn + '.'))} share the weight"
    if raw.dim() < 2:
        return "a 1-d weight (a norm or a scale)"
    if not raw.is_floating_point():
        return f"{raw.dtype} weight"
    if layout_of(mod) is None:
        return (f"no layout registered for {type(mod).__qualname__} (graphprune.sparsity.register_layout "
                f"says which weight axis reads the input)")
    return None


def _names_of_params(model: nn.Module) -> dict[int, list[str]]:
    """Every name of every parameter (a masked weight under its parametrization's ``original``)."""
    out: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        out.setdefault(id(p), []).append(name.replace(".parametrizations.weight.original", ".weight"))
    return out


def _ignored(model: nn.Module, fqn: str, ignore: tuple[str, ...]) -> bool:
    if any(fqn == i or fqn.startswith(i + ".") for i in ignore):
        return True
    path = fqn.split(".") if fqn else []
    return any(type(model.get_submodule(".".join(path[:k]))).__qualname__ in ignore for k in range(len(path) + 1))


def output_heads(model: nn.Module, example: Any) -> set[str]:
    """Modules whose output is the model's prediction: the HF output embeddings or timm classifier
    when the model names them, else the last weighted leaf module to run on ``example`` (or, with
    no inputs at hand, the last one registered)."""
    named = {id(m): n for n, m in model.named_modules()}
    for getter in ("get_output_embeddings", "get_classifier"):
        if callable(getattr(model, getter, None)):
            try:
                found = getattr(model, getter)()
            except (NotImplementedError, AttributeError, TypeError):
                continue
            return {named[id(found)]} if isinstance(found, nn.Module) and id(found) in named else set()
    weighted = [(n, m) for n, m in model.named_modules()
                if next(m.children(), None) is None and isinstance(getattr(m, "weight", None), torch.Tensor)]
    order = _run_order(model, weighted, example)
    return {order[-1]} if order else set()


def _run_order(model: nn.Module, weighted: list[tuple[str, nn.Module]], example: Any) -> list[str]:
    try:
        args, kwargs = normalize_inputs(example) if example is not None else default_inputs(model)
    except Exception:  # noqa: BLE001 - no inputs: registration order is the best guess left
        return [n for n, _ in weighted]
    seen: list[str] = []
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: seen.append(n)) for n, m in weighted]
    try:
        run_model(model, (args, kwargs))  # eval mode: a BatchNorm must not learn from this run
    except Exception:  # noqa: BLE001 - inputs that do not fit: registration order, as without any
        return [n for n, _ in weighted]
    finally:
        for h in handles:
            h.remove()
    return seen or [n for n, _ in weighted]
