"""Trace stage helper: normalise user example inputs, or derive them for timm and HF models."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .errors import TraceError

Inputs = tuple[tuple[Any, ...], dict[str, Any]]


def normalize_inputs(example_inputs: Any) -> Inputs:
    """Turn a Tensor, a tuple/list of positional args or a dict of kwargs into ``(args, kwargs)``.

    >>> args, kwargs = normalize_inputs(torch.zeros(1, 3))
    >>> len(args), kwargs
    (1, {})
    """
    if isinstance(example_inputs, torch.Tensor):
        return (example_inputs,), {}
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    raise TraceError(
        f"example_inputs must be a Tensor, a tuple of positional args or a dict of keyword args, "
        f"got {type(example_inputs).__name__}; e.g. example_inputs=torch.randn(1, 3, 224, 224)")


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
        return (torch.randn(1, *cfg["input_size"], device=device),), {}
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
    if main == "pixel_values":
        vision = getattr(cfg, "vision_config", cfg)
        size = getattr(vision, "image_size", 224)
        size = size if isinstance(size, int) else size[0]
        return {"pixel_values": torch.randn(1, getattr(vision, "num_channels", 3), size, size, device=device)}
    vocab = getattr(cfg, "vocab_size", None) or getattr(getattr(cfg, "text_config", cfg), "vocab_size", 100)
    ids = torch.randint(0, vocab, (1, 8), generator=torch.Generator().manual_seed(0)).to(device)
    kwargs: dict[str, Any] = {main: ids}
    if getattr(cfg, "is_encoder_decoder", False):
        kwargs["decoder_input_ids"] = ids[:, :4]
    if "use_cache" in forward_params(model):
        kwargs["use_cache"] = False  # a returned KV cache is no pytree export can flatten, nor a shape to keep
    if "pixel_values" in forward_params(model) and hasattr(cfg, "vision_config"):
        size = cfg.vision_config.image_size
        kwargs["pixel_values"] = torch.randn(1, 3, size, size, device=device)
    return kwargs


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
    """Call ``model`` on normalised inputs without autograd."""
    args, kwargs = inputs
    with torch.no_grad():
        return model(*args, **kwargs)


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
