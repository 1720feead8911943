"""Tests for graphprune/sparsity/semi.py: without a CUDA GPU of compute capability 8.0+ the error
says so and nothing changes; on one, the compressed model computes what the masked model did."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import graphprune
from graphprune.errors import SparsityError
from graphprune.sparsity import is_masked


def _masked_mlp(device: str = "cpu", dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, 64)).to(device, dtype)
    return graphprune.sparsify_(model, pattern="2:4", head=True)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error of a machine without CUDA")
def test_without_cuda_the_error_names_what_is_missing() -> None:
    model = _masked_mlp()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(SparsityError, match="CUDA GPU of compute capability 8.0") as info:
        graphprune.to_semi_structured_(model)
    assert "torch.cuda.is_available() is False" in str(info.value)
    assert is_masked(model[0]) and all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), before.values()))


def test_nothing_to_compress_is_an_error() -> None:
    model = graphprune.sparsify_(nn.Sequential(nn.Linear(8, 8)), 0.5, head=True)  # unstructured
    with pytest.raises(SparsityError, match="pattern='2:4'"):
        graphprune.to_semi_structured_(model)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8,
                    reason="needs a CUDA GPU of compute capability 8.0+")
def test_on_a_sparse_tensor_core_gpu_outputs_match() -> None:
    model = _masked_mlp("cuda", torch.float16).eval()
    x = torch.randn(64, 128, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        want = model(x)
        graphprune.to_semi_structured_(model)
        got = model(x)
    # nn.Parameter of a tensor subclass is that subclass, marked as a parameter
    assert isinstance(model[0].weight, torch.sparse.SparseSemiStructuredTensor) and not is_masked(model[0])
    torch.testing.assert_close(got, want, rtol=1e-2, atol=1e-2)


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8,
                    reason="needs a CUDA GPU of compute capability 8.0+")
def test_on_a_gpu_a_float32_or_cpu_layer_is_named_before_anything_changes() -> None:
    model = _masked_mlp("cuda", torch.float16)
    model[2].float()
    with pytest.raises(SparsityError, match="2: "):
        graphprune.to_semi_structured_(model)
    assert is_masked(model[0])
