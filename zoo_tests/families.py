"""Zoo data: the (family, smallest model) cases, read from timm_families.json (see make_families.py)."""
from __future__ import annotations

import json
from pathlib import Path

DATA = json.loads(Path(__file__).with_name("timm_families.json").read_text())

# One small model from each of a few architecture styles: the CI tier (`make test`), under ~3 min.
SMOKE_FAMILIES = ("resnet", "efficientnet", "vision_transformer", "convnext", "densenet")


def timm_cases() -> list[dict]:
    """Families with a buildable model, in family order."""
    return [f for f in DATA["families"] if f["model"]]


def skipped_families() -> list[dict]:
    """Families whose models cannot be built from config at all, each with the reason."""
    return [f for f in DATA["families"] if not f["model"]]
