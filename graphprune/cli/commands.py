"""Command line, verbs: check every argument and output path first, then load, prune and save."""
from __future__ import annotations

import argparse
import importlib
import os
import tempfile
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError, LoadError
from ..inputs import forward_params
from ..sources import ModelSpec, folder_kind


# -- checks that run before any work -----------------------------------------------------------

def check_args(args: argparse.Namespace) -> ModelSpec:
    """Everything that can be checked without building the model: MODEL, input files and shapes,
    the output folder. Returns the parsed MODEL."""
    spec = check_model_arg(args.model)
    for flag in ("inputs", "calibration", "plan"):
        path = getattr(args, flag, None)
        if path is not None and not os.path.isfile(path):
            raise ConfigError(f"{'--' if flag != 'plan' else ''}{flag} {path}: no such file")
    if getattr(args, "input_shape", None):
        parse_shape(args.input_shape)
    if hasattr(args, "out"):
        check_out_dir(args.out, args.overwrite)
    return spec


def check_model_arg(text: str) -> ModelSpec:
    """Parse MODEL and check it names something loadable (a timm or torchvision name that exists,
    a folder graphprune or transformers wrote); no model is built yet."""
    from ..saving import describe_file

    spec = ModelSpec.parse(text)
    if spec.source == "timm":
        import timm

        if not timm.is_model(spec.name):
            spec.build()  # raises the LoadError with the closest names
    elif spec.source == "torchvision":
        import torchvision

        if spec.name not in torchvision.models.list_models():
            spec.build()
    elif spec.source in ("hf", "folder"):
        if os.path.isfile(spec.name):
            raise LoadError(describe_file(spec.name))
        if not os.path.isdir(spec.name):
            raise LoadError(f"no such folder {spec.name!r}; MODEL is timm:NAME, torchvision:NAME, hf:FOLDER, "
                            f"class:module:Class or a folder written by graphprune")
        kind = folder_kind(spec.name)
        if kind is None or (spec.source == "hf" and kind != "hf"):
            raise LoadError(f"{spec.name!r} is not a {'Hugging Face' if spec.source == 'hf' else 'model'} folder "
                            f"(no {'config.json' if spec.source == 'hf' else 'graphprune.json or config.json'})")
    return spec


def check_out_dir(path: str, overwrite: bool) -> None:
    _not_empty(path, "--out", "folder")
    if os.path.isfile(path):
        raise ConfigError(f"--out {path} is a file; pass a folder to write the model into")
    if os.path.isdir(path) and os.listdir(path) and not overwrite:
        raise ConfigError(f"--out {path} already holds files; pass another folder or --overwrite")
    _check_writable(path, "--out")


def check_out_file(path: str | None, flag: str) -> None:
    if path is None:
        return
    _not_empty(path, flag, "file")
    if os.path.isdir(path):
        raise ConfigError(f"{flag} {path} is a folder; pass a file name")
    if os.path.exists(path) and not os.access(path, os.W_OK):
        raise ConfigError(f"{flag} {path}: the file exists and cannot be written (permission denied)")
    _check_writable(path, flag)


def _not_empty(path: str, flag: str, what: str) -> None:
    if not path.strip():
        raise ConfigError(f"{flag} is empty; pass the {what} to write")


def _check_writable(path: str, flag: str) -> None:
    """Before any work: the nearest existing folder of ``path`` takes a new file (a probe written
    and removed there; permissions alone do not tell, e.g. for root under /proc)."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(parent):  # folders that do not exist yet are made under the nearest that does
        if os.path.exists(parent):
            raise ConfigError(f"{flag} {path}: {parent} is a file, not a folder")
        parent = os.path.dirname(parent)
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise ConfigError(f"{flag} {path}: cannot write into {parent} ({err.strerror or err})") from err


def import_modules(names: list[str]) -> None:
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as err:  # noqa: BLE001 - any failure of the user's module
            raise LoadError(f"--import {name} failed: {type(err).__name__}: {err}") from err


# -- inputs ---------------------------------------------------------------------------------------

def example_inputs(args: argparse.Namespace, model: nn.Module) -> Any:
    """The inputs --input-shape or --inputs give, or None (derived by graphprune, or asked for)."""
    if getattr(args, "inputs", None):
        pos, named = read_tensors(args.inputs, "--inputs")
        if (pos and named) or not (pos or named):
            raise ConfigError(f"--inputs {args.inputs} must hold positional tensors (keys 0, 1, ...) or named "
                              f"ones (keyword arguments), not both or neither")
        return tuple(pos) if pos else _without_cache(model, named)
    if getattr(args, "input_shape", None):
        shape = parse_shape(args.input_shape)
        if getattr(model, "main_input_name", None) == "input_ids":
            vocab = getattr(getattr(model, "config", None), "vocab_size", None) or 2
            return _without_cache(model, {"input_ids": torch.randint(0, vocab, shape,
                                                                     generator=torch.Generator().manual_seed(0))})
        return torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    return None


def _without_cache(model: nn.Module, kwargs: dict[str, Any]) -> dict[str, Any]:
    """A returned KV cache is no output shape to keep (graphprune's own HF inputs turn it off too)."""
    return {**kwargs, "use_cache": False} if "use_cache" in forward_params(model) and "use_cache" not in kwargs \
        else kwargs


def parse_shape(text: str) -> tuple[int, ...]:
    """``"1,3,224,224"`` -> (1, 3, 224, 224).

    >>> parse_shape("1, 3,8,8")
    (1, 3, 8, 8)
    """
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if not shape or any(n < 1 for n in shape):
        raise ConfigError(f"--input-shape {text!r} must be positive integers separated by commas, e.g. 1,3,224,224")
    return shape


def read_tensors(path: str, flag: str) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """Positional (keys 0, 1, ...) and named tensors of a safetensors file; never a pickle."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise ConfigError(f"{flag} {path}: no such file")
    try:
        data = load_file(path)
    except (SafetensorError, OSError, ValueError) as err:
        raise ConfigError(f"{flag} {path} is not a safetensors file ({err}); write one with "
                          f"safetensors.torch.save_file({{'0': tensor}}, path) (pickles are never read)") from err
    pos = sorted((k for k in data if k.isdigit()), key=int)
    if [int(k) for k in pos] != list(range(len(pos))):
        raise ConfigError(f"{flag} {path}: positional keys must be 0, 1, 2, ... without gaps, got {pos}")
    return [data[k] for k in pos], {k: v for k, v in data.items() if not k.isdigit()}


def calibration_batches(path: str, batch_size: int) -> list[Any]:
    """Batches of ``batch_size`` samples (dim 0) of every tensor in the file."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size} must be >= 1")
    args, kwargs = read_tensors(path, "--calibration")
    tensors = args + list(kwargs.values())
    n = tensors[0].shape[0] if tensors else 0
    if not n or any(t.shape[0] != n for t in tensors):
        raise ConfigError(f"--calibration {path}: every tensor must have the same number of samples along dim 0")
    cut = lambda t, i: t[i:i + batch_size]
    return [(tuple(cut(t, i) for t in args) if args else {k: cut(t, i) for k, t in kwargs.items()})
            for i in range(0, n, batch_size)]
