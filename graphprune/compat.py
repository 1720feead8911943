"""Trace stage helper: shims for torch releases whose export machinery lags behind their kernels.

Each shim is a context manager used around ``torch.export`` only, switched on by a feature probe
(does the gap exist in the installed torch?), never by a version number, and undone on exit.
``quiet_export`` keeps a failed export's graph dump off stderr.
"""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import sys
import warnings
from typing import Any, Iterator

import torch
from torch import nn


def _grouped_mm_shape(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor | None = None,
                      bias: torch.Tensor | None = None, out_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Output of ``aten._grouped_mm`` for the four operand layouts its docs list (2D operands are
    cut into groups by ``offs``), with no dtype or stride checks: ``trace`` runs the real kernel on
    the same inputs first, so only the shape is needed here."""
    if a.dim() == 2 and b.dim() == 2:
        shape = (offs.size(0), a.size(0), b.size(1))
    elif a.dim() == 2:
        shape = (a.size(0), b.size(-1))
    elif b.dim() == 2:
        shape = (a.size(1), b.size(-1))
    else:
        shape = (a.size(0), a.size(1), b.size(-1))
    return a.new_empty(shape, dtype=out_dtype or a.dtype)


@functools.cache
def grouped_mm_meta_rejects_float32() -> bool:
    """True where ``torch._grouped_mm`` runs float32 on the CPU but its meta kernel (what export
    computes shapes with) refuses it, as in torch 2.14: transformers' MoE experts then trace only
    in bfloat16.

    >>> isinstance(grouped_mm_meta_rejects_float32(), bool)
    True
    """
    if not hasattr(torch, "_grouped_mm"):
        return False
    offs = torch.tensor([2, 4], dtype=torch.int32)
    a, b = torch.zeros(4, 8), torch.zeros(2, 8, 4)
    try:
        torch._grouped_mm(a, b, offs=offs)
    except Exception:  # noqa: BLE001 - no float32 CPU kernel: nothing to trace either
        return False
    try:
        torch._grouped_mm(a.to("meta"), b.to("meta"), offs=offs.to("meta"))
    except RuntimeError:
        return True
    return False


@contextlib.contextmanager
def export_shims() -> Iterator[None]:
    """Meta kernels that accept what the installed torch's real kernels accept, for one export.

    >>> with export_shims():
    ...     pass
    """
    if not grouped_mm_meta_rejects_float32():
        yield
        return
    # export's fake tensors reach a meta kernel two ways: the dispatcher's Meta key and, with the
    # python dispatcher on, the op's python kernel table; both are swapped for this export only
    op = torch.ops.aten._grouped_mm.default
    key = torch._C.DispatchKey.Meta
    saved = op.py_kernels.get(key)
    lib = torch.library.Library("aten", "IMPL")
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*[Oo]verrid.*")
            lib.impl("_grouped_mm", _grouped_mm_shape, "Meta", allow_override=True)
        op.py_kernels[key] = _grouped_mm_shape
        op._dispatch_cache.clear()
        yield
    finally:
        if saved is None:
            op.py_kernels.pop(key, None)
        else:
            op.py_kernels[key] = saved
        op._dispatch_cache.clear()
        lib._destroy()  # the dispatcher falls back to torch's own meta kernel


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """torch.export prints the partial graph of a failed export on stderr (thousands of lines for
    a detector) and logs its classification; the error we raise says what matters. What an export
    that succeeds writes there (warnings) is passed on."""
    logger = logging.getLogger("torch.export")
    level, buffer = logger.level, io.StringIO()
    logger.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(buffer), warnings.catch_warnings():
            # nn.LSTM / nn.GRU refresh their own flat-weight list in forward: torch's code, nothing
            # the user can or should change
            warnings.filterwarnings("ignore", message=r"The tensor attributes \S*_flat_weights\[", category=UserWarning)
            yield
        sys.stderr.write(buffer.getvalue())
    finally:
        logger.setLevel(level)


def compiled_inner(model: Any) -> nn.Module | None:
    """The module a ``torch.compile``'d one wraps (``OptimizedModule._orig_mod``), else None. Read
    by name, so a plain model never imports torch._dynamo."""
    if type(model).__name__ == "OptimizedModule" and isinstance(getattr(model, "_orig_mod", None), nn.Module):
        return model._orig_mod
    return None


def recompiled(compiled: nn.Module, pruned: nn.Module) -> nn.Module:
    """``pruned`` wrapped as ``compiled`` wraps its module (same class, same compile settings), or
    ``pruned`` itself with a warning where this torch keeps those settings elsewhere."""
    if pruned is compiled._orig_mod:
        return compiled  # pruned in place: dynamo re-compiles on the new shapes
    ctx = getattr(compiled, "dynamo_ctx", None)
    if ctx is None:
        warnings.warn("graphprune: the pruned model is returned uncompiled (this torch keeps its compile "
                      "settings elsewhere); call torch.compile on it again")
        return pruned
    return type(compiled)(pruned, ctx)
