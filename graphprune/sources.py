"""Where models come from: ``timm:NAME``, ``torchvision:NAME``, ``hf:PATH`` (a local Hugging Face
folder), a folder graphprune saved, or an importable class ``module:Class`` with JSON arguments.

A ``ModelSpec`` is the recipe saved with a pruned model to rebuild its unpruned base, and what the
command line parses. Building one never downloads and never runs code a file names: a timm or
torchvision name must be registered there (and options that fetch weights or read checkpoint
files are refused), and a class is taken only from a module the user has imported (or with
``allow_import=True``), and only if it is an ``nn.Module``.
"""
from __future__ import annotations

import difflib
import importlib
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import nn

from .errors import LoadError, PlanError
from .registry import Registry

BUILDERS = Registry("model source")
# keyword arguments that fetch weights or read files (a checkpoint is a pickle): never from a record
REFUSED = {"timm": {"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path", "cache_dir"},
           "torchvision": {"weights", "weights_backbone", "pretrained", "pretrained_backbone", "progress"}}


@dataclass(frozen=True)
class ModelSpec:
    """How to build a model: ``source`` ("timm", "torchvision", "class", "hf" or "folder") and
    ``name`` (a model name, ``module:Class``, or a path), with JSON arguments for the builder.

    >>> ModelSpec.parse("timm:resnet18")
    ModelSpec(source='timm', name='resnet18', args=(), kwargs={})
    >>> str(ModelSpec("class", "mypkg.nets:Net", (3,), {"width": 8}))
    'class:mypkg.nets:Net'
    """

    source: str
    name: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.source}:{self.name}" if self.source != "folder" else self.name

    @classmethod
    def parse(cls, text: str) -> "ModelSpec":
        """``timm:NAME``, ``torchvision:NAME``, ``hf:PATH``, ``class:module:Class`` or a folder path."""
        source, sep, rest = text.partition(":")
        if sep and source in ("timm", "torchvision", "hf", "class") and rest:
            return cls(source, rest)
        return cls("folder", text)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "name": self.name, "args": list(self.args), "kwargs": dict(self.kwargs)}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> "ModelSpec":
        """Read a saved spec, each field checked (``PlanError`` naming it)."""
        from . import schema

        spec = schema.fields({"source": (schema.string, True), "name": (schema.string, True),
                              "args": (schema.list_of(schema.anything), False),
                              "kwargs": (schema.dict_of(schema.anything), False)}, "a model source")(data, where)
        if spec["source"] not in ("timm", "torchvision", "class"):
            raise PlanError(f"{where} field 'source' is {spec['source']!r}; a saved base model comes from "
                            f"'timm', 'torchvision' or 'class'")
        refused = REFUSED.get(spec["source"], set()) & set(spec.get("kwargs", {}))
        if refused:
            raise PlanError(f"{where} field 'kwargs' has {sorted(refused)}: graphprune builds the base model "
                            f"without fetching weights or reading checkpoint files")
        return cls(spec["source"], spec["name"], tuple(spec.get("args", ())), dict(spec.get("kwargs", {})))

    def build(self, allow_import: bool = False) -> nn.Module:
        """A fresh model (random weights) from this spec; folders and ``hf:`` paths are loaded."""
        if self.source in ("folder", "hf"):
            from .saving import load_pretrained

            return load_pretrained(self.name, allow_import=allow_import, hf_only=self.source == "hf")
        refused = REFUSED.get(self.source, set()) & set(self.kwargs)
        if refused:
            raise LoadError(f"{self} with {sorted(refused)}: graphprune never fetches weights or reads "
                            f"checkpoints while building a model")
        return BUILDERS[self.source](self, allow_import)


@BUILDERS.register("timm")
def _timm(spec: ModelSpec, allow_import: bool) -> nn.Module:
    import timm

    if not timm.is_model(spec.name):
        raise LoadError(f"unknown timm model {spec.name!r}{_close(spec.name, timm.list_models())}; "
                        f"timm.list_models() lists them")
    return timm.create_model(spec.name, *spec.args, pretrained=False, **spec.kwargs)


@BUILDERS.register("torchvision")
def _torchvision(spec: ModelSpec, allow_import: bool) -> nn.Module:
    import torchvision

    names = torchvision.models.list_models()
    if spec.name not in names:
        raise LoadError(f"unknown torchvision model {spec.name!r}{_close(spec.name, names)}; "
                        f"torchvision.models.list_models() lists them")
    return torchvision.models.get_model(spec.name, weights=None, **spec.kwargs)


@BUILDERS.register("class")
def _class(spec: ModelSpec, allow_import: bool) -> nn.Module:
    cls = resolve_class(spec.name, allow_import)
    if "trust_remote_code" in spec.kwargs:
        raise LoadError(f"{spec} with trust_remote_code: graphprune never runs code a model folder names while "
                        f"building a model")
    words = sorted(set(_strings([spec.args, spec.kwargs])))
    if words and not allow_import:
        # a string from a file can be a path or hub id the constructor loads (and runs code from)
        raise LoadError(f"{spec} is built with text arguments {words[:3]} taken from a file; a constructor may "
                        f"read a path or run code they name. If you trust the folder, pass allow_import=True")
    return cls(*spec.args, **spec.kwargs)


def _strings(value: Any) -> Iterator[str]:
    """Every string value inside a JSON value (argument names are not values)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, (dict, list, tuple)):
        for v in value.values() if isinstance(value, dict) else value:
            yield from _strings(v)


def resolve_class(path: str, allow_import: bool = False) -> type:
    """The ``nn.Module`` class at ``module:Qual.Name``; its module must be imported already unless
    ``allow_import`` (importing runs the module's code, and the path may come from a file).

    >>> resolve_class("torch.nn:Linear").__name__
    'Linear'
    """
    module_name, _, qualname = path.partition(":")
    if not module_name or not qualname:
        raise LoadError(f"class {path!r} must be written module:Class (e.g. mypkg.models:Net)")
    if module_name not in sys.modules and not allow_import:
        raise LoadError(f"the model class {path} lives in module {module_name!r}, which is not imported; "
                        f"graphprune does not import modules a file names. If you trust it, import it first "
                        f"(import {module_name}; on the command line --import {module_name})")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as err:
        raise LoadError(f"cannot find the model class {path}: {err}") from err
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise LoadError(f"{path} is {type(obj).__name__} {obj!r}, not an nn.Module class")
    return obj


def _close(name: str, names: list[str]) -> str:
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    return f" (did you mean {', '.join(close)}?)" if close else ""


# -- which spec rebuilds a model ------------------------------------------------------------------

def candidates(model: nn.Module) -> list[ModelSpec]:
    """Specs that may have built ``model`` (checked by ``saving`` against its names and shapes)."""
    cls = type(model)
    cfg = getattr(model, "pretrained_cfg", None)
    if cls.__module__.startswith("timm.") and isinstance(cfg, dict) and cfg.get("architecture"):
        found = [ModelSpec("timm", cfg["architecture"])]
        if type(getattr(model, "num_classes", None)) is int:
            found.append(ModelSpec("timm", cfg["architecture"], kwargs={"num_classes": model.num_classes}))
        return found
    if cls.__module__.startswith("torchvision.models"):
        return [ModelSpec("torchvision", n) for n in _torchvision_builders(cls)]
    if _no_required_args(cls):
        return [ModelSpec("class", f"{cls.__module__}:{cls.__qualname__}")]
    return []


def _torchvision_builders(cls: type) -> list[str]:
    import inspect

    import torchvision

    out = []
    for name in torchvision.models.list_models():
        ret = inspect.signature(torchvision.models.get_model_builder(name)).return_annotation
        if ret is cls or ret == cls.__name__:
            out.append(name)
    return out


def _no_required_args(cls: type) -> bool:
    import inspect

    if "<locals>" in cls.__qualname__ or cls.__module__ == "__main__":
        return False  # not importable by name from another process
    try:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        return False
    return all(p.default is not p.empty or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params)


def build_on_meta(spec: ModelSpec, allow_import: bool = False) -> nn.Module | None:
    """The spec's model with every tensor on the meta device (shapes only, no memory), or None if
    it cannot be built there."""
    try:
        with torch.device("meta"):
            return spec.build(allow_import=allow_import)
    except Exception:  # noqa: BLE001 - some constructors read tensor values; the caller falls back
        return None


def folder_kind(path: str) -> str | None:
    """'graphprune' (graphprune.json), 'hf' (config.json) or None for a folder holding neither."""
    if os.path.isfile(os.path.join(path, "graphprune.json")):
        return "graphprune"
    if os.path.isfile(os.path.join(path, "config.json")):
        return "hf"
    return None

