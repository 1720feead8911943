"""Masks, deployment: swap 2:4-masked Linear weights for ``torch.sparse.to_sparse_semi_structured``
tensors, which sparse tensor cores multiply (CUDA, compute capability 8.0+). Everything is checked
before the first weight changes, and an error names what is missing."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..errors import SparsityError
from .masks import is_masked


def to_semi_structured_(model: nn.Module) -> nn.Module:
    """Replace the weight of every ``nn.Linear`` whose mask is 2:4 (or 1:4) by its compressed
    semi-structured form, for inference (``requires_grad=False``); other masked layers stay masked.
    Needs torch with ``torch.sparse.to_sparse_semi_structured``, a CUDA GPU of compute capability
    8.0 or newer, the layers on it, and a dtype and shape the kernel backend accepts (fp16/bf16, both
    dims multiples of its block); otherwise ``SparsityError`` lists what is missing and nothing changes.

    >>> from graphprune.sparsity import sparsify_
    >>> m = sparsify_(nn.Sequential(nn.Linear(64, 64)), pattern="2:4", head=True)
    >>> try:  # here: no CUDA GPU; on one, these CPU float32 weights are named instead
    ...     to_semi_structured_(m)
    ... except SparsityError as err:
    ...     print(type(err).__name__)
    SparsityError
    """
    layers = [(fqn, m) for fqn, m in sorted(model.named_modules()) if _two_four(m)]
    if not layers:
        raise SparsityError("no nn.Linear carries a 2:4 mask: call graphprune.sparsify_(model, pattern='2:4') first")
    convert = _backend()
    wrong = [f"{fqn}: {why}" for fqn, m in layers if (why := _unfit(m, convert))]
    if wrong:
        raise SparsityError(f"{len(wrong)} 2:4 layer(s) cannot be compressed, nothing was changed: "
                            f"{'; '.join(wrong[:4])}. Move the model with model.half().cuda() (or bfloat16), or "
                            f"leave those layers dense with sparsify_(..., ignore=[...])")
    for _, m in layers:
        parametrize.remove_parametrizations(m, "weight", leave_parametrized=True)
        m.weight = nn.Parameter(convert(m.weight.detach().contiguous()), requires_grad=False)
    return model


def _two_four(m: nn.Module) -> bool:
    if not isinstance(m, nn.Linear) or not is_masked(m):
        return False
    n, _, m_ = m.parametrizations.weight[0].pattern.partition(":")
    return m_ == "4" and n.isdigit() and int(n) <= 2


def _backend() -> Any:
    """The converter, after checking what the machine has; an error says what it lacks."""
    convert = getattr(torch.sparse, "to_sparse_semi_structured", None)
    if convert is None:
        raise SparsityError(f"torch {torch.__version__} has no torch.sparse.to_sparse_semi_structured "
                            f"(added in torch 2.1); upgrade torch")
    if not torch.cuda.is_available():
        raise SparsityError(f"2:4 weights need a CUDA GPU of compute capability 8.0+ (Ampere or newer) for "
                            f"sparse tensor cores; this machine has none (torch {torch.__version__}, "
                            f"torch.cuda.is_available() is False). The masked model runs as it is, densely")
    major, minor = torch.cuda.get_device_capability()
    if major < 8:
        raise SparsityError(f"2:4 weights need compute capability 8.0+ (Ampere or newer); "
                            f"{torch.cuda.get_device_name()} has {major}.{minor}")
    return convert


def _constraints() -> dict:
    """Per dtype, the smallest block the backend torch picks (cuSPARSELt if built in, else CUTLASS)
    compresses: read from torch itself, so the check follows its version."""
    base = torch.sparse.SparseSemiStructuredTensor
    cls = (torch.sparse.SparseSemiStructuredTensorCUTLASS
           if getattr(base, "_FORCE_CUTLASS", False) or not torch.backends.cusparselt.is_available()
           else torch.sparse.SparseSemiStructuredTensorCUSPARSELT)
    return getattr(cls, "_DTYPE_SHAPE_CONSTRAINTS", {})


def _unfit(m: nn.Linear, convert: Any) -> str | None:
    w = m.weight
    if not w.is_cuda:
        return f"weight is on {w.device}, not a CUDA device"
    limits = _constraints()
    if limits and w.dtype not in limits:
        return f"dtype {w.dtype} (the kernels take {', '.join(str(d) for d in limits)})"
    c = limits.get(w.dtype)
    rows, cols = w.shape
    if c is not None and (rows % c.sparse_min_rows or cols % c.sparse_min_cols):
        return f"shape {tuple(w.shape)} is not a multiple of ({c.sparse_min_rows}, {c.sparse_min_cols})"
    return None
