"""Plan stage helper: options checked against the model before any work (tracing takes minutes).

``ignore=`` names must name a module or a module class of the model (a typo would silently prune
the module the user meant to protect), and callable filters ``fn(fqn, module) -> bool`` become the
FQNs they pick, so a plan records plain names. ``uniform=True`` is refused where it cannot help.
"""
from __future__ import annotations

import dataclasses
import difflib
import warnings
from typing import Any, Callable

from torch import nn

from .config import ShrinkConfig
from .errors import ConfigError


def checked(model: nn.Module, config: ShrinkConfig) -> ShrinkConfig:
    """``config`` with its ``ignore=`` resolved against ``model``; ``ConfigError`` for what cannot apply.

    >>> m = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 2))
    >>> checked(m, ShrinkConfig(ratio=0.1, ignore=(lambda fqn, mod: isinstance(mod, nn.ReLU),))).ignore
    ('1',)
    >>> checked(m, ShrinkConfig(ratio=0.1, ignore=("Linaer",)))
    Traceback (most recent call last):
    graphprune.errors.ConfigError: ignore='Linaer' matches no module FQN or module class of Sequential; closest: 'Linear' ...
    """
    check_uniform(model, config)
    return dataclasses.replace(config, ignore=resolve_ignore(model, config.ignore))


def check_uniform(model: nn.Module, config: ShrinkConfig) -> None:
    if config.uniform and not hasattr(getattr(model, "config", None), "to_dict"):
        raise ConfigError(f"uniform=True cannot help {type(model).__qualname__}: it makes every layer keep equal "
                          f"widths so that the model's Hugging Face config (model.config) can describe the pruned "
                          f"model, and this model has no config; drop uniform=True (round_to=8 gives "
                          f"hardware-friendly widths, graphprune.save_pretrained saves any widths)")


def resolve_ignore(model: nn.Module, ignore: tuple[Any, ...]) -> tuple[str, ...]:
    """Module FQNs and class names, each checked to exist; callables replaced by the FQNs they pick."""
    modules = dict(model.named_modules())
    classes = {type(m).__qualname__ for m in modules.values()}
    out: list[str] = []
    for item in ignore:
        if callable(item) and not isinstance(item, str):
            out.extend(n for n in _picked(modules, item) if n not in out)
        elif item in modules or item in classes:
            out.append(item)
        else:
            raise ConfigError(_unknown(model, item, modules, classes))
    return tuple(out)


def _picked(modules: dict[str, nn.Module], fn: Callable) -> list[str]:
    """The FQNs ``fn(fqn, module)`` picks, without those inside a picked module (ignore= covers subtrees)."""
    name = getattr(fn, "__qualname__", repr(fn))
    picked: list[str] = []
    for fqn, mod in modules.items():
        try:
            hit = fn(fqn, mod)
        except Exception as err:  # noqa: BLE001 - the user's filter: say which call failed
            raise ConfigError(f"ignore= filter {name} raised {type(err).__name__} for {fqn or '<root>'!r} "
                              f"({type(mod).__name__}): {err}") from err
        if not isinstance(hit, bool):
            raise ConfigError(f"ignore= filter {name} returned a {type(hit).__name__} for {fqn or '<root>'!r}; it "
                              f"must return True (leave the module unpruned) or False")
        if hit and not any(fqn == p or fqn.startswith(p + ".") for p in picked if p) and "" not in picked:
            picked.append(fqn)
    if not picked:
        warnings.warn(f"graphprune: ignore= filter {name} picked no module; nothing is left out because of it")
    return picked


def _unknown(model: nn.Module, item: Any, modules: dict[str, nn.Module], classes: set[str]) -> str:
    if not isinstance(item, str):
        return f"ignore= takes module FQNs, module classes or filters fn(fqn, module) -> bool, got {item!r}"
    owner = item.rsplit(".", 1)[0] if "." in item else ""
    tensors = {n for n, _ in model.named_parameters()} | {n for n, _ in model.named_buffers()}
    if item in tensors:
        return (f"ignore={item!r} names a parameter, not a module; ignore= takes module FQNs (a prefix covers "
                f"the subtree): did you mean {owner!r}?")
    close = difflib.get_close_matches(item, [n for n in modules if n] + sorted(classes), n=3, cutoff=0.5)
    hint = f"closest: {', '.join(map(repr, close))}" if close else "see model.named_modules() for the names"
    return (f"ignore={item!r} matches no module FQN or module class of {type(model).__qualname__}; {hint} "
            f"(a typo here would prune the module you meant to keep)")
