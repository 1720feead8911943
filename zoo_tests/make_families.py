"""Zoo data generator: write timm_families.json, the smallest model of every timm family.

Run once per timm upgrade (it builds every timm model on the meta device, a few minutes):
``python zoo_tests/make_families.py``. The tests read the JSON and never import this file.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import timm
import torch

from graphprune.progress import bar

OUT = Path(__file__).with_name("timm_families.json")


def meta_size(name: str) -> tuple[int, list[int]]:
    """Parameter count and default input size of ``name``, built without allocating memory."""
    with torch.device("meta"):
        model = timm.create_model(name)
    return sum(p.numel() for p in model.parameters()), list(model.pretrained_cfg["input_size"])


def smallest(family: str) -> dict:
    """The family's model with the fewest parameters (ties: smaller input, then name)."""
    built, errors = [], {}
    for name in sorted(timm.list_models(module=family)):
        try:
            params, size = meta_size(name)
        except Exception as err:  # noqa: BLE001 - a model that cannot be built is recorded, not fatal
            errors[name] = f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
            continue
        built.append((params, size[1] * size[2], name, size))
    if not built:
        return {"family": family, "model": None, "skipped": "no model builds from config: "
                + (next(iter(errors.values())) if errors else "the family registers no model")}
    params, _, name, size = min(built)
    return {"family": family, "model": name, "params": params, "input_size": size,
            "models_in_family": len(built) + len(errors)}


def main() -> None:
    families = []
    progress = bar(sorted(timm.list_modules()), "zoo families", unit="family")
    for family in progress:
        progress.set_postfix_str(family)
        families.append(smallest(family))
        progress.write(json.dumps(families[-1]), file=sys.stderr)
    OUT.write_text(json.dumps({"timm_version": timm.__version__, "torch_version": torch.__version__.split("+")[0],
                               "families": families}, indent=1) + "\n")


if __name__ == "__main__":
    main()
