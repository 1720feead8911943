"""Weight masks, a sibling of the structural pipeline: unstructured and N:M sparsity through
``torch.nn.utils.parametrize``, scored per weight (magnitude, Wanda, your own), baked by
``make_dense_`` or compressed for sparse tensor cores by ``to_semi_structured_``.

>>> import torch, graphprune
>>> from torch import nn
>>> m = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
>>> _ = graphprune.sparsify_(m, 0.5)   # the head, m[2], stays dense
>>> float((m[0].weight == 0).float().mean()), float((m[2].weight == 0).float().mean())
(0.5, 0.0)
"""
from .config import SparsityConfig
from .layout import LAYOUTS, Layout, layout_of, register_layout
from .masks import Mask, MaskedLayer, SparsityReport, is_masked, make_dense_, sparsify_
from .pattern import Pattern, parse_pattern
from .scorers import MASK_SCORERS, MaskContext, list_mask_scorers, register_mask_scorer
from .semi import to_semi_structured_

__all__ = ["LAYOUTS", "Layout", "MASK_SCORERS", "Mask", "MaskContext", "MaskedLayer", "Pattern", "SparsityConfig", "SparsityReport",
           "is_masked", "layout_of", "list_mask_scorers", "make_dense_", "parse_pattern", "register_layout",
           "register_mask_scorer", "sparsify_", "to_semi_structured_"]
