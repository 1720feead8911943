"""Progress bars (tqdm) for the long stages: tracing, calibration, zoo runs, reading and writing weights.

Bars go to stderr and only when it is a terminal (tqdm's ``disable=None``), so logs, pipes, CI and
tests stay silent; ``TQDM_DISABLE=1`` turns them off everywhere.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Iterable, Iterator, Sequence

from tqdm import tqdm


def bar(iterable: Iterable[Any] | None = None, desc: str = "", total: int | None = None,
        unit: str = "it") -> tqdm:
    """A tqdm bar over ``iterable`` that shows only on a terminal.

    >>> list(bar([1, 2], "demo"))
    [1, 2]
    """
    return tqdm(iterable, desc=f"graphprune: {desc}", total=total, unit=unit, disable=_disable(), leave=False,
                dynamic_ncols=True)


def _disable() -> bool | None:
    """None (tqdm: off unless stderr is a terminal), or True when ``TQDM_DISABLE`` is set (tqdm reads
    its environment only for arguments not passed, and ``disable`` is passed here)."""
    return True if os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes") else None


class Stages:
    """One bar over the named stages of a long call, showing the stage running and the time spent.

    >>> with stages("demo", ["trace", "plan"]) as step:
    ...     step("trace"); step("plan")
    """

    def __init__(self, what: str, names: Sequence[str]):
        self.names = list(names)
        self.bar = tqdm(total=len(self.names), desc=f"graphprune: {what}", disable=_disable(), leave=False,
                        bar_format="{desc}: {n_fmt}/{total_fmt} {postfix} [{elapsed}]", dynamic_ncols=True)
        self.current: str | None = None

    def __call__(self, name: str) -> None:
        if self.current is not None:
            self.bar.update(1)
        self.current = name
        self.bar.set_postfix_str(name)

    def close(self) -> None:
        if self.current is not None:
            self.bar.update(1)
        self.bar.close()


@contextlib.contextmanager
def stages(what: str, names: Sequence[str]) -> Iterator[Stages]:
    s = Stages(what, names)
    try:
        yield s
    finally:
        s.close()
