"""Building blocks of the random models: each one an idiom found in real code, with its widths given.

Conv blocks map (B, cin, H, W) to (B, cout, H, W); sequence blocks map (B, T, din) to (B, T, dout).
Every block takes a ``random.Random`` to pick its variant, so a seed fixes the whole model.
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import nn


def act(rng: random.Random) -> nn.Module:
    return rng.choice([nn.ReLU(), nn.GELU(), nn.SiLU(), nn.Hardswish(), nn.Identity()])


# -- conv domain ----------------------------------------------------------------------------------

class ConvNormAct(nn.Module):
    def __init__(self, cin: int, cout: int, rng: random.Random, groups: int = 1):
        super().__init__()
        k = rng.choice([1, 3])
        self.conv = nn.Conv2d(cin, cout, k, padding=k // 2, groups=groups, bias=rng.random() < 0.5)
        norm = rng.choice(["bn", "gn", "none"])
        gn = next((g for g in (4, 2) if cout % g == 0 and g < cout), 1)
        self.norm = nn.BatchNorm2d(cout) if norm == "bn" else nn.GroupNorm(gn, cout) if norm == "gn" else nn.Identity()
        self.act = act(rng)

    def forward(self, x):
        return self.act(self.norm(self.conv(x)))


class Residual(nn.Module):
    """x + f(x), f a bottleneck (optionally grouped inside, ResNeXt-style, with squeeze-excite)."""

    def __init__(self, c: int, rng: random.Random):
        super().__init__()
        groups = rng.choice([1, 2, 4])
        mid = groups * rng.choice([2, 3, 4])
        self.a = ConvNormAct(c, mid, rng)
        self.b = ConvNormAct(mid, mid, rng, groups=groups)
        self.se = SqueezeExcite(mid, rng) if rng.random() < 0.5 else nn.Identity()
        self.c = nn.Conv2d(mid, c, 1)

    def forward(self, x):
        return x + self.c(self.se(self.b(self.a(x))))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, rng: random.Random):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(c, max(c // 2, 2), 1), nn.Conv2d(max(c // 2, 2), c, 1)

    def forward(self, x):
        return x * torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True)))))


class Concat(nn.Module):
    def __init__(self, cin: int, rng: random.Random):
        super().__init__()
        self.branches = nn.ModuleList(ConvNormAct(cin, rng.choice([3, 4, 6, 8]), rng) for _ in range(rng.choice([2, 3])))
        self.cout = sum(b.conv.out_channels for b in self.branches)

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches], dim=1)


class Split(nn.Module):
    """One conv's output cut into parts: an even chunk, unequal sizes from a list attribute, or a
    literal list; each part convolved, then concatenated back or summed."""

    def __init__(self, cin: int, rng: random.Random):
        super().__init__()
        self.mode = rng.choice(["chunk", "attr", "literal", "int_attr"])
        a, b = rng.choice([(4, 4), (6, 3), (4, 8)]) if self.mode != "chunk" else (6, 6)
        if self.mode == "int_attr":
            b = a
        if self.mode == "literal":
            a = 4  # the code below cuts at 4
        self.sizes, self.size = [a, b], a
        self.proj = nn.Conv2d(cin, a + b, 1)
        self.pa, self.pb = nn.Conv2d(a, 5, 1), nn.Conv2d(b, 5, 1)
        self.sum = rng.random() < 0.5
        self.cout = 5 if self.sum else 10

    def forward(self, x):
        y = self.proj(x)
        if self.mode == "chunk":
            p, q = y.chunk(2, dim=1)
        elif self.mode == "attr":
            p, q = torch.split(y, self.sizes, dim=1)
        elif self.mode == "int_attr":
            p, q = y.split(self.size, dim=1)
        else:
            p, q = torch.split(y, [4, y.shape[1] - 4], dim=1)
        p, q = self.pa(p), self.pb(F.relu(q))
        return p + q if self.sum else torch.cat([q, p], dim=1)


class Shuffle(nn.Module):
    """Grouped 1x1 conv, then a channel shuffle written with an attribute, a literal or -1."""

    def __init__(self, cin: int, rng: random.Random):
        super().__init__()
        self.groups = 2
        self.cout = cin if cin % 2 == 0 else cin + 1
        self.pre = nn.Conv2d(cin, self.cout, 1)
        self.conv = nn.Conv2d(self.cout, self.cout, 1, groups=2)
        self.style = rng.choice(["attr", "minus", "literal"])

    def forward(self, x):
        y = self.conv(self.pre(x))
        b, c, h, w = y.shape
        if self.style == "attr":
            y = y.view(b, self.groups, c // self.groups, h, w)
        elif self.style == "minus":
            y = y.view(b, self.groups, -1, h, w)
        else:
            y = y.view(b, 2, self.cout // 2, h, w)
        return y.transpose(1, 2).reshape(b, -1, h, w)


class Shared(nn.Module):
    """One conv applied twice (weight sharing)."""

    def __init__(self, c: int, rng: random.Random):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.relu(self.conv(x)))


class BareScale(nn.Module):
    """Per-channel scale and shift held as bare parameters."""

    def __init__(self, c: int, rng: random.Random):
        super().__init__()
        self.gamma, self.beta = nn.Parameter(torch.rand(c) + 0.5), nn.Parameter(torch.randn(c))

    def forward(self, x):
        return x * self.gamma.view(1, -1, 1, 1) + self.beta[None, :, None, None]


class Depthwise(nn.Module):
    def __init__(self, c: int, rng: random.Random):
        super().__init__()
        self.mult = rng.choice([1, 2])
        self.conv = nn.Conv2d(c, c * self.mult, 3, padding=1, groups=c)
        self.cout = c * self.mult

    def forward(self, x):
        return F.relu(self.conv(x))


# -- sequence domain ------------------------------------------------------------------------------

def rotate_half(x):
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def rotary(q, k, head_dim: int):
    pos = torch.arange(q.shape[-2], dtype=torch.float32)
    inv = 1.0 / (10000 ** (torch.arange(0, head_dim, 2).float() / head_dim))
    emb = torch.cat((torch.outer(pos, inv),) * 2, dim=-1)
    cos, sin = emb.cos(), emb.sin()
    return q * cos + rotate_half(q) * sin, k * cos + rotate_half(k) * sin


class Attention(nn.Module):
    """Self-attention in the ways it is written by hand: fused or separate projections, GQA by
    repeat_interleave or expand, heads split by attribute, -1, literal or the input's width,
    rotary, SDPA or a hand-written softmax, heads merged by -1, attribute or the input's width."""

    def __init__(self, d: int, rng: random.Random):
        super().__init__()
        self.head_dim = rng.choice([2, 4])
        self.num_kv_heads = rng.choice([1, 2, 3])
        self.n_rep = rng.choice([1, 2])
        self.num_heads = self.num_kv_heads * self.n_rep
        self.inner = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        self.fused = self.n_rep == 1 and rng.random() < 0.4
        if self.fused:
            self.qkv = nn.Linear(d, 3 * self.inner, bias=rng.random() < 0.5)
        else:
            self.q, self.k, self.v = nn.Linear(d, self.inner), nn.Linear(d, kv, bias=False), nn.Linear(d, kv)
        self.o = nn.Linear(self.inner, d)
        self.split = rng.choice(["attr", "minus_heads", "minus_dim", "literal_size", "literal_heads", "width"])
        if self.split == "width" and (self.inner != d or self.n_rep != 1):
            self.split = "attr"
        self.repeat = rng.choice(["interleave", "expand"])
        # no Python branch may test a shape (`if q.shape[-1] == self.head_dim`): the traced graph
        # holds one branch, and a pruned model could take the other (a limit graphprune documents)
        literal = self.split == "literal_size"  # heads of size 2, whatever head_dim says
        self.rope = self.head_dim % 2 == 0 and not literal and rng.random() < 0.4
        self.scores = rng.choice(["sdpa", "matmul", "einsum"])
        self.causal = rng.random() < 0.3
        self.head_scale = nn.Parameter(torch.rand(self.num_heads, 1, 1) + 0.5) if not literal and rng.random() < 0.3 else None
        self.merge = rng.choice(["minus", "attr", "width"] if self.inner == d else ["minus", "attr"])

    def heads(self, t, n: int):
        b, s, _ = t.shape
        if self.split == "attr":
            return t.view(b, s, n, self.head_dim).transpose(1, 2)
        if self.split == "minus_heads":
            return t.view(b, s, -1, self.head_dim).transpose(1, 2)
        if self.split == "minus_dim":
            return t.reshape(b, s, n, -1).transpose(1, 2)
        if self.split == "literal_heads":  # the head count written as a number, the size as -1
            if n == 1:
                return t.view(b, s, 1, -1).transpose(1, 2)
            if n == 2:
                return t.view(b, s, 2, -1).transpose(1, 2)
            if n == 3:
                return t.view(b, s, 3, -1).transpose(1, 2)
            if n == 4:
                return t.view(b, s, 4, -1).transpose(1, 2)
            return t.view(b, s, 6, -1).transpose(1, 2)
        return t.view(b, s, t.shape[-1] // 2, 2).transpose(1, 2)  # head size 2 written as a number

    def kv_repeat(self, t):
        if self.n_rep == 1:
            return t
        if self.repeat == "interleave":
            return t.repeat_interleave(self.n_rep, dim=1)
        b, h, s, e = t.shape
        return t[:, :, None].expand(b, h, self.n_rep, s, e).reshape(b, h * self.n_rep, s, e)

    def forward(self, x):
        b, s, c = x.shape
        if self.fused and self.split == "width":  # timm's reshape(B, N, 3, heads, C // heads)
            q, k, v = self.qkv(x).reshape(b, s, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        elif self.fused:
            q, k, v = self.qkv(x).reshape(b, s, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        elif self.split == "width":
            q = self.q(x).reshape(b, s, self.num_heads, c // self.num_heads).transpose(1, 2)
            k = self.k(x).reshape(b, s, self.num_heads, c // self.num_heads).transpose(1, 2)
            v = self.v(x).reshape(b, s, self.num_heads, c // self.num_heads).transpose(1, 2)
        else:
            q, k, v = self.heads(self.q(x), self.num_heads), self.heads(self.k(x), self.num_kv_heads), \
                self.heads(self.v(x), self.num_kv_heads)
        if self.rope:
            q, k = rotary(q, k, self.head_dim)
        k, v = self.kv_repeat(k), self.kv_repeat(v)
        if self.scores == "sdpa":
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        else:
            if self.scores == "einsum":
                att = torch.einsum("bhqd,bhkd->bhqk", q, k) * q.shape[-1] ** -0.5
            else:
                att = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
            if self.causal:
                att = att.masked_fill(torch.ones(s, s, dtype=torch.bool).triu(1), float("-inf"))
            y = att.softmax(dim=-1) @ v
        if self.head_scale is not None:
            y = y * self.head_scale
        y = y.transpose(1, 2)
        if self.merge == "minus":
            y = y.reshape(b, s, -1)
        elif self.merge == "width":  # B, N, C = x.shape ... reshape(B, N, C)
            y = y.reshape(b, s, c)
        else:
            y = y.reshape(b, s, self.inner)
        return x + self.o(y)


class TorchMHA(nn.Module):
    """nn.MultiheadAttention, batch first or not, self-attention or keys and values of their own widths."""

    def __init__(self, d: int, rng: random.Random):
        super().__init__()
        heads = next(h for h in (rng.choice([2, 4]), 2, 1) if d % h == 0)
        self.cross = rng.random() < 0.3
        kdim, vdim = (rng.choice([6, 10]), rng.choice([4, 8])) if self.cross else (None, None)
        self.batch_first = rng.random() < 0.7
        self.attn = nn.MultiheadAttention(d, heads, batch_first=self.batch_first, bias=rng.random() < 0.7,
                                          kdim=kdim, vdim=vdim, add_bias_kv=rng.random() < 0.2)
        self.k, self.v = (nn.Linear(d, kdim), nn.Linear(d, vdim)) if self.cross else (None, None)
        self.need_weights = rng.random() < 0.5

    def forward(self, x):
        k, v = (self.k(x), self.v(x)) if self.cross else (x, x)
        if not self.batch_first:
            x, k, v = x.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        y, _ = self.attn(x, k, v, need_weights=self.need_weights)
        return (x + y) if self.batch_first else (x + y).transpose(0, 1)


class MLP(nn.Module):
    def __init__(self, d: int, rng: random.Random):
        super().__init__()
        hidden = rng.choice([8, 12, 16])
        self.gated = rng.random() < 0.4
        self.up, self.down = nn.Linear(d, hidden), nn.Linear(hidden, d)
        self.gate = nn.Linear(d, hidden, bias=False) if self.gated else None
        self.act = act(rng)
        self.gamma = nn.Parameter(torch.full((d,), 0.5)) if rng.random() < 0.3 else None

    def forward(self, x):
        h = self.act(self.up(x))
        y = self.down(h * self.gate(x) if self.gated else h)
        return x + (y if self.gamma is None else self.gamma * y)


class Norm(nn.Module):
    def __init__(self, d: int, rng: random.Random):
        super().__init__()
        self.norm = nn.LayerNorm(d) if rng.random() < 0.6 else nn.RMSNorm(d)

    def forward(self, x):
        return self.norm(x)


class FeatureSplit(nn.Module):
    """Features cut into two parts along the last dim, each projected, then concatenated."""

    def __init__(self, d: int, rng: random.Random):
        super().__init__()
        self.parts = [d // 2, d - d // 2] if rng.random() < 0.5 else [d - 2, 2]
        self.a, self.b = nn.Linear(self.parts[0], 6), nn.Linear(self.parts[1], 4)
        self.dout = 10

    def forward(self, x):
        p, q = x.split(self.parts, dim=-1)
        return torch.cat([self.a(p), F.gelu(self.b(q))], dim=-1)


class Tokens(nn.Module):
    """A class token in front and a position embedding, as bare parameters."""

    def __init__(self, d: int, t: int, rng: random.Random):
        super().__init__()
        self.cls = nn.Parameter(torch.randn(1, 1, d))
        self.pos = nn.Parameter(torch.randn(1, t + 1, d))

    def forward(self, x):
        return torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos


class SharedLinear(nn.Module):
    def __init__(self, d: int, rng: random.Random):
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        return self.fc(F.gelu(self.fc(x)))


class DenseCat(nn.Module):
    """DenseNet: the input concatenated with what a layer makes of it."""

    def __init__(self, c: int, rng: random.Random):
        super().__init__()
        self.layer = ConvNormAct(c, rng.choice([2, 4]), rng)
        self.cout = c + self.layer.conv.out_channels

    def forward(self, x):
        return torch.cat([x, self.layer(x)], dim=1)


class ChannelSlice(nn.Module):
    """A fixed window of channels (the rest dropped): its channels stay as they are."""

    def __init__(self, c: int, rng: random.Random):
        super().__init__()
        self.pre = nn.Conv2d(c, c + 2, 1)
        self.cout = c

    def forward(self, x):
        return self.pre(x)[:, 1:-1]


class Gate(nn.Module):
    """GLU: one projection chunked into value and gate."""

    def __init__(self, c: int, rng: random.Random):
        super().__init__()
        self.proj, self.out = nn.Conv2d(c, 2 * c, 1), nn.Conv2d(c, c, 1)

    def forward(self, x):
        a, g = self.proj(x).chunk(2, dim=1)
        return x + self.out(a * torch.sigmoid(g))


class UpDown(nn.Module):
    """Strided conv down, transposed conv back up, added to the input."""

    def __init__(self, c: int, rng: random.Random):
        super().__init__()
        mid = rng.choice([4, 6])
        self.down, self.up = nn.Conv2d(c, mid, 2, stride=2), nn.ConvTranspose2d(mid, c, 2, stride=2)

    def forward(self, x):
        return x + self.up(F.relu(self.down(x)))


class GroupedGN(nn.Module):
    """A grouped conv followed by a group norm with as many groups."""

    def __init__(self, c: int, rng: random.Random):
        super().__init__()
        g = 2
        self.pre = nn.Conv2d(c, 2 * g, 1)
        self.conv, self.norm = nn.Conv2d(2 * g, 4 * g, 3, padding=1, groups=g), nn.GroupNorm(g, 4 * g)
        self.cout = 4 * g

    def forward(self, x):
        return F.relu(self.norm(self.conv(self.pre(x))))


class TokenMixer(nn.Module):
    """Conv1d over the features of a sequence, as (B, D, T) and back."""

    def __init__(self, d: int, rng: random.Random):
        super().__init__()
        self.conv = nn.Conv1d(d, d, 3, padding=1, groups=rng.choice([1, d]))

    def forward(self, x):
        return x + self.conv(x.transpose(1, 2)).transpose(1, 2)


class GLU(nn.Module):
    def __init__(self, d: int, rng: random.Random):
        super().__init__()
        hidden = rng.choice([6, 8])
        self.fc, self.out = nn.Linear(d, 2 * hidden), nn.Linear(hidden, d)

    def forward(self, x):
        a, g = self.fc(x).chunk(2, dim=-1)
        return x + self.out(a * F.silu(g))


class Recurrent(nn.Module):
    """An LSTM (sometimes with a projection), GRU or RNN over the sequence, read back to the
    stream's width; sometimes the final hidden state is added to every position (both directions
    read it: units j and H + j)."""

    def __init__(self, d: int, rng: random.Random):
        super().__init__()
        kind, hidden = rng.choice([nn.LSTM, nn.GRU, nn.RNN]), rng.choice([6, 8, 12])
        self.dirs, self.batch_first = rng.choice([1, 2]), rng.random() < 0.7
        proj = {"proj_size": 4} if kind is nn.LSTM and rng.random() < 0.3 else {}
        self.rnn = kind(d, hidden, num_layers=rng.choice([1, 2]), batch_first=self.batch_first,
                        bidirectional=self.dirs == 2, bias=rng.random() < 0.8, **proj)
        self.out = nn.Linear(proj.get("proj_size", hidden) * self.dirs, d)
        self.read_state = rng.random() < 0.3

    def forward(self, x):
        y, state = self.rnn(x if self.batch_first else x.transpose(0, 1))
        y = y if self.batch_first else y.transpose(0, 1)
        if self.read_state:
            h = state[0] if isinstance(state, tuple) else state
            y = y + torch.cat([h[-1]] * self.dirs, -1)[:, None]
        return x + self.out(y)


class CellLoop(nn.Module):
    """A recurrent cell stepped over the tokens in Python, its hidden states stacked."""

    def __init__(self, d: int, rng: random.Random):
        super().__init__()
        kind, hidden = rng.choice([nn.LSTMCell, nn.GRUCell, nn.RNNCell]), rng.choice([6, 8, 12])
        self.cell, self.out = kind(d, hidden, bias=rng.random() < 0.8), nn.Linear(hidden, d)

    def forward(self, x):
        state, hs = None, []
        for t in range(x.shape[1]):
            state = self.cell(x[:, t], state)
            hs.append(state[0] if isinstance(state, tuple) else state)
        return x + self.out(torch.stack(hs, 1))


class BilinearMix(nn.Module):
    """nn.Bilinear of one projection with itself (a quadratic form) or with a second one."""

    def __init__(self, d: int, rng: random.Random):
        super().__init__()
        hidden, self.same = rng.choice([6, 8]), rng.random() < 0.5
        self.a = nn.Linear(d, hidden)
        self.b = None if self.same else nn.Linear(d, hidden + 2)
        self.bil = nn.Bilinear(hidden, hidden if self.same else hidden + 2, d, bias=rng.random() < 0.5)

    def forward(self, x):
        h = torch.tanh(self.a(x))
        return x + self.bil(h, h if self.b is None else torch.tanh(self.b(x)))
