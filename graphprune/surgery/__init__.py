"""Stage 6, surgery: slice tensors per plan, then let a slicer per module type fix its attributes."""
from . import blocks, hf, mha, modules  # noqa: F401  (register surgeons, the torch.nn and loaded transformers slicers)
from .core import SLICERS, apply_plan_, apply_plan_shared_, register_slicer
from .mha import PrunedMultiheadAttention
from .tensors import shared_copy, unshare_

__all__ = ["SLICERS", "PrunedMultiheadAttention", "apply_plan_", "register_slicer"]
