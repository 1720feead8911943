"""The zero-then-prune oracle on the timm models the core issue names (CI tier: marked timm, not slow)."""
from __future__ import annotations

import pytest
import timm
import torch

from graphprune.testing import assert_prune_matches

MODELS = ["resnet50", "convnext_tiny", "efficientnet_b0", "mobilenetv3_large_100", "regnety_016", "densenet121",
          "vit_small_patch16_224", "swin_tiny_patch4_window7_224"]


@pytest.mark.timm
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", MODELS)
def test_zeroed_units_prune_exactly(name: str) -> None:
    torch.manual_seed(0)
    result = assert_prune_matches(timm.create_model(name).eval(), fraction=0.3, tol=1e-4)
    assert result.groups_checked >= 10
