"""Hostile files for the tests: pickles whose unpickling creates a marker file."""
from __future__ import annotations

import json
import pathlib
import pickle

import torch


class Payload:
    """Unpickling this calls ``Path.touch(marker)``: the marker appears if anything unpickles it."""

    def __init__(self, marker: pathlib.Path):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def write_hostile(folder: pathlib.Path, marker: pathlib.Path) -> dict[str, pathlib.Path]:
    """Every place a pickle could be handed to graphprune: a torch.save file, a raw pickle, a Hugging
    Face folder whose weights are a pickle, and a graphprune folder whose weights file is one."""
    folder.mkdir(parents=True, exist_ok=True)
    out = {"pt": folder / "evil.pt", "pkl": folder / "evil.pkl", "hf": folder / "hf", "saved": folder / "saved"}
    torch.save(Payload(marker), out["pt"])
    out["pkl"].write_bytes(pickle.dumps(Payload(marker)))
    out["hf"].mkdir()
    (out["hf"] / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "hidden_size": 16, "intermediate_size": 32,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 32}))
    torch.save(Payload(marker), out["hf"] / "pytorch_model.bin")
    out["saved"].mkdir()
    (out["saved"] / "graphprune.json").write_text(json.dumps({
        "format": "graphprune", "version": 1, "base": {"source": "timm", "name": "test_resnet"},
        "shapes": {}, "attrs": {}}))
    torch.save(Payload(marker), out["saved"] / "model.safetensors")
    return out
