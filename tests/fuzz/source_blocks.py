"""Blocks of the ``source`` family: sizes the graph holds as numbers and only the code names, in the
ways code passes them around: einops patterns and layers, helpers taking the head count as an
argument (or rebinding it), heads folded into the batch dim with repeated and expanded relative
positions (DeBERTa), a child's method sizing a per-head bias, and repeated or broadcast units.
Each maps (B, T, d) to (B, T, d)."""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from einops import rearrange
from einops.layers.torch import Rearrange
from torch import nn

from ..models import FoldedHeads


def _split_heads(x, heads):
    return x.view(*x.shape[:-1], heads, -1).transpose(1, 2)


def _merge_heads(y):
    return y.transpose(1, 2).flatten(2)


class _Heads(nn.Module):
    """Separate or fused q/k/v of ``heads`` heads of ``size``, an output projection back to d."""

    def __init__(self, d: int, rng: random.Random):
        super().__init__()
        self.heads, self.size = rng.choice([1, 2, 3, 4]), rng.choice([2, 4])
        inner = self.heads * self.size
        self.fused = rng.random() < 0.5
        self.qkv = nn.Linear(d, 3 * inner) if self.fused else None
        self.q, self.k, self.v = (None,) * 3 if self.fused else (nn.Linear(d, inner) for _ in range(3))
        self.o = nn.Linear(inner, d)

    def qkv_of(self, x):
        return self.qkv(x).chunk(3, dim=-1) if self.fused else (self.q(x), self.k(x), self.v(x))


class EinopsAttention(_Heads):
    """Heads split by ``rearrange`` with ``h=``, ``d=``, both, or a number; merged by ``rearrange``
    or by a reshape; the split mapped by a lambda or called one by one."""

    def __init__(self, d: int, rng: random.Random):
        super().__init__(d, rng)
        self.given = rng.choice(["h", "d", "both", "number"])
        self.mapped, self.merge = rng.random() < 0.5, rng.choice(["rearrange", "layer", "reshape"])
        self.merge_layer = Rearrange("b h n d -> b n (h d)")

    def split(self, t):
        if self.given == "h":
            return rearrange(t, "b n (h d) -> b h n d", h=self.heads)
        if self.given == "d":
            return rearrange(t, "b n (h d) -> b h n d", d=self.size)
        if self.given == "both":
            return rearrange(t, "b n (h d) -> b h n d", h=self.heads, d=self.size)
        return rearrange(t, "b n (h d) -> b h n d", d=2)  # a head size written as a number

    def forward(self, x):
        if self.mapped:
            q, k, v = map(lambda t: self.split(t), self.qkv_of(x))
        else:
            q, k, v = self.qkv_of(x)
            q, k, v = self.split(q), self.split(k), self.split(v)
        y = F.scaled_dot_product_attention(q, k, v)
        if self.merge == "rearrange":
            y = rearrange(y, "b h n d -> b n (h d)")
        elif self.merge == "layer":
            y = self.merge_layer(y)
        else:
            y = _merge_heads(y)
        return x + self.o(y)


class HelperAttention(_Heads):
    """The head count reaches the reshape as a helper's parameter: positional or keyword, through a
    second helper, a module-level function, a default, rebound inside the helper, or an ``unflatten``."""

    def __init__(self, d: int, rng: random.Random):
        super().__init__(d, rng)
        self.how = rng.choice(["positional", "keyword", "nested", "function", "rebound", "unflatten"])

    def to_heads(self, t, heads, size=-1):
        return t.view(t.shape[0], t.shape[1], heads, size).transpose(1, 2)

    def nested(self, t, count):
        return self.to_heads(t, count)

    def rebound(self, t, heads):
        heads = max(heads, 1)
        return t.view(t.shape[0], t.shape[1], heads, -1).transpose(1, 2)

    def unflatten(self, t, count):
        return t.unflatten(-1, (count, -1)).transpose(1, 2)

    def split(self, t):
        if self.how == "unflatten":
            return self.unflatten(t, self.heads)
        if self.how == "positional":
            return self.to_heads(t, self.heads)
        if self.how == "keyword":
            return self.to_heads(t, size=self.size, heads=self.heads)
        if self.how == "nested":
            return self.nested(t, self.heads)
        if self.how == "function":
            return _split_heads(t, self.heads)
        return self.rebound(t, self.heads)

    def forward(self, x):
        q, k, v = (self.split(t) for t in self.qkv_of(x))
        return x + self.o(_merge_heads(F.scaled_dot_product_attention(q, k, v)))


class FoldedAttention(_Heads):
    """DeBERTa: heads folded into the batch dim for ``bmm``, the head count passed to the fold,
    relative-position keys repeated per batch row and gathered through an expanded index."""

    def __init__(self, d: int, rng: random.Random):
        super().__init__(d, rng)
        self.span = rng.choice([2, 3])
        self.relative = rng.random() < 0.7
        self.rel = nn.Parameter(torch.randn(2 * self.span, d))

    fold = FoldedHeads.fold  # the toy's (B, T, H*d) -> (B*H, T, d), the head count passed in

    def forward(self, x):
        n = x.size(1)
        q, k, v = self.qkv_of(x)
        q, k, v = self.fold(q, self.heads), self.fold(k, self.heads), self.fold(v, self.heads)
        scores = torch.bmm(q, k.transpose(-1, -2))
        if self.relative:
            pos = self.qkv_of(self.rel.unsqueeze(0))[1]
            pos = self.fold(pos, self.heads).repeat(q.size(0) // self.heads, 1, 1)
            idx = (torch.arange(n)[None, :] - torch.arange(n)[:, None] + self.span).clamp(0, 2 * self.span - 1)
            scores = scores + torch.gather(torch.bmm(q, pos.transpose(-1, -2)), -1,
                                           idx.unsqueeze(0).expand([q.size(0), n, n]))
        probs = scores.view(-1, self.heads, n, n).softmax(-1).view(-1, n, n)
        y = torch.bmm(probs, v).view(-1, self.heads, n, v.size(-1)).permute(0, 2, 1, 3).contiguous()
        return x + self.o(y.view(y.size()[:-2] + (-1,)))


class RelBias(nn.Module):
    """A per-head bias over token pairs, made in a method its parent calls (timm's RelPosMlp)."""

    def __init__(self, heads: int, n: int, rng: random.Random):
        super().__init__()
        self.num_heads, self.bias_shape = heads, (n, n, heads)
        self.table = nn.Linear(2, heads)
        self.register_buffer("coords", torch.randn(n * n, 2))
        self.by_tuple = rng.random() < 0.5

    def get_bias(self):
        if self.by_tuple:
            return self.table(self.coords).view(self.bias_shape).permute(2, 0, 1)
        n = self.bias_shape[0]
        return self.table(self.coords).view(-1, self.num_heads).t().reshape(self.num_heads, n, n)


class ChildBiasAttention(_Heads):
    """Attention biased per head by ``RelBias``, made for up to ``tokens`` tokens."""

    def __init__(self, d: int, rng: random.Random, tokens: int):
        super().__init__(d, rng)
        self.rel = RelBias(self.heads, tokens, rng)

    def forward(self, x):
        n = x.size(1)
        q, k, v = (_split_heads(t, self.heads) for t in self.qkv_of(x))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=self.rel.get_bias()[:, :n, :n].unsqueeze(0))
        return x + self.o(_merge_heads(y))


class Tiled(nn.Module):
    """Hidden units read more than once: repeated along the features, or scaled by one bias grown
    to the hidden width (by its size read from a shape, or by a number, which keeps the units)."""

    def __init__(self, d: int, rng: random.Random):
        super().__init__()
        self.hidden, self.copies = rng.choice([4, 6, 8]), rng.choice([1, 2, 3])
        self.how = rng.choice(["repeat", "grow_shape", "grow_number"])
        self.fc1 = nn.Linear(d, self.hidden)
        self.fc2 = nn.Linear(self.hidden * (self.copies if self.how == "repeat" else 1), d)
        self.scale = nn.Parameter(torch.rand(1) + 0.5)

    def forward(self, x):
        h = F.gelu(self.fc1(x))
        if self.how == "repeat":
            h = h.repeat(1, 1, self.copies)
        elif self.how == "grow_shape":
            h = h * self.scale.expand(h.size(-1))
        else:
            h = h * self.scale.expand(8 if self.hidden == 8 else 6 if self.hidden == 6 else 4)
        return x + self.fc2(h)


class ToTokens(nn.Module):
    """A (B, T, d) sequence seen as a (B, d, T, 1) map for a 1x1 conv, and back by a ``Rearrange``."""

    def __init__(self, d: int, rng: random.Random):
        super().__init__()
        self.conv = nn.Conv2d(d, rng.choice([4, 8]), 1)
        self.back = Rearrange("b c t w -> b (t w) c")
        self.fc = nn.Linear(self.conv.out_channels, d)

    def forward(self, x):
        return x + self.fc(F.relu(self.back(self.conv(rearrange(x, "b t c -> b c t 1")))))


def source_block(d: int, rng: random.Random, tokens: int) -> nn.Module:
    """One of this family's blocks; ``tokens``: the most tokens a block may see."""
    kind = rng.choice(["einops", "helper", "folded", "child", "tiled", "tokens"])
    if kind == "child":
        return ChildBiasAttention(d, rng, tokens)
    return {"einops": EinopsAttention, "helper": HelperAttention, "folded": FoldedAttention,
            "tiled": Tiled, "tokens": ToTokens}[kind](d, rng)
