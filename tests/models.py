"""The table of tiny toy models that drives the property tests: one per coupling structure."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn


def cbr(cin: int, cout: int, k: int = 3, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU())


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.a, self.b = cbr(3, 16), cbr(16, 8), nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.b(self.a(x))
        return self.head(x.mean((2, 3)))


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.l, self.r = cbr(3, 8), cbr(8, 6), cbr(8, 10)
        self.fuse, self.head = cbr(16, 12, 1), nn.Linear(12, 4)

    def forward(self, x):
        x = self.stem(x)
        return self.head(self.fuse(torch.cat([self.l(x), self.r(x)], 1)).amax((2, 3)))


class ChunkGate(nn.Module):
    """GLU-style: one conv produces value and gate halves that a chunk separates."""

    def __init__(self):
        super().__init__()
        self.stem, self.proj = cbr(3, 8), nn.Conv2d(8, 24, 1)
        self.out, self.head = nn.Conv2d(12, 8, 1), nn.Linear(8, 3)

    def forward(self, x):
        a, g = self.proj(self.stem(x)).chunk(2, dim=1)
        return self.head(self.out(a * torch.sigmoid(g)).mean((2, 3)))


class Depthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.expand = cbr(3, 8), cbr(8, 24, 1)
        self.dw, self.project = cbr(24, 24, 3, groups=24), nn.Conv2d(24, 8, 1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.project(self.dw(self.expand(x)))
        return self.head(x.mean((2, 3)))


class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.c1 = cbr(3, 8), cbr(8, 16, 1)
        self.c2, self.c3 = cbr(16, 16, 3, groups=4), nn.Conv2d(16, 8, 1)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        x = self.stem(x)
        return self.head((x + self.c3(self.c2(self.c1(x)))).mean((2, 3)))


class HandAttention(nn.Module):
    """Attention written by hand: reshape into heads, q @ k^T, softmax, @ v, merge heads."""

    def __init__(self, dim: int = 16, heads: int = 4):
        super().__init__()
        self.heads, self.q, self.k, self.v = heads, nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.o, self.fc = nn.Linear(dim, dim), nn.Linear(dim, 2)

    def forward(self, x):
        b, n, c = x.shape
        split = lambda t: t.reshape(b, n, self.heads, -1).transpose(1, 2)
        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        att = (q @ k.transpose(-2, -1) * 0.5).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(b, n, -1)
        return self.fc(x + self.o(y))


class FusedQKV(nn.Module):
    """timm-style: one qkv linear, reshape (3, heads, head_dim), unbind, SDPA."""

    def __init__(self, dim: int = 16, heads: int = 4):
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.qkv, self.proj, self.fc = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), nn.Linear(dim, 2)

    def forward(self, x):
        b, n, _ = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, -1)
        return self.fc(x + self.proj(y))


class GQA(nn.Module):
    """Grouped-query attention: kv heads repeated (expand + reshape) for the query heads reading them."""

    def __init__(self, dim: int = 16, heads: int = 4, kv_heads: int = 2):
        super().__init__()
        self.head_dim, self.groups = dim // heads, heads // kv_heads
        self.q, self.k = nn.Linear(dim, dim, bias=False), nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.v, self.o = nn.Linear(dim, kv_heads * self.head_dim, bias=False), nn.Linear(dim, dim, bias=False)
        self.fc = nn.Linear(dim, 2)

    def _repeat(self, t):
        b, h, n, d = t.shape
        return t[:, :, None].expand(b, h, self.groups, n, d).reshape(b, h * self.groups, n, d)

    def forward(self, x):
        b, n, _ = x.shape
        heads = lambda t: t.view(b, n, -1, self.head_dim).transpose(1, 2)
        q, k, v = heads(self.q(x)), self._repeat(heads(self.k(x))), self._repeat(heads(self.v(x)))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(b, n, -1)
        return self.fc(x + self.o(y))


class SwiGLU(nn.Module):
    def __init__(self, dim: int = 12, hidden: int = 32):
        super().__init__()
        self.gate, self.up = nn.Linear(dim, hidden, bias=False), nn.Linear(dim, hidden, bias=False)
        self.down, self.fc = nn.Linear(hidden, dim, bias=False), nn.Linear(dim, 2)

    def forward(self, x):
        return self.fc(x + self.down(F.silu(self.gate(x)) * self.up(x)))


class TiedLM(nn.Module):
    """Embedding and output projection share one weight (tied embeddings)."""

    def __init__(self, vocab: int = 20, dim: int = 12):
        super().__init__()
        self.emb, self.mid = nn.Embedding(vocab, dim), nn.Linear(dim, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.emb.weight

    def forward(self, ids):
        h = self.emb(ids)
        return self.lm_head(h + torch.relu(self.mid(h)))


class BareParams(nn.Module):
    """cls token, position embedding and layer scale as bare nn.Parameters."""

    def __init__(self, dim: int = 12, tokens: int = 5):
        super().__init__()
        self.embed = nn.Linear(6, dim)
        self.cls = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, tokens + 1, dim))
        self.mlp1, self.mlp2 = nn.Linear(dim, 20), nn.Linear(20, dim)
        self.gamma = nn.Parameter(torch.rand(dim))
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.embed(x)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        x = x + self.gamma * self.mlp2(F.gelu(self.mlp1(x)))
        return self.head(x[:, 0])


class FlattenFC(nn.Module):
    """Classic CNN classifier: flatten (C, H, W) into one dim feeding a linear layer."""

    def __init__(self):
        super().__init__()
        self.conv, self.fc = cbr(3, 8), nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.conv(x), 4), 1))


class ConvTranspose(nn.Module):
    def __init__(self):
        super().__init__()
        self.down, self.up = cbr(3, 8), nn.ConvTranspose2d(8, 6, 2, stride=2)
        self.out = nn.Conv2d(6, 2, 1)

    def forward(self, x):
        return self.out(torch.relu(self.up(self.down(x))))


class GroupNormNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.gn, self.c2 = nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.c2(torch.relu(self.gn(self.c1(x))))


def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


class HandGQA(nn.Module):
    """GQA as many codebases write it: ``view(B, T, -1, self.head_dim)``, rotate_half rotary, key and
    value heads repeated by ``repeat_interleave`` (or ``expand`` + ``reshape``), SDPA."""

    def __init__(self, dim: int = 32, heads: int = 4, kv_heads: int = 2, repeat: str = "interleave"):
        super().__init__()
        self.head_dim, self.n_rep, self.repeat = dim // heads, heads // kv_heads, repeat
        self.q_proj = nn.Linear(dim, heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(dim, kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(heads * self.head_dim, dim, bias=False)
        self.up, self.down, self.head = nn.Linear(dim, 48), nn.Linear(48, dim), nn.Linear(dim, 3)

    def repeat_kv(self, t):
        if self.repeat == "interleave":
            return t.repeat_interleave(self.n_rep, dim=1)
        b, h, n, d = t.shape
        return t[:, :, None].expand(b, h, self.n_rep, n, d).reshape(b, h * self.n_rep, n, d)

    def forward(self, x):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(B, T, -1, self.head_dim).transpose(1, 2)
        inv = 1.0 / (10000 ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim))
        freqs = torch.outer(torch.arange(T, dtype=torch.float32), inv)
        cos, sin = torch.cat((freqs, freqs), -1).cos(), torch.cat((freqs, freqs), -1).sin()
        q, k = q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin
        y = F.scaled_dot_product_attention(q, self.repeat_kv(k), self.repeat_kv(v), is_causal=True)
        x = x + self.o_proj(y.transpose(1, 2).reshape(B, T, -1))
        return self.head(x + self.down(F.gelu(self.up(x))))


class TorchMHA(nn.Module):
    """torch's own attention module in a pre-norm block."""

    def __init__(self, dim: int = 16, heads: int = 4):
        super().__init__()
        self.embed, self.norm = nn.Linear(6, dim), nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        h = self.embed(x)
        y, _ = self.attn(self.norm(h), self.norm(h), self.norm(h))
        return self.head(h + y)


class SqueezeExcite(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, c // 4, 1), nn.Conv2d(c // 4, c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class ResNeXtSE(nn.Module):
    """A ResNeXt bottleneck (grouped 3x3, 4 groups of 4) with squeeze-excite."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 16)
        self.conv1, self.conv2 = cbr(16, 16, 1), cbr(16, 16, 3, groups=4)
        self.se, self.conv3 = SqueezeExcite(16), nn.Sequential(nn.Conv2d(16, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        x = self.stem(x)
        x = F.relu(x + self.conv3(self.se(self.conv2(self.conv1(x)))))
        return self.head(x.mean((2, 3)))


class ListSplit(nn.Module):
    """``torch.split(y, self.split_sizes, dim=1)`` with unequal sizes held in a list attribute."""

    def __init__(self):
        super().__init__()
        self.split_sizes = [12, 6, 6]
        self.proj = cbr(3, 24, 1)
        self.a, self.b, self.c = nn.Conv2d(12, 5, 1), nn.Conv2d(6, 5, 3, padding=1), nn.Conv2d(6, 5, 1)

    def forward(self, x):
        p, q, r = torch.split(self.proj(x), self.split_sizes, dim=1)
        return (self.a(p) + self.b(q) + self.c(r)).mean((2, 3))


class FoldedHeads(nn.Module):
    """DeBERTa's attention: the head count reaches the reshape as a helper's argument, heads are
    folded into the batch dim for ``bmm``, relative-position keys are repeated once per batch row,
    and relative positions are gathered through an index expanded to the folded size."""

    def __init__(self, dim: int = 16, heads: int = 4, span: int = 4):
        super().__init__()
        self.num_heads, self.span = heads, span
        self.q, self.k, self.v, self.o, self.fc = (nn.Linear(dim, dim) for _ in range(5))
        self.rel = nn.Parameter(torch.randn(2 * span, dim))

    def fold(self, x, heads):
        new_shape = x.size()[:-1] + (heads, -1)
        x = x.view(new_shape)
        return x.permute(0, 2, 1, 3).contiguous().view(-1, x.size(1), x.size(-1))

    def forward(self, x):
        n = x.size(1)
        q = self.fold(self.q(x), self.num_heads)
        k = self.fold(self.k(x), self.num_heads)
        v = self.fold(self.v(x), self.num_heads)
        pos = self.fold(self.k(self.rel.unsqueeze(0)), self.num_heads).repeat(q.size(0) // self.num_heads, 1, 1)
        idx = (torch.arange(n)[None, :] - torch.arange(n)[:, None] + self.span).clamp(0, 2 * self.span - 1)
        c2p = torch.gather(torch.bmm(q, pos.transpose(-1, -2)), -1, idx.unsqueeze(0).expand([q.size(0), n, n]))
        probs = (torch.bmm(q, k.transpose(-1, -2)) + c2p).view(-1, self.num_heads, n, n).softmax(-1)
        ctx = torch.bmm(probs.view(-1, n, n), v).view(-1, self.num_heads, n, v.size(-1)).permute(0, 2, 1, 3)
        return self.fc(x + self.o(ctx.contiguous().view(ctx.size()[:-2] + (-1,))))


class EinopsAttention(nn.Module):
    """Heads split and merged by ``einops.rearrange``, the head count given as ``h=self.heads``
    (``given="heads"``), the head size as ``d=self.dim_head`` (``"dim_head"``) or a number (``"number"``)."""

    def __init__(self, dim: int = 16, heads: int = 4, given: str = "heads"):
        super().__init__()
        self.heads, self.dim_head, self.given = heads, dim // heads, given
        self.qkv, self.proj, self.fc = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), nn.Linear(dim, 3)

    def split(self, t):
        if self.given == "heads":
            return rearrange(t, "b n (h d) -> b h n d", h=self.heads)
        if self.given == "dim_head":
            return rearrange(t, "b n (h d) -> b h n d", d=self.dim_head)
        return rearrange(t, "b n (h d) -> b h n d", h=4)

    def forward(self, x):
        q, k, v = (self.split(t) for t in self.qkv(x).chunk(3, dim=-1))
        y = rearrange(F.scaled_dot_product_attention(q, k, v), "b h n d -> b n (h d)")
        return self.fc(x + self.proj(y))


@dataclass(frozen=True)
class Toy:
    name: str
    build: Callable[[], nn.Module]
    inputs: Callable[[], torch.Tensor]
    oracle: bool = True  # at least one exact group the oracle can check


def _img(size: int = 8) -> Callable[[], torch.Tensor]:
    return lambda: torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


def _seq(dim: int, n: int = 5) -> Callable[[], torch.Tensor]:
    return lambda: torch.randn(2, n, dim, generator=torch.Generator().manual_seed(0))


TOYS = [
    Toy("residual", Residual, _img()),
    Toy("concat", Concat, _img()),
    Toy("chunk_gate", ChunkGate, _img()),
    Toy("depthwise", Depthwise, _img()),
    Toy("grouped_conv", Grouped, _img()),
    Toy("hand_attention", HandAttention, _seq(16)),
    Toy("fused_qkv_sdpa", FusedQKV, _seq(16)),
    Toy("gqa", GQA, _seq(16)),
    Toy("swiglu", SwiGLU, _seq(12)),
    Toy("tied_lm", TiedLM, lambda: torch.randint(0, 20, (2, 7), generator=torch.Generator().manual_seed(0))),
    Toy("bare_params", BareParams, _seq(6)),
    Toy("flatten_fc", FlattenFC, _img()),
    Toy("conv_transpose", ConvTranspose, _img()),
    Toy("group_norm", GroupNormNet, _img()),
    Toy("hand_gqa", HandGQA, _seq(32)),
    Toy("hand_gqa_expand", lambda: HandGQA(repeat="expand"), _seq(32)),
    Toy("torch_mha", TorchMHA, _seq(6)),
    Toy("resnext_se", ResNeXtSE, _img()),
    Toy("list_split", ListSplit, _img()),
    Toy("folded_heads", FoldedHeads, _seq(16)),
    Toy("einops_attention", EinopsAttention, _seq(16)),
]
