"""Masks, layouts: which weight axis a layer reads its input along and which one it writes, per
module type (found along the MRO, like the slicers), so patterns and criteria never guess."""
from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable

from torch import nn
from torch.nn.modules.conv import _ConvNd

from ..registry import Registry

LAYOUTS = Registry("layout")


@dataclass(frozen=True)
class Layout:
    """``in_axis``/``out_axis`` of the weight, the dim of the module's first input that holds its
    channels (``input_dim``), and the conv ``groups`` (input channel j of weight row o is then
    ``(o // (out / groups)) * (in / groups) + j``)."""

    in_axis: int
    out_axis: int
    input_dim: int
    groups: int = 1


def register_layout(*types: type, override: bool = False) -> Callable:
    """Register ``fn(module) -> Layout | None`` for module types whose ``weight`` can be masked.

    >>> @register_layout(nn.Bilinear, override=True)
    ... def bilinear(m): return None  # no single input axis: stays dense
    >>> layout_of(nn.Bilinear(2, 2, 3)) is None
    True
    """
    return LAYOUTS.register(*types, override=override)


def layout_of(module: nn.Module) -> Layout | None:
    """The module's layout, or None where no layout is registered for its type.

    >>> layout_of(nn.Linear(4, 3)), layout_of(nn.LayerNorm(4))
    (Layout(in_axis=1, out_axis=0, input_dim=-1, groups=1), None)
    """
    _register_loaded()
    fn = LAYOUTS.lookup_mro(module)
    return fn(module) if fn is not None else None


@register_layout(nn.Linear)
def linear(m: nn.Linear) -> Layout:
    return Layout(in_axis=1, out_axis=0, input_dim=-1)


@register_layout(_ConvNd)
def conv(m: _ConvNd) -> Layout:
    """(out, in/groups, *k), or transposed (in, out/groups, *k); the input's channels are dim 1."""
    return Layout(0, 1, 1, m.groups) if m.transposed else Layout(1, 0, 1, m.groups)


def hf_conv1d(m: nn.Module) -> Layout:
    """GPT-2's ``Conv1D`` keeps its weight as (in, out)."""
    return Layout(in_axis=0, out_axis=1, input_dim=-1)


def _register_loaded() -> None:
    """transformers is optional and slow to import: register its types once a model brought it in."""
    conv1d = getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)
    if conv1d is not None and conv1d not in LAYOUTS:
        register_layout(conv1d)(hf_conv1d)
