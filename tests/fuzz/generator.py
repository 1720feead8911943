"""Random models for the fuzzer: a seed picks a domain (conv or sequence), a stack of blocks from
``blocks.py``, optional second input and second output; widths follow from the blocks chosen.

>>> model, inputs, recipe = random_model(3)
>>> isinstance(inputs, tuple) and bool(recipe)
True
"""
from __future__ import annotations

import random

import torch
import torch.nn.functional as F
from torch import nn

from . import blocks as B
from . import source_blocks as S

T, HW, VOCAB = 5, 6, 11  # tokens, image side, vocabulary: small, the fuzzer runs thousands of models


class ConvNet(nn.Module):
    def __init__(self, rng: random.Random, two_inputs: bool, two_outputs: bool):
        super().__init__()
        c = rng.choice([4, 6, 8])
        self.stem = B.ConvNormAct(3, c, rng)
        self.side = nn.Conv2d(2, c, 1) if two_inputs else None
        self.merge = rng.choice(["add", "cat"]) if two_inputs else None
        if self.merge == "cat":
            c *= 2
        layers, self.recipe = [], []
        for _ in range(rng.choice([2, 3, 4])):
            block, c = _conv_block(c, rng)
            layers.append(block)
            self.recipe.append(type(block).__name__)
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(c, 3)
        self.aux = nn.Conv2d(c, 2, 1) if two_outputs else None

    def forward(self, x, y=None):
        h = self.stem(x)
        if self.side is not None:
            s = self.side(y)
            h = h + s if self.merge == "add" else torch.cat([h, s], dim=1)
        h = self.body(h)
        out = self.head(h.mean((2, 3)))
        return (out, self.aux(h)) if self.aux is not None else out


def _conv_block(c: int, rng: random.Random) -> tuple[nn.Module, int]:
    kind = rng.choice(["cna", "grouped", "residual", "concat", "split", "shuffle", "shared", "bare", "dw", "se",
                       "dense", "slice", "gate", "updown", "grouped_gn"])
    if kind == "cna":
        out = rng.choice([4, 6, 8, 12])
        return B.ConvNormAct(c, out, rng), out
    if kind == "grouped":
        g = rng.choice([2, 3])
        out = g * rng.choice([2, 3])
        pre = B.ConvNormAct(c, g * 2, rng)
        return nn.Sequential(pre, B.ConvNormAct(g * 2, out, rng, groups=g)), out
    if kind == "residual":
        return B.Residual(c, rng), c
    if kind == "concat":
        block = B.Concat(c, rng)
        return block, block.cout
    if kind == "split":
        block = B.Split(c, rng)
        return block, block.cout
    if kind == "shuffle":
        block = B.Shuffle(c, rng)
        return block, block.cout
    if kind in ("dw", "dense", "slice", "grouped_gn"):
        block = {"dw": B.Depthwise, "dense": B.DenseCat, "slice": B.ChannelSlice, "grouped_gn": B.GroupedGN}[kind](c, rng)
        return block, block.cout
    return {"shared": B.Shared, "bare": B.BareScale, "se": B.SqueezeExcite, "gate": B.Gate,
            "updown": B.UpDown}[kind](c, rng), c


class SeqNet(nn.Module):
    def __init__(self, rng: random.Random, two_inputs: bool, two_outputs: bool, tokens: bool = False,
                 block=None):
        super().__init__()
        d = rng.choice([8, 12, 16])
        self.embed = nn.Embedding(VOCAB, d) if tokens else nn.Linear(6, d)
        self.side = nn.Linear(3, d) if two_inputs else None
        self.tokens = B.Tokens(d, T, rng) if rng.random() < 0.3 else None
        layers, self.recipe = [], []
        for _ in range(rng.choice([2, 3, 4])):
            made, d = (block or _seq_block)(d, rng)
            layers.append(made)
            self.recipe.append(type(made).__name__)
        self.body = nn.Sequential(*layers)
        self.pool = rng.choice(["mean", "first"])
        self.head = nn.Linear(d, 3)
        self.aux = nn.Linear(d, 2) if two_outputs else None
        self.lm = None
        if tokens and d == self.embed.embedding_dim:  # tied: the output projection is the embedding
            self.lm = nn.Linear(d, VOCAB, bias=False)
            self.lm.weight = self.embed.weight

    def forward(self, x, y=None):
        h = self.embed(x)
        if self.side is not None:
            h = h + self.side(y)
        if self.tokens is not None:
            h = self.tokens(h)
        h = self.body(h)
        out = self.head(h.mean(1) if self.pool == "mean" else h[:, 0])
        if self.lm is not None:
            out = out + self.lm(h).mean((1, 2), keepdim=False)[:, None]
        return (out, self.aux(F.gelu(h))) if self.aux is not None else out


def _seq_block(d: int, rng: random.Random) -> tuple[nn.Module, int]:
    kind = rng.choice(["attention", "attention", "mha", "mlp", "norm", "split", "shared", "linear", "mixer", "glu"])
    if kind == "attention":
        return B.Attention(d, rng), d
    if kind == "mha":
        return B.TorchMHA(d, rng), d
    if kind == "split":
        block = B.FeatureSplit(d, rng)
        return block, block.dout
    if kind == "linear":
        out = rng.choice([8, 12, 16])
        return nn.Sequential(nn.Linear(d, out), B.act(rng)), out
    return {"mlp": B.MLP, "norm": B.Norm, "shared": B.SharedLinear, "mixer": B.TokenMixer, "glu": B.GLU}[kind](d, rng), d


def _recurrent_block(d: int, rng: random.Random) -> tuple[nn.Module, int]:
    """The recurrent family's blocks: recurrent layers, cells in a loop and bilinear maps, between
    the sequence blocks of the mixed family."""
    kind = rng.choice(["recurrent", "recurrent", "cells", "bilinear", "other"])
    if kind == "other":
        return _seq_block(d, rng)
    return {"recurrent": B.Recurrent, "cells": B.CellLoop, "bilinear": B.BilinearMix}[kind](d, rng), d


def _source_block(d: int, rng: random.Random) -> tuple[nn.Module, int]:
    """The source family's blocks (``source_blocks``): sizes only the code names, passed around as
    real code does, between the sequence blocks of the mixed family."""
    if rng.random() < 0.3:
        return _seq_block(d, rng)
    return S.source_block(d, rng, T + 1), d


class HybridNet(nn.Module):
    """Conv blocks, then the feature map as tokens (ViT's patch embedding) for sequence blocks."""

    def __init__(self, rng: random.Random, two_inputs: bool, two_outputs: bool):
        super().__init__()
        c = rng.choice([8, 12])
        self.stem = B.ConvNormAct(3, c, rng)
        layers, self.recipe = [], []
        for _ in range(rng.choice([1, 2])):
            block, c = _conv_block(c, rng)
            layers.append(block)
            self.recipe.append(type(block).__name__)
        self.convs = nn.Sequential(*layers)
        self.style = rng.choice(["flatten", "reshape"])
        seq = []
        for _ in range(rng.choice([1, 2])):
            block, c = _seq_block(c, rng)
            seq.append(block)
            self.recipe.append(type(block).__name__)
        self.body = nn.Sequential(*seq)
        self.head = nn.Linear(c, 3)

    def forward(self, x, y=None):
        h = self.convs(self.stem(x))
        if self.style == "flatten":
            h = h.flatten(2).transpose(1, 2)
        else:
            b, c, hh, ww = h.shape
            h = h.reshape(b, c, hh * ww).permute(0, 2, 1)
        return self.head(self.body(h).mean(1))


def random_model(seed: int, family: str = "mixed") -> tuple[nn.Module, tuple[torch.Tensor, ...], str]:
    """(model in eval mode, example inputs, one-line recipe) for ``seed``. ``family="recurrent"``:
    sequence models with recurrent layers, cells and bilinear maps; ``"source"``: sequence models
    with sizes only the code names (einops, helpers' arguments, folded heads, repeats). Each family
    draws from a stream of its own, so the mixed family's seeds (and their regression seeds) stay
    the models they were."""
    rng = random.Random(seed if family == "mixed" else f"{family}-{seed}")
    torch.manual_seed(seed)
    two_inputs, two_outputs = rng.random() < 0.25, rng.random() < 0.25
    kind = rng.choice([ConvNet, ConvNet, SeqNet, SeqNet, HybridNet]) if family == "mixed" else SeqNet
    if kind is HybridNet:
        two_inputs = two_outputs = False
    tokens = kind is SeqNet and rng.random() < 0.25
    block = {"recurrent": _recurrent_block, "source": _source_block}.get(family)
    model = (kind(rng, two_inputs, two_outputs, tokens, block) if kind is SeqNet
             else kind(rng, two_inputs, two_outputs)).eval()
    gen = torch.Generator().manual_seed(seed)
    if kind is not SeqNet:
        inputs = (torch.randn(2, 3, HW, HW, generator=gen),) + ((torch.randn(2, 2, HW, HW, generator=gen),) if two_inputs else ())
    else:
        first = torch.randint(0, VOCAB, (2, T), generator=gen) if tokens else torch.randn(2, T, 6, generator=gen)
        inputs = (first,) + ((torch.randn(2, T, 3, generator=gen),) if two_inputs else ())
    recipe = f"{type(model).__name__}({', '.join(model.recipe)}{', 2 inputs' if two_inputs else ''}" \
             f"{', 2 outputs' if two_outputs else ''})"
    return model, inputs, recipe
