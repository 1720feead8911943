"""Tests for graphprune/rules/conv.py: grouped, depthwise (with multiplier) and transposed convs."""
from __future__ import annotations

import torch
from torch import nn

import graphprune
from graphprune.testing import assert_prune_matches

X = torch.randn(2, 4, 8, 8)


def _net(groups: int, mult: int = 1) -> nn.Module:
    return nn.Sequential(nn.Conv2d(4, 8, 1), nn.ReLU(), nn.Conv2d(8, 8 * mult, 3, padding=1, groups=groups),
                         nn.ReLU(), nn.Conv2d(8 * mult, 3, 1))


def test_grouped_conv_prunes_inside_its_groups_and_keeps_groups() -> None:
    model = _net(groups=4)
    inside = [g for g in graphprune.find_groups(model, X).prunable if g.unit == "group-channel"]
    assert [g.width for g in inside] == [2, 2]  # inputs and outputs of each group, independently
    rows = next(m for m in inside[1].members if m.fqn == "2.weight" and m.dim == 0).indices
    assert rows.tolist() == [[0, 2, 4, 6], [1, 3, 5, 7]]  # one position in every group
    small = graphprune.shrink(model, 0.3, example_inputs=X, tolerance=0.2)
    assert small[2].groups == 4 and small[2].in_channels % 4 == 0 and small[2].out_channels % 4 == 0
    assert small[0].out_channels == small[2].in_channels < 8 or small[4].in_channels == small[2].out_channels < 8
    assert_prune_matches(model, X)


class FixedPositions(nn.Module):
    """The code keeps the first two outputs of every group: inside the groups only the inputs could
    go, whole groups shrink both sides, so whole groups it is."""

    def __init__(self):
        super().__init__()
        self.inp, self.conv, self.out = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 8, 3, padding=1, groups=2), nn.Conv2d(4, 3, 1)

    def forward(self, x):
        y = self.conv(self.inp(x))
        return self.out(y.view(y.shape[0], self.conv.groups, -1, 8, 8)[:, :, :2].flatten(1, 2))


def test_whole_groups_where_the_positions_inside_groups_are_fixed() -> None:
    groups = [g for g in graphprune.find_groups(FixedPositions(), X).prunable if g.unit == "group"]
    assert len(groups) == 1 and groups[0].width == 2
    small = graphprune.shrink(FixedPositions(), 0.3, example_inputs=X, tolerance=0.3)
    assert small.conv.groups == 1 and small(X).shape == (2, 3, 8, 8)
    assert_prune_matches(FixedPositions(), X)


def test_depthwise_multiplier_couples_each_input_to_its_outputs() -> None:
    model = _net(groups=8, mult=2)
    group = next(g for g in graphprune.find_groups(model, X).prunable if g.unit == "group")
    rows = next(m for m in group.members if m.fqn == "2.weight" and m.dim == 0).indices
    assert rows.tolist()[:2] == [[0, 1], [2, 3]]
    assert_prune_matches(model, X)


def test_transposed_conv_in_and_out_channels() -> None:
    model = nn.Sequential(nn.Conv2d(4, 8, 1), nn.ReLU(), nn.ConvTranspose2d(8, 6, 2, stride=2), nn.ReLU(),
                          nn.Conv2d(6, 2, 1))
    small = graphprune.shrink(model, 0.4, example_inputs=X, tolerance=0.2)
    assert small[2].in_channels == small[0].out_channels and small[2].out_channels == small[4].in_channels
    assert_prune_matches(model, X)


def test_resnext_with_squeeze_excite_prunes_inside_its_groups() -> None:
    from ..models import ResNeXtSE

    x = torch.randn(2, 3, 8, 8)
    inside = [g for g in graphprune.find_groups(ResNeXtSE(), x).prunable if g.unit == "group-channel"]
    assert [g.width for g in inside] == [4, 4]
    assert {"se.fc2.weight", "conv3.0.weight"} <= {m.fqn for m in inside[1].members}
    small = graphprune.shrink(ResNeXtSE().eval(), 0.3, example_inputs=x, tolerance=0.1)
    assert small.conv2[0].groups == 4 and small.conv2[0].out_channels == small.se.fc1.in_channels
    assert assert_prune_matches(ResNeXtSE(), x).groups_checked == 4


class RadixSplit(nn.Module):
    """ResNeSt's split attention: a conv with one group per radix branch, viewed as (radix, C)."""

    def __init__(self):
        super().__init__()
        self.radix = 2
        self.inp, self.conv = nn.Conv2d(4, 8, 1), nn.Conv2d(8, 12, 3, padding=1, groups=2)
        self.fc1, self.fc2, self.out = nn.Conv2d(6, 4, 1), nn.Conv2d(4, 12, 1), nn.Conv2d(6, 3, 1)

    def forward(self, x):
        y = torch.relu(self.conv(self.inp(x)))
        B, RC, H, W = y.shape
        y = y.reshape(B, self.radix, RC // self.radix, H, W)
        gap = self.fc1(y.sum(dim=1).mean((2, 3), keepdim=True))
        attn = self.fc2(torch.relu(gap)).view(B, self.radix, -1, 1, 1).softmax(dim=1)
        return self.out((y * attn).sum(dim=1))


def test_a_radix_view_of_a_grouped_conv_prunes_inside_every_branch() -> None:
    groups = graphprune.find_groups(RadixSplit(), X)
    inside = next(g for g in groups.prunable if any(m.fqn == "conv.weight" and m.dim == 0 for m in g.members))
    assert inside.unit == "group-channel" and inside.width == 6  # channel c of both radix branches together
    small = graphprune.shrink(RadixSplit().eval(), 0.3, example_inputs=X, tolerance=0.15)
    assert small.conv.groups == 2 and small(X).shape == (2, 3, 8, 8)
    assert_prune_matches(RadixSplit(), X)
