"""Toy models whose right answer under each criterion is known by construction (criteria and
compensation tests): one hidden unit is dead, one is constant, one has large weights."""
from __future__ import annotations

import torch
from torch import nn

DEAD, CONSTANT, BIG = 2, 5, 7  # hidden units of Mlp with a known role
WIDTH = 10


class Mlp(nn.Module):
    """x -> Linear(4, 10) -> ReLU -> Linear(10, 3). Unit DEAD has the largest weights of all but its
    ReLU never fires on Mlp.data(); unit CONSTANT outputs 3.0 whatever the input."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.act, self.fc2 = nn.Linear(4, WIDTH), nn.ReLU(), nn.Linear(WIDTH, 3)
        with torch.no_grad():
            self.fc1.weight[DEAD] = 8.0 * torch.sign(torch.randn(4))
            self.fc1.bias[DEAD] = -1e3
            self.fc2.weight[:, DEAD] = 8.0
            self.fc1.weight[CONSTANT] = 0.0
            self.fc1.bias[CONSTANT] = 3.0
            self.fc1.weight[BIG] *= 4.0

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))

    @staticmethod
    def data(batches: int = 4, rows: int = 32) -> list[torch.Tensor]:
        g = torch.Generator().manual_seed(1)
        return [torch.randn(rows, 4, generator=g) for _ in range(batches)]


class ConvBn(nn.Module):
    """conv -> BN -> ReLU -> conv -> pool -> linear; ``zero_channel`` zeroes every parameter of one
    conv+BN channel while its BN running statistics stay non-zero."""

    def __init__(self, zero_channel: int | None = None):
        super().__init__()
        torch.manual_seed(0)
        self.c1, self.bn, self.c2 = nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.Conv2d(8, 6, 1)
        self.head = nn.Linear(6, 2)
        with torch.no_grad():
            self.bn.running_mean.uniform_(0.5, 1.5)
            self.bn.running_var.uniform_(0.5, 1.5)
            self.bn.weight.uniform_(0.2, 2.0)
            if zero_channel is not None:
                for t in (self.c1.weight[zero_channel], self.bn.weight[zero_channel:zero_channel + 1],
                          self.bn.bias[zero_channel:zero_channel + 1], self.c2.weight[:, zero_channel]):
                    t.zero_()

    def forward(self, x):
        return self.head(self.c2(torch.relu(self.bn(self.c1(x)))).mean((2, 3)))
