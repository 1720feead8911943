"""Toy models for the mask tests: every layer kind a mask has a layout for, widths divisible by 8."""
from __future__ import annotations

import torch
from torch import nn


class Mixed(nn.Module):
    """conv -> grouped conv -> transposed conv -> pool -> linear -> GELU -> linear head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.grouped = nn.Conv2d(16, 16, 3, padding=1, groups=2)
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.norm = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 24)
        self.head = nn.Linear(24, 5)

    def forward(self, x):
        x = self.norm(self.up(torch.relu(self.grouped(torch.relu(self.conv(x))))))
        return self.head(torch.nn.functional.gelu(self.fc(x.mean((2, 3)))))

    @staticmethod
    def data(batches: int = 3) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(1)
        return [torch.randn(4, 8, 6, 6, generator=g) for _ in range(batches)]


class Tiny(nn.Module):
    """embedding -> linear -> layernorm -> linear; the head shares the embedding's weight."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(32, 16)
        self.fc1, self.norm, self.fc2 = nn.Linear(16, 24), nn.LayerNorm(24), nn.Linear(24, 16)
        self.head = nn.Linear(16, 32, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        return self.head(self.fc2(self.norm(torch.relu(self.fc1(self.embed(ids))))))
