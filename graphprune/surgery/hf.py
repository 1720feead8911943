"""Slicers for Hugging Face transformers modules, where the torch.nn slicers do not apply.

transformers is optional and slow to import, so nothing here imports it: the slicers are registered
once it is loaded (a model holding one of its modules implies it is), see ``register_loaded``.
"""
from __future__ import annotations

import sys

from torch import nn

from .core import SLICERS, register_slicer


def conv1d(m: nn.Module) -> None:
    """GPT-2's ``Conv1D`` keeps its weight transposed, (in, out); its forward reshapes to ``nf``."""
    m.nx, m.nf = m.weight.shape


def register_loaded() -> None:
    """Register the slicers of the transformers classes already imported (idempotent, never imports).

    >>> register_loaded()
    """
    utils = sys.modules.get("transformers.pytorch_utils")
    conv = getattr(utils, "Conv1D", None)
    if conv is not None and conv not in SLICERS:
        register_slicer(conv)(conv1d)


register_loaded()
