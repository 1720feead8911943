"""Big models: read a Hugging Face safetensors folder tensor by tensor, and prune it shard by shard.

A model too large for memory is analysed on the meta device (``graphprune.meta_model``), scored
from its checkpoint (``checkpoint_tensors``, one tensor in memory at a time) and pruned on disk
(``prune_checkpoint``, one shard at a time). Files are read with ``safetensors.safe_open`` only:
nothing the user passes is ever unpickled.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .errors import GraphPruneError, LoadError, PlanError
from .plan import Plan
from .progress import bar

INDEX = "model.safetensors.index.json"
SINGLE = "model.safetensors"


def weight_files(folder: str | Path) -> dict[str, str]:
    """Tensor name -> file name (within ``folder``) of a safetensors checkpoint: the index of a
    sharded one, or the keys of a single ``model.safetensors``."""
    folder = Path(folder)
    if (folder / INDEX).is_file():
        return checked_index(folder / INDEX)
    if (folder / SINGLE).is_file():
        with safe_open(folder / SINGLE, "pt") as fh:
            return {name: SINGLE for name in fh.keys()}
    raise GraphPruneError(f"{str(folder)!r} holds no {SINGLE} or {INDEX}; pass a folder written by "
                          f"save_pretrained(..., safe_serialization=True)")


def checked_index(path: Path) -> dict[str, str]:
    """The index's weight map, refusing shard names that are not plain ``*.safetensors`` file names
    in the folder: a tampered ``"../x"`` or absolute path would be read, then written, elsewhere."""
    try:
        names = json.loads(path.read_text())["weight_map"]
        names = {str(k): v for k, v in dict(names).items()}
    except (ValueError, KeyError, TypeError) as err:
        raise LoadError(f"{str(path)!r} is not a safetensors index (a JSON object with a 'weight_map' of tensor "
                        f"name -> shard file): {type(err).__name__}: {err}") from err
    for name, shard in names.items():
        if not (isinstance(shard, str) and shard.endswith(".safetensors") and Path(shard).name == shard
                and "\\" not in shard):
            raise LoadError(f"{str(path)!r} maps tensor {name!r} to shard {shard!r}, which is not a plain "
                            f"*.safetensors file name inside the folder; fix the index")
    return names


class CheckpointTensors(Mapping):
    """The tensors of a safetensors checkpoint by name, each read from disk when asked for (nothing
    stays in memory). ``aliases`` maps a model's name to the name the checkpoint stores it under
    (tied weights are saved once).

    >>> import tempfile, safetensors.torch
    >>> folder = tempfile.mkdtemp()
    >>> safetensors.torch.save_file({"w": torch.ones(2, 3)}, f"{folder}/model.safetensors")
    >>> CheckpointTensors(folder)["w"].shape
    torch.Size([2, 3])
    """

    def __init__(self, folder: str | Path, aliases: Mapping[str, str] | None = None):
        self.folder = Path(folder)
        self.files = weight_files(folder)
        self.aliases = {k: v for k, v in (aliases or {}).items() if k not in self.files and v in self.files}

    def __getitem__(self, name: str) -> torch.Tensor:
        stored = self.aliases.get(name, name)
        if stored not in self.files:
            raise KeyError(name)
        with safe_open(self.folder / self.files[stored], "pt") as fh:
            return fh.get_tensor(stored)

    def shape(self, name: str) -> tuple[int, ...]:
        """A tensor's shape, read from the file header."""
        stored = self.aliases.get(name, name)
        with safe_open(self.folder / self.files[stored], "pt") as fh:
            return tuple(fh.get_slice(stored).get_shape())

    def __iter__(self) -> Iterator[str]:
        return iter([*self.files, *self.aliases])

    def __len__(self) -> int:
        return len(self.files) + len(self.aliases)


def checkpoint_tensors(folder: str | Path, model: nn.Module | None = None) -> CheckpointTensors:
    """The weights of a Hugging Face safetensors folder, read tensor by tensor: pass them as
    ``graphprune.score(model, groups, "l2", tensors=...)`` for a model built on the meta device.
    With ``model``, tied weights are found under whichever name the folder stores them."""
    return CheckpointTensors(folder, _aliases(model) if model is not None else None)


def _aliases(model: nn.Module) -> dict[str, str]:
    """Every name of a tied tensor -> each other name of it (the checkpoint holds one of them)."""
    names: dict[int, list[str]] = {}
    for name, t in [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]:
        names.setdefault(id(t), []).append(name)
    return {a: b for group in names.values() for a in group for b in group if a != b}


def prune_checkpoint(src: str | Path, plan: Plan, dst: str | Path, model: nn.Module | None = None) -> Path:
    """Apply ``plan`` to the Hugging Face safetensors folder ``src`` and write the pruned folder to
    ``dst``, one shard at a time: at most one shard's tensors are in memory, so a model far larger
    than memory can be pruned. config.json gets the plan's widths and the ``graphprune`` record as
    in-memory pruning plus ``save_pretrained`` would write them; other files are copied. The
    result loads with ``graphprune.from_pretrained`` (stock ``from_pretrained`` too for a
    ``uniform=True`` plan). ``model`` (e.g. on the meta device) resolves tied weights stored
    under another name than the plan's.

    Everything is checked before anything is written: the plan against the model the folder
    describes (built on the meta device unless ``model`` is given), as ``apply_plan_`` checks it,
    its kept indices against that model's own groups included; every tensor the plan names exists,
    and its kept indices fit.
    """
    from .surgery.core import verify_plan

    src, dst = Path(src), Path(dst)
    verify_plan(model if model is not None else meta_model(src), plan)
    tensors = checkpoint_tensors(src, model)
    slices = _stored_slices(tensors, plan)
    dst.mkdir(parents=True, exist_ok=True)
    by_file: dict[str, list[str]] = {}
    for name, file in tensors.files.items():
        by_file.setdefault(file, []).append(name)
    total = 0
    with bar(desc="pruning checkpoint", total=len(tensors.files), unit="tensor") as progress:
        for file, names in sorted(by_file.items()):
            total += _prune_shard(src / file, dst / file, names, slices, progress.update)
    _write_index(src, dst, total)
    _write_config(src, dst, plan, {f: _kept_shape(tensors.shape(f), dims) for f, dims in plan.keep.items()})
    _copy_rest(src, dst, set(by_file))
    return dst


def _stored_slices(tensors: CheckpointTensors, plan: Plan) -> dict[str, dict[int, list[int]]]:
    """The plan's kept indices by the names the checkpoint stores, checked against its shapes."""
    out = {}
    for fqn, dims in plan.keep.items():
        if fqn not in tensors:
            raise PlanError(f"plan prunes {fqn!r}, which the checkpoint does not hold; apply the plan to the "
                            f"checkpoint of the architecture it was made for (pass model= if tied weights are "
                            f"stored under another name)")
        shape = tensors.shape(fqn)
        for d, ix in dims.items():
            if d >= len(shape) or (ix and (max(ix) >= shape[d] or min(ix) < 0)):
                raise PlanError(f"plan keeps index {max(ix) if ix else '?'} of {fqn}:{d}, but the checkpoint's "
                                f"tensor has shape {shape}; the plan was made for a different (or already pruned) model")
        out[tensors.aliases.get(fqn, fqn)] = dims
    return out


def _prune_shard(src: Path, dst: Path, names: list[str], slices: Mapping[str, dict[int, list[int]]],
                 done: Callable[[int], Any] = lambda n: None) -> int:
    """Read the shard's tensors one at a time (the file is opened per tensor: a mapping held open
    would keep every page read so far resident), slice them, write the shard."""
    with safe_open(src, "pt") as fh:
        metadata = fh.metadata() or {"format": "pt"}
    out: dict[str, torch.Tensor] = {}
    for name in names:
        with safe_open(src, "pt") as fh:
            t = fh.get_tensor(name)
        for d, ix in slices.get(name, {}).items():
            t = t.index_select(d, torch.tensor(ix, dtype=torch.long))
        out[name] = t.contiguous()
        done(1)
    save_file(out, dst, metadata=metadata)
    return sum(t.numel() * t.element_size() for t in out.values())


def _kept_shape(shape: tuple[int, ...], dims: dict[int, list[int]]) -> list[int]:
    return [len(dims[d]) if d in dims else n for d, n in enumerate(shape)]


def _write_index(src: Path, dst: Path, total: int) -> None:
    if (src / INDEX).is_file():
        index = json.loads((src / INDEX).read_text())
        index.setdefault("metadata", {})["total_size"] = total
        (dst / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _write_config(src: Path, dst: Path, plan: Plan, shapes: dict[str, list[int]]) -> None:
    """config.json with the plan's widths and record, written by transformers as save_pretrained does."""
    if not (src / "config.json").is_file():
        return
    import transformers

    from .surgery.config import record_plan_, start_config_record_

    config = transformers.AutoConfig.from_pretrained(src)
    start_config_record_(config, plan.fingerprint)
    record_plan_(config, plan, shapes)
    config.save_pretrained(dst)


def _copy_rest(src: Path, dst: Path, weights: set[str]) -> None:
    """Tokenizer, generation config and the like, unchanged."""
    skip = weights | {INDEX, "config.json"}
    for path in src.iterdir():
        if path.is_file() and path.name not in skip:
            shutil.copy2(path, dst / path.name)


def plan_checkpoint(folder: str | Path, config: Any) -> Plan:
    """Plan the pruning of a Hugging Face safetensors folder without loading it: the model on the
    meta device (``meta_model``), its groups, ``config.scorer`` read from the checkpoint tensor by
    tensor, then ``make_plan``. Pair with ``prune_checkpoint``.
    """
    from .groups import find_groups
    from .plan import make_plan
    from .scores import score

    model = meta_model(folder)
    groups = find_groups(model)
    scores = score(model, groups, config.scorer, tensors=checkpoint_tensors(folder, model), seed=config.seed)
    return make_plan(model, groups, config, scores=scores)


def meta_model(folder: str | Path, model_class: Any = None) -> nn.Module:
    """The model a Hugging Face folder describes, built on the meta device with accelerate's
    ``init_empty_weights`` (no memory for weights), in eval mode: trace it, find its groups,
    score it from ``checkpoint_tensors(folder)`` and plan, then ``prune_checkpoint``."""
    import transformers
    from accelerate import init_empty_weights

    from .hub import _architecture

    config = transformers.AutoConfig.from_pretrained(folder)
    cls = model_class or (_architecture(config, str(folder), needed=False) if config.architectures else None)
    with init_empty_weights():
        if cls is None:  # no architectures recorded: the base model of the config's type
            model = transformers.AutoModel.from_config(config)
        elif getattr(config, "graphprune", None) is not None:
            from .hub import _rebuilding

            model = _rebuilding(cls)(config)
            model.__class__ = cls
        else:
            model = cls(config)
    if hasattr(model, "tie_weights"):
        model.tie_weights()  # init_empty_weights gives each registration its own meta tensor
    return model.eval()
