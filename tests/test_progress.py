"""Tests for graphprune/progress.py: bars on a terminal, silence elsewhere."""
from __future__ import annotations

import io
import sys

import torch

import graphprune

from .models import Grouped


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _shrink_stderr(monkeypatch, stream: io.StringIO) -> str:
    monkeypatch.setattr(sys, "stderr", stream)
    graphprune.shrink(Grouped().eval(), 0.2, example_inputs=torch.randn(1, 3, 8, 8), tolerance=0.2)
    return stream.getvalue()


def test_shrink_shows_its_stages_on_a_terminal_only(monkeypatch) -> None:
    shown = _shrink_stderr(monkeypatch, Terminal())
    assert "graphprune: shrink" in shown and "trace" in shown and "plan and surgery" in shown
    assert _shrink_stderr(monkeypatch, io.StringIO()) == ""
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert _shrink_stderr(monkeypatch, Terminal()) == ""
