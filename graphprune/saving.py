"""Saving and loading pruned models: safetensors weights and JSON records, never a pickle.

A Hugging Face model is saved as its own folder (``save_pretrained``: ``config.json`` carries the
record, see ``graphprune.hub``). Any other model is saved as a graphprune folder:
``model.safetensors`` (the weights, readable by plain ``safetensors``), ``graphprune.json`` (how to
build the unpruned base model, the shapes and width attributes pruning changed, a fingerprint of
the base) and, when given, ``plan.json``. Loading builds the base, checks the record against it,
gives the tensors their saved shapes and reads the weights: no file is ever unpickled.
"""
from __future__ import annotations

import copy
import json
import os
from typing import Any

from torch import nn

from .errors import ConfigError, GraphPruneError, LoadError, PlanError
from .progress import bar
from .record import RECORD_VERSION, read_record, reshape_
from . import schema
from .sources import ModelSpec, build_on_meta, candidates, folder_kind
from .validate import fingerprint, named_tensors

WEIGHTS, RECORD, PLAN = "model.safetensors", "graphprune.json", "plan.json"
FORMAT = "graphprune"


def save_pretrained(model: nn.Module, directory: str, base: Any = None, plan: Any = None) -> str:
    """Save ``model`` (pruned or not) into ``directory`` so ``load_pretrained`` rebuilds it.

    ``base`` says how to build the unpruned model: ``"timm:NAME"``, ``"torchvision:NAME"``, a
    ``ModelSpec`` (``ModelSpec("class", "mypkg.nets:Net", args, kwargs)``), or None to work it out
    (timm models, torchvision models, classes built without arguments). ``plan`` is written as
    ``plan.json`` too. Hugging Face models are saved with their own ``save_pretrained``.

    >>> import tempfile, timm, graphprune
    >>> small = graphprune.shrink(timm.create_model("resnet18"), 0.3)
    >>> folder = save_pretrained(small, tempfile.mkdtemp())
    >>> again = load_pretrained(folder)
    >>> again.fc.in_features == small.fc.in_features
    True
    """
    from .sparsity.masks import masked_layers
    from .surgery.config import hf_config

    masked = masked_layers(model)
    if masked:  # parametrized names (weight -> parametrizations.weight.original) match no rebuilt model
        raise ConfigError(f"{len(masked)} layer(s) such as {masked[0]!r} carry sparsity masks; call "
                          f"graphprune.make_dense_(model) first, which bakes the zeros into plain weights")
    os.makedirs(directory, exist_ok=True)
    # files an earlier save left that would now describe another model (graphprune.json wins over config.json)
    for stale in ([RECORD] if hf_config(model) is not None else []) + ([PLAN] if plan is None else []):
        if os.path.isfile(os.path.join(directory, stale)):
            os.remove(os.path.join(directory, stale))
    if hf_config(model) is not None:
        model.save_pretrained(directory)  # safetensors; config.json holds the graphprune record
    else:
        spec, base_model = _base(model, base)
        record = _record(base_model, model, spec)
        _write_weights(model, os.path.join(directory, WEIGHTS))
        with open(os.path.join(directory, RECORD), "w") as fh:
            json.dump(record, fh, indent=1)
    if plan is not None:
        plan.to_json(os.path.join(directory, PLAN))
    return directory


def _base(model: nn.Module, base: Any) -> tuple[ModelSpec, nn.Module]:
    """The first spec whose model ``model`` could have been pruned from, with that (meta) model."""
    specs = [ModelSpec.parse(base) if isinstance(base, str) else base] if base is not None else candidates(model)
    why = []
    for spec in specs:
        built = build_on_meta(spec, allow_import=True) or _build(spec, "the base model", allow_import=True)
        misfit = _misfit(built, model)
        if misfit is None:
            return spec, built
        why.append(f"{spec}: {misfit}")
    raise LoadError(f"cannot tell how to rebuild the unpruned {type(model).__qualname__}"
                    f"{' (' + '; '.join(why) + ')' if why else ''}; pass base= ('timm:NAME', 'torchvision:NAME' or "
                    f"graphprune.ModelSpec('class', 'module:Class', args, kwargs))")


def _replaced(base: nn.Module, model: nn.Module) -> list[Any]:
    """``Replace`` actions for the modules of ``base`` that ``model`` holds as ``nn.Identity`` (or
    graphprune's ``Skip``): blocks depth pruning removed."""
    from .actions import Replace
    from .surgery.blocks import Skip

    mine = dict(model.named_modules())
    return [Replace(f, "skip" if isinstance(mine[f], Skip) else "identity") for f, m in base.named_modules()
            if f and isinstance(mine.get(f), nn.Identity) and not isinstance(m, nn.Identity)]


def _without(tensors: dict[str, Any], gone: list[Any]) -> dict[str, Any]:
    return {n: t for n, t in tensors.items() if not any(n.startswith(a.module + ".") for a in gone)}


def _misfit(base: nn.Module, model: nn.Module) -> str | None:
    have, want = named_tensors(model), _without(named_tensors(base), _replaced(base, model))
    if have.keys() != want.keys():
        extra = sorted(have.keys() - want.keys()) or sorted(want.keys() - have.keys())
        return f"the tensor names differ (e.g. {extra[0]!r})"
    for name, t in have.items():
        if t.dim() != want[name].dim() or any(a > b for a, b in zip(t.shape, want[name].shape)):
            return f"{name} is {tuple(t.shape)}, larger than its {tuple(want[name].shape)}"
    return None


def _record(base: nn.Module, model: nn.Module, spec: ModelSpec) -> dict[str, Any]:
    gone = _replaced(base, model)
    have, want = named_tensors(model), _without(named_tensors(base), gone)
    record = {"format": FORMAT, "version": RECORD_VERSION, "base": spec.to_dict(), "fingerprint": fingerprint(base),
              "shapes": {n: list(t.shape) for n, t in have.items() if t.shape != want[n].shape},
              "attrs": _changed_widths(base, model)}
    if gone:
        record["structure"] = [a.to_dict() for a in gone]
    where = "the record being saved"
    read_record(record, where)
    trial = reshape_(copy.deepcopy(base), record, where)  # the load path, on shapes only
    if _misfit(trial, model) or any(t.shape != have[n].shape for n, t in named_tensors(trial).items()):
        raise LoadError(f"{type(model).__qualname__} cannot be described by its base {spec} plus the pruned "
                        f"shapes; was it changed other than by graphprune?")
    return record


def _changed_widths(base: nn.Module, model: nn.Module) -> dict[str, dict[str, Any]]:
    """Integer attributes (widths: ``num_heads``, ``groups``, ``in_features``...) that differ from the base."""
    out: dict[str, dict[str, Any]] = {}
    modules = dict(model.named_modules())
    for fqn, mod in base.named_modules():
        for k, v in vars(mod).items():
            now = vars(modules[fqn]).get(k) if fqn in modules else None
            if not k.startswith("_") and _int_like(v) and _int_like(now) and now != v:
                out.setdefault(fqn, {})[k] = list(now) if isinstance(now, tuple) else now
    return out


def _int_like(v: Any) -> bool:
    return (type(v) is int) or (isinstance(v, tuple) and bool(v) and all(type(x) is int for x in v))


def _write_weights(model: nn.Module, path: str) -> None:
    from safetensors.torch import save_model

    save_model(model, path, metadata={"format": "pt", "writer": "graphprune"})


# -- loading --------------------------------------------------------------------------------------

def load_pretrained(directory: str, allow_import: bool = False, hf_only: bool = False) -> nn.Module:
    """Load a folder written by ``save_pretrained`` (or any Hugging Face folder), without pickle.

    A record that builds its base from a class (``module:Class``) needs that module imported
    first, or ``allow_import=True``: importing runs the module's code, and the name comes from a file.
    """
    refuse_file(directory)
    kind = folder_kind(directory)
    if kind == "hf" or (hf_only and kind is not None):
        from .hub import from_pretrained

        if kind != "hf":
            raise LoadError(f"hf:{directory} is a graphprune folder, not a Hugging Face one; pass it without hf:")
        return from_pretrained(directory)
    if kind is None:
        raise LoadError(f"{directory!r} holds neither {RECORD} (a graphprune folder) nor config.json (a Hugging "
                        f"Face folder); pass a folder written by graphprune.save_pretrained or graphprune shrink")
    where = os.path.join(directory, RECORD)
    record, spec = read_saved(directory)
    model = _build(spec, "the base model", allow_import)
    reshape_(model, record, where)
    _read_weights_(model, os.path.join(directory, WEIGHTS))
    return model.eval()


def read_saved(directory: str) -> tuple[dict[str, Any], ModelSpec]:
    """The checked record of a graphprune folder and the spec of its base model."""
    where = os.path.join(directory, RECORD)
    try:
        data = json.loads(schema.read_text(where, "record"))
    except json.JSONDecodeError as err:
        raise PlanError(f"{where} is not valid JSON ({err})") from err
    record = read_record(data, where)
    if record.get("format") not in (None, FORMAT):
        raise PlanError(f"{where} field 'format' is {record['format']!r}, not {FORMAT!r}")
    return record, ModelSpec.from_dict(record["base"], f"{where} field 'base'")


def _build(spec: ModelSpec, what: str, allow_import: bool) -> nn.Module:
    try:
        return spec.build(allow_import=allow_import)
    except GraphPruneError:
        raise
    except Exception as err:  # noqa: BLE001 - a library's constructor rejected the arguments
        raise LoadError(f"building {what} {spec} failed: {type(err).__name__}: "
                        f"{(str(err).strip().splitlines() or [''])[0][:300]}") from err


def _read_weights_(model: nn.Module, path: str) -> None:
    """Copy the safetensors weights into ``model``: every name and shape must match (tied names
    may be missing from the file: safetensors stores a shared tensor once)."""
    from safetensors import SafetensorError, safe_open

    if not os.path.isfile(path):
        raise LoadError(f"{path} is missing: the folder has a record but no weights")
    try:
        with safe_open(path, framework="pt") as fh:
            state = {k: fh.get_tensor(k) for k in bar(list(fh.keys()), "reading weights", unit="tensor")}
    except (SafetensorError, OSError, ValueError) as err:
        raise LoadError(f"{path} is not a safetensors file ({err}); graphprune reads weights only from "
                        f"safetensors, never from a pickle") from err
    expected = model.state_dict(keep_vars=True)
    shared = {id(t): n for n, t in expected.items() if n in state}
    for name, t in expected.items():
        if name not in state and id(t) not in shared:
            raise LoadError(f"{path} has no tensor {name!r}, which the rebuilt model has")
        if name in state and tuple(state[name].shape) != tuple(t.shape):
            raise LoadError(f"{path}: {name} is {tuple(state[name].shape)} but the record rebuilt it as "
                            f"{tuple(t.shape)}")
    extra = sorted(set(state) - set(expected))
    if extra:
        raise LoadError(f"{path} has tensors the rebuilt model lacks, e.g. {extra[0]!r}")
    dtypes = {t.dtype for t in state.values() if t.is_floating_point()}
    if len(dtypes) == 1:
        model.to(dtypes.pop())  # keep the saved precision (load_state_dict copies into the model's)
    model.load_state_dict(state, strict=False)


def refuse_file(path: str) -> None:
    """A model is a folder; a file is refused with what it is, and a pickle with how to convert it."""
    if os.path.isdir(path):
        return
    if not os.path.exists(path):
        raise LoadError(f"no such folder {path!r}; pass a folder written by graphprune.save_pretrained "
                        f"(or graphprune shrink), a Hugging Face folder, timm:NAME or torchvision:NAME")
    raise LoadError(describe_file(path))


def describe_file(path: str) -> str:
    """What a file passed as a model is, and what to do instead. Only its first bytes are read."""
    with open(path, "rb") as fh:
        head = fh.read(8)
    if head.startswith(b"PK\x03\x04") or head[:1] == b"\x80":
        what = "a torch.save archive (a pickle)" if head.startswith(b"PK") else "a pickle"
        return (f"{path} is {what}; graphprune never unpickles a file, since unpickling runs "
                f"code from it. If you trust it, convert it once in Python: model = torch.load({path!r}, "
                f"weights_only=False); graphprune.save_pretrained(model, 'FOLDER', base='timm:NAME') "
                f"(base: how to build the unpruned model), then pass FOLDER")
    if path.endswith(".safetensors"):
        return (f"{path} holds weights only, not how to build the model; pass the folder it belongs to "
                f"(written by graphprune.save_pretrained or save_pretrained of transformers)")
    return (f"{path} is a file; a model is timm:NAME, torchvision:NAME, hf:FOLDER or a folder written by "
            f"graphprune.save_pretrained")

