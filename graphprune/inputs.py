"""Trace stage helper: normalise user example inputs, or derive them for timm and HF models."""
from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator

import torch
from torch import nn
from torch.utils._pytree import tree_leaves

from .errors import CalibrationError, TraceError

Inputs = tuple[tuple[Any, ...], dict[str, Any]]


@dataclass(frozen=True)
class Call:
    """Positional and keyword arguments together, for a forward that takes both:
    ``example_inputs=Call((x,), {"mask": m})``."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


def normalize_inputs(example_inputs: Any) -> Inputs:
    """Turn a Tensor, a tuple/list of positional args, a dict of kwargs or a ``Call`` into
    ``(args, kwargs)``.

    >>> args, kwargs = normalize_inputs(torch.zeros(1, 3))
    >>> len(args), kwargs
    (1, {})
    """
    if isinstance(example_inputs, Call):
        return _not_empty((tuple(example_inputs.args), dict(example_inputs.kwargs)))
    if isinstance(example_inputs, torch.Tensor):
        return _not_empty(((example_inputs,), {}))
    if isinstance(example_inputs, dict):
        return _not_empty(((), dict(example_inputs)))
    if isinstance(example_inputs, (tuple, list)):
        return _not_empty((tuple(example_inputs), {}))
    raise TraceError(
        f"example_inputs must be a Tensor, a tuple of positional args or a dict of keyword args, "
        f"got {type(example_inputs).__name__}; e.g. example_inputs=torch.randn(1, 3, 224, 224)")


def _not_empty(inputs: Inputs) -> Inputs:
    """Refuse inputs whose every tensor is empty (a batch of 0): the model runs on them, so the
    value check after surgery would compare empty outputs and prove nothing."""
    tensors = [t for t in tree_leaves(inputs) if isinstance(t, torch.Tensor)]
    if tensors and all(t.numel() == 0 for t in tensors):
        shapes = ", ".join(str(tuple(t.shape)) for t in tensors[:4])
        raise TraceError(f"the inputs hold no values (every tensor is empty: {shapes}); graphprune runs them to "
                         f"check what the pruned model computes, and an empty batch checks nothing: pass at "
                         f"least one sample, e.g. a batch of 1")
    return inputs


def _built_size(model: nn.Module, size: tuple) -> tuple:
    """The image size a timm model was built for: ``create_model(..., img_size=64)`` keeps the
    pretrained_cfg's 224, while its patch embedding (ViT, Swin, ...) accepts only 64 x 64."""
    embed = getattr(model, "patch_embed", None)
    built = getattr(embed, "img_size", None)
    fixed = getattr(embed, "strict_img_size", True) and not getattr(embed, "dynamic_img_size", False)
    if fixed and isinstance(built, (tuple, list)) and len(built) == len(size) and all(type(n) is int for n in built):
        return tuple(built)
    return tuple(size)


def default_inputs(model: nn.Module) -> Inputs:
    """Example inputs for a timm model (``pretrained_cfg['input_size']``) or an HF model (small ids).

    >>> import timm
    >>> args, _ = default_inputs(timm.create_model("resnet18"))
    >>> tuple(args[0].shape)
    (1, 3, 224, 224)
    """
    device = _device_of(model)
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    if isinstance(cfg, dict) and "input_size" in cfg:
        return (torch.randn(1, *cfg["input_size"][:1], *_built_size(model, cfg["input_size"][1:]), device=device),), {}
    hf = getattr(model, "config", None)
    if hf is not None and hasattr(hf, "to_dict"):
        try:
            return (), _hf_inputs(model, hf, device)
        except Exception as err:  # noqa: BLE001 - a config without the fields a standard model has
            raise TraceError(f"cannot derive example inputs for {type(model).__qualname__} from its config "
                             f"({type(err).__name__}: {err}); pass example_inputs=") from err
    raise TraceError(
        f"cannot derive example inputs for {type(model).__qualname__}: it is neither a timm model "
        f"(pretrained_cfg) nor a Hugging Face model (config); pass example_inputs=")


def _hf_inputs(model: nn.Module, cfg: Any, device: torch.device) -> dict[str, Any]:
    main = getattr(model, "main_input_name", "input_ids")
    params = forward_params(model)
    ids = _token_ids(cfg, device)
    kwargs: dict[str, Any] = {}
    if getattr(cfg, "is_encoder_decoder", False) and "decoder_input_ids" in params:
        kwargs["decoder_input_ids"] = ids[:, :4]
    if "use_cache" in params:
        kwargs["use_cache"] = False  # a returned KV cache is no pytree export can flatten, nor a shape to keep
    if main == "pixel_values":
        vision = getattr(cfg, "vision_config", cfg)
        size = getattr(vision, "image_size", 224)
        size = size if isinstance(size, int) else size[0]
        return {"pixel_values": torch.randn(1, getattr(vision, "num_channels", 3), size, size, device=device), **kwargs}
    if main in ("input_features", "input_values"):
        return _first_that_runs(model, [{main: x, **kwargs} for x in audio_candidates(cfg, main, device)], main)
    kwargs = {main: ids, **kwargs}
    if "pixel_values" in params and hasattr(cfg, "vision_config"):
        size = cfg.vision_config.image_size
        kwargs["pixel_values"] = torch.randn(1, 3, size, size, device=device)
    return kwargs


def _token_ids(cfg: Any, device: torch.device) -> torch.Tensor:
    vocab = getattr(cfg, "vocab_size", None) or getattr(getattr(cfg, "text_config", cfg), "vocab_size", 100)
    return torch.randint(0, vocab, (1, 8), generator=torch.Generator().manual_seed(0)).to(device)


def audio_candidates(cfg: Any, main: str, device: torch.device) -> list[torch.Tensor]:
    """Float inputs shaped as an HF feature extractor would make them for this config, most
    likely first: ``input_values`` are raw samples (enough for a few frames of the convolutional
    feature encoder: ``conv_kernel``/``conv_stride``) or, with ``num_mel_bins`` and
    ``max_length``, a spectrogram; ``input_features`` are mel bins by frames (Whisper's encoder
    wants ``2 * max_source_positions`` frames) in either layout.

    >>> import transformers
    >>> [tuple(x.shape) for x in audio_candidates(transformers.WhisperConfig(num_mel_bins=16,
    ...  max_source_positions=32), "input_features", torch.device("cpu"))][:2]
    [(1, 16, 64), (1, 64, 16)]
    """
    gen = torch.Generator().manual_seed(0)
    rand = lambda *shape: torch.randn(*shape, generator=gen).to(device)
    if main == "input_values":
        out = []
        if isinstance(getattr(cfg, "num_mel_bins", None), int) and isinstance(getattr(cfg, "max_length", None), int):
            out.append(rand(1, cfg.max_length, cfg.num_mel_bins))
        kernel, stride = getattr(cfg, "conv_kernel", None), getattr(cfg, "conv_stride", None)
        if kernel and stride:
            reach, step = 1, 1
            for k, st in zip(kernel, stride):
                reach, step = reach + (k - 1) * step, step * st
            out.append(rand(1, reach + 15 * step))  # 16 frames
        return out + [rand(1, 16000)]
    feats = [getattr(cfg, n, None) for n in ("num_mel_bins", "feature_size", "input_feat_per_channel", "n_mels")]
    feat = next((f for f in feats if isinstance(f, int) and f > 0), 80) * getattr(cfg, "input_channels", 1)
    positions = getattr(cfg, "max_source_positions", None)
    lengths = [2 * positions, positions] if isinstance(positions, int) else []
    return [t for n in lengths + [64] for t in (rand(1, feat, n), rand(1, n, feat))]


def _first_that_runs(model: nn.Module, candidates: list[dict[str, Any]], main: str) -> dict[str, Any]:
    errors = []
    for kwargs in candidates:
        try:
            run_model(model, ((), kwargs))
            return kwargs
        except Exception as err:  # noqa: BLE001 - try the next layout
            errors.append(f"{tuple(kwargs[main].shape)}: {str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__}")
    raise TraceError(f"cannot derive {main} for {type(model).__qualname__} from its config (tried "
                     f"{'; '.join(errors[:4])}); pass example_inputs={{{main!r}: ...}}")


def hf_trace_inputs(model: nn.Module, inputs: Inputs) -> tuple[Inputs, tuple[str, ...]]:
    """Inputs to trace a Hugging Face model with: ``use_cache=False`` added where its forward takes
    it and the caller did not say, since a returned key/value cache has shapes pruning changes
    (and export cannot flatten every cache class). Returns the inputs and a note saying so.

    >>> hf_trace_inputs(nn.Linear(2, 2), ((torch.zeros(1, 2),), {}))[1]
    ()
    """
    args, kwargs = inputs
    cfg = getattr(model, "config", None)
    if not hasattr(cfg, "to_dict") or "use_cache" in kwargs or "use_cache" not in forward_params(model):
        return inputs, ()
    return (args, {**kwargs, "use_cache": False}), (
        "traced with use_cache=False: a returned key/value cache changes shape when heads are pruned",)


def is_causal_lm(model: nn.Module) -> bool:
    """An HF model whose own loss is next-token prediction on ``labels=input_ids``.

    >>> is_causal_lm(nn.Linear(2, 2))
    False
    """
    if not type(model).__module__.startswith("transformers."):
        return False  # transformers is slow to import: only a model of its own implies it is loaded
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return type(model).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


def forward_params(model: nn.Module) -> set[str]:
    import inspect
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def _device_of(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def run_model(model: nn.Module, inputs: Inputs) -> Any:
    """Call ``model`` on normalised inputs without autograd, in eval mode (its modes restored
    afterwards): graphprune's own forwards (checks, counts, oracles) must never teach a model in
    training mode, e.g. BatchNorm running statistics from example inputs."""
    args, kwargs = inputs
    with torch.no_grad(), eval_mode(model):
        return model(*args, **kwargs)


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Every module in eval mode (batch norm uses running stats, dropout is a no-op), then each
    module's own mode back.

    >>> m = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).train()
    >>> with eval_mode(m):
    ...     m.training
    False
    >>> m.training, m[1].training
    (True, True)
    """
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def first_tensor(out: Any) -> torch.Tensor:
    """The main output tensor of a model call (logits, last_hidden_state, or the tensor itself)."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, dict) or hasattr(out, "values"):
        for v in out.values():
            if isinstance(v, torch.Tensor):
                return v
    if isinstance(out, (tuple, list)):
        for v in out:
            if isinstance(v, torch.Tensor):
                return v
    raise TraceError(f"model output of type {type(out).__name__} contains no tensor")


def output_shapes(out: Any) -> list[tuple[int, ...]]:
    """Shapes of every tensor in a (nested) model output, in a stable order."""
    if isinstance(out, torch.Tensor):
        return [tuple(out.shape)]
    if isinstance(out, dict) or hasattr(out, "values"):
        return [s for v in out.values() for s in output_shapes(v)]
    if isinstance(out, (tuple, list)):
        return [s for v in out for s in output_shapes(v)]
    return []


def check_batches(batches: Any) -> None:
    """Refuse calibration data that is no iterable of batches, naming the fix: a bare Tensor would
    be read row by row, each row taken for a batch without its batch dim.

    >>> check_batches(torch.zeros(8, 3))
    Traceback (most recent call last):
    graphprune.errors.CalibrationError: calibration= is one Tensor(8, 3), which would be read row by row; pass a list of batches: [x] for one batch, or list(x.split(16)) for batches of 16
    """
    if isinstance(batches, torch.Tensor):
        raise CalibrationError(f"calibration= is one Tensor{tuple(batches.shape)}, which would be read row by row; pass a list "
                               f"of batches: [x] for one batch, or list(x.split(16)) for batches of 16")
    if isinstance(batches, (str, bytes)) or not hasattr(batches, "__iter__"):
        raise CalibrationError(f"calibration={batches!r:.80} is no iterable of batches; pass a list, a generator or a "
                               f"DataLoader of Tensors, tuples of positional args or dicts of keyword args")


def reusable(batches: Iterable[Any] | None, max_batches: int | None) -> Any:
    """Batches that can be read more than once (by every round, or by calibration and then the
    BatchNorm re-estimation): a one-shot iterator (a generator) is kept as a list of the batches it
    yields (at most ``max_batches``); lists and DataLoaders are re-iterated."""
    if batches is not None:
        check_batches(batches)
    if batches is None or iter(batches) is not batches:
        return batches
    return list(itertools.islice(batches, max_batches))
