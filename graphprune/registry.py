"""Generic registry used by the plug-in packages (rules, slicers, scorers)."""
from __future__ import annotations

import difflib
import inspect
from typing import Any, Callable, Iterator

from .errors import ConfigError, RegistryError


def where_defined(fn: Any) -> str:
    try:
        return f"{fn.__module__}.{fn.__qualname__} ({inspect.getsourcefile(fn)}:{inspect.getsourcelines(fn)[1]})"
    except (TypeError, OSError, AttributeError):
        return repr(fn)


class Registry:
    """A named table of plug-ins, filled by a decorator and strict about duplicates.

    >>> r = Registry("demo")
    >>> @r.register("twice")
    ... def twice(x): return 2 * x
    >>> r.get("twice")(3), r.names()
    (6, ['twice'])
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[Any, Callable] = {}

    def register(self, *keys: Any, override: bool = False, **attrs: Any) -> Callable[[Callable], Callable]:
        """Decorator registering ``fn`` under every key in ``keys``; ``attrs`` are set on ``fn`` (a
        criterion's ``needs``: the calibration statistics it reads)."""

        def deco(fn: Callable) -> Callable:
            for attr, value in attrs.items():
                setattr(fn, attr, value)
            for key in keys:
                if key in self._items and not override:
                    raise RegistryError(
                        f"{self.kind} {key!r} is registered twice: by {where_defined(self._items[key])} and by "
                        f"{where_defined(fn)}; pass override=True to replace it")
                self._items[key] = fn
            return fn

        return deco

    def get(self, key: Any, default: Any = None) -> Any:
        return self._items.get(key, default)

    def __getitem__(self, key: Any) -> Callable:
        if key not in self._items:
            raise RegistryError(f"no {self.kind} named {key!r}; known: {', '.join(map(str, self.names()))}")
        return self._items[key]

    def __contains__(self, key: Any) -> bool:
        return key in self._items

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items)

    def names(self) -> list[str]:
        return sorted(str(k) if not isinstance(k, type) else k.__qualname__ for k in self._items)

    def resolve(self, value: Any, option: str, custom: str) -> Callable:
        """``value`` itself if callable, else the entry registered under that name; a ``ConfigError``
        naming ``option``, the known names and the signature ``custom`` of a plug-in otherwise.

        >>> Registry("demo").resolve("l3", "scorer", "fn(ctx) -> scores")
        Traceback (most recent call last):
        graphprune.errors.ConfigError: scorer='l3' is not a registered name or a callable; choose one of [] or pass fn(ctx) -> scores
        """
        if callable(value):
            return value
        if isinstance(value, str) and value in self._items:
            return self._items[value]
        close = difflib.get_close_matches(str(value), self.names(), n=1)
        raise ConfigError(f"{option}={value!r} is not a registered name or a callable; choose one of "
                          f"{self.names()} or pass {custom}" + (f"; did you mean {close[0]!r}?" if close else ""))

    def lookup_mro(self, obj: Any) -> Callable | None:
        """First entry registered for a class along ``type(obj).__mro__`` (singledispatch-style)."""
        for cls in type(obj).__mro__:
            if cls in self._items:
                return self._items[cls]
        return None
