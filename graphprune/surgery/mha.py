"""Surgery for ``nn.MultiheadAttention``: its heads and its embedding width prune separately.

torch's module computes its head size as ``embed_dim // num_heads`` from the query's width, so
it only runs while the heads' total width (``num_heads * head_dim``) equals the query's. After
pruning, where that still holds it stays a plain ``nn.MultiheadAttention``; where it does not,
its class becomes ``PrunedMultiheadAttention``: a subclass with the same forward signature,
state-dict keys and results, whose inner width is the heads' own.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .core import register_slicer


class PrunedMultiheadAttention(nn.MultiheadAttention):
    """``nn.MultiheadAttention`` with ``num_heads * head_dim`` (the width of q, k and v) free of
    ``embed_dim`` (the width of the query and of the output). Same arguments and returns as
    torch's; a 3-D ``attn_mask`` must have ``batch * num_heads`` rows for the pruned head count.

    >>> m = nn.MultiheadAttention(8, 2)
    >>> m.__class__ = PrunedMultiheadAttention
    >>> x = torch.randn(3, 1, 8)
    >>> torch.allclose(m(x, x, x)[0], nn.MultiheadAttention.forward(m, x, x, x)[0], atol=1e-6)
    True
    """

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None,
                average_attn_weights=True, is_causal=False):
        batched = query.dim() == 3
        if not batched:  # (L, E): one sequence, sequence first
            query, key, value = query.unsqueeze(1), key.unsqueeze(1), value.unsqueeze(1)
            key_padding_mask = None if key_padding_mask is None else key_padding_mask.unsqueeze(0)
        elif self.batch_first:
            query, key, value = query.transpose(0, 1), key.transpose(0, 1), value.transpose(0, 1)
        q, k, v = self._project(query, key, value)
        mask, pad = _additive(attn_mask, q.dtype), _additive(key_padding_mask, q.dtype)
        if self.bias_k is not None:
            k = torch.cat([k, self.bias_k.repeat(1, k.shape[1], 1)])
            v = torch.cat([v, self.bias_v.repeat(1, v.shape[1], 1)])
            mask, pad = _pad_last(mask), _pad_last(pad)
        length, batch = q.shape[:2]
        heads, size = self.num_heads, self.head_dim
        q, k, v = (t.reshape(t.shape[0], batch * heads, size).transpose(0, 1) for t in (q, k, v))
        if self.add_zero_attn:
            k = torch.cat([k, k.new_zeros(batch * heads, 1, size)], dim=1)
            v = torch.cat([v, v.new_zeros(batch * heads, 1, size)], dim=1)
            mask, pad = _pad_last(mask), _pad_last(pad)
        bias = self._bias(mask, pad, is_causal and attn_mask is None, batch, length, k.shape[1], q.dtype)
        out, weights = self._attend(q, k, v, bias, need_weights, batch, length)
        out = F.linear(out.transpose(0, 1).reshape(length * batch, heads * size), self.out_proj.weight,
                       self.out_proj.bias).view(length, batch, -1)
        if not batched:
            out = out.squeeze(1)
        elif self.batch_first:
            out = out.transpose(0, 1)
        if weights is not None:
            weights = weights.view(batch, heads, length, -1)
            weights = weights.mean(dim=1) if average_attn_weights else weights
            weights = weights if batched else weights.squeeze(0)
        return out, weights

    def _project(self, query, key, value):
        if self._qkv_same_embed_dim:
            wq, wk, wv = self.in_proj_weight.chunk(3)
        else:
            wq, wk, wv = self.q_proj_weight, self.k_proj_weight, self.v_proj_weight
        bq, bk, bv = self.in_proj_bias.chunk(3) if self.in_proj_bias is not None else (None, None, None)
        return F.linear(query, wq, bq), F.linear(key, wk, bk), F.linear(value, wv, bv)

    def _bias(self, mask, pad, causal: bool, batch: int, length: int, keys: int, dtype):
        """One additive mask of shape (1 or batch * heads, L, S), or None."""
        if causal:
            mask = torch.full((length, keys), float("-inf"), dtype=dtype).triu(1)
        full = None if mask is None else (mask if mask.dim() == 3 else mask.unsqueeze(0))
        if pad is not None:
            pad = pad.view(batch, 1, 1, keys).expand(-1, self.num_heads, -1, -1).reshape(-1, 1, keys)
            full = pad if full is None else full + pad
        return full

    def _attend(self, q, k, v, bias, need_weights: bool, batch: int, length: int):
        p = self.dropout if self.training else 0.0
        if need_weights:
            scores = torch.bmm(q * self.head_dim ** -0.5, k.transpose(1, 2))
            weights = (scores if bias is None else scores + bias).softmax(dim=-1)
            return torch.bmm(F.dropout(weights, p) if p > 0 else weights, v), weights
        heads = self.num_heads
        four = lambda t: t.view(batch, heads, t.shape[1], t.shape[2])
        mask = None if bias is None else bias.view(-1, heads if bias.shape[0] > 1 else 1, *bias.shape[1:])
        out = F.scaled_dot_product_attention(four(q), four(k), four(v), attn_mask=mask, dropout_p=p)
        return out.reshape(batch * heads, length, self.head_dim), None


def _additive(mask, dtype):
    """torch's convention: a boolean mask is True where attention is not allowed."""
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype).masked_fill(mask, float("-inf"))


def _pad_last(mask):
    return None if mask is None else F.pad(mask, (0, 1))


@register_slicer(nn.MultiheadAttention)
def multihead_attention(m: nn.MultiheadAttention) -> None:
    """Widths from the sliced weights; the plain class where torch's forward still fits them."""
    inner = m.in_proj_weight.shape[0] // 3 if m._qkv_same_embed_dim else m.q_proj_weight.shape[0]
    m.embed_dim = m.out_proj.weight.shape[0]
    m.out_proj.out_features, m.out_proj.in_features = m.out_proj.weight.shape
    if not m._qkv_same_embed_dim:
        m.kdim, m.vdim = m.k_proj_weight.shape[1], m.v_proj_weight.shape[1]
    else:
        m.kdim = m.vdim = m.in_proj_weight.shape[1]
    m.num_heads = inner // m.head_dim
    if inner != m.embed_dim and not isinstance(m, PrunedMultiheadAttention):
        m.__class__ = PrunedMultiheadAttention
