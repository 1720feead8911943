"""Slicers for torch.nn modules: recompute size attributes from the sliced tensors."""
from __future__ import annotations

from torch import nn
from torch.nn.modules.batchnorm import _NormBase
from torch.nn.modules.conv import _ConvNd

from .core import register_slicer


@register_slicer(_ConvNd)
def conv(m: _ConvNd) -> None:
    """Weight is (out, in/groups, ...) or, transposed, (in, out/groups, ...); ``groups`` is set by the plan."""
    a, b = m.weight.shape[:2]
    m.in_channels, m.out_channels = (a, b * m.groups) if m.transposed else (b * m.groups, a)


@register_slicer(nn.Linear)
def linear(m: nn.Linear) -> None:
    m.out_features, m.in_features = m.weight.shape


@register_slicer(nn.Bilinear)
def bilinear(m: nn.Bilinear) -> None:
    m.out_features, m.in1_features, m.in2_features = m.weight.shape


@register_slicer(_NormBase)
def batch_norm(m: _NormBase) -> None:
    t = m.weight if m.weight is not None else m.running_mean
    if t is not None:
        m.num_features = t.shape[0]


@register_slicer(nn.LayerNorm, nn.RMSNorm)
def layer_norm(m: nn.LayerNorm) -> None:
    if m.weight is not None:
        m.normalized_shape = tuple(m.weight.shape)


@register_slicer(nn.GroupNorm)
def group_norm(m: nn.GroupNorm) -> None:
    if m.weight is not None:
        m.num_channels = m.weight.shape[0]


@register_slicer(nn.Embedding)
def embedding(m: nn.Embedding) -> None:
    m.num_embeddings, m.embedding_dim = m.weight.shape


@register_slicer(nn.RNNCellBase)
def recurrent_cell(m: nn.RNNCellBase) -> None:
    m.input_size, m.hidden_size = m.weight_ih.shape[1], m.weight_hh.shape[1]


@register_slicer(nn.RNNBase)
def recurrent(m: nn.RNNBase) -> None:
    """Layer 0's input width, the hidden size and the projection's size follow the weights; the
    cached flat-weight list must see the new tensors."""
    m.input_size = m.weight_ih_l0.shape[1]
    if getattr(m, "proj_size", 0):
        m.proj_size, m.hidden_size = m.weight_hr_l0.shape
    else:
        m.hidden_size = m.weight_hh_l0.shape[1]
    m._init_flat_weights()
