"""Tests for graphprune/compat.py: export shims for torch releases whose meta kernels lag behind."""
from __future__ import annotations

import pytest
import torch

from graphprune.compat import _grouped_mm_shape, export_shims, grouped_mm_meta_rejects_float32

OFFS = torch.tensor([4, 8], dtype=torch.int32)
LAYOUTS = {  # (mat_a, mat_b, offs): the four layouts torch.nn.functional.grouped_mm documents;
    # sizes are multiples of 4 floats because the kernels want rows of 16 bytes
    "2d x 3d": (torch.randn(8, 8), torch.randn(2, 8, 4), OFFS),
    "3d x 3d": (torch.randn(2, 4, 8), torch.randn(2, 8, 4), None),
    "2d x 2d": (torch.randn(4, 8), torch.randn(8, 12), OFFS),
    "3d x 2d": (torch.randn(2, 4, 8), torch.randn(8, 8), OFFS),
}


@pytest.mark.skipif(not hasattr(torch, "_grouped_mm"), reason="this torch has no grouped_mm")
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_shim_shape_is_the_real_kernels_shape(layout: str) -> None:
    a, b, offs = LAYOUTS[layout]
    try:
        real = torch._grouped_mm(a, b, offs=offs)
    except RuntimeError as err:
        pytest.skip(f"no float32 CPU kernel for {layout} here: {err}")
    fake = _grouped_mm_shape(a.to("meta"), b.to("meta"), offs)
    assert fake.shape == real.shape and fake.dtype == real.dtype


@pytest.mark.skipif(not grouped_mm_meta_rejects_float32(), reason="this torch's meta kernel takes float32")
def test_shim_is_undone_after_export() -> None:
    a, b = torch.randn(8, 8, device="meta"), torch.randn(2, 8, 4, device="meta")
    with export_shims():
        assert torch._grouped_mm(a, b, offs=OFFS.to("meta")).shape == (8, 4)
    with pytest.raises(RuntimeError, match="BFloat16"):
        torch._grouped_mm(a, b, offs=OFFS.to("meta"))
