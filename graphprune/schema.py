"""Plan and record files: field-by-field checks of JSON data read back from disk.

A plan or a saved-model record is data from a file the user may have edited or been sent, so every
field is checked for its type before anything reads it, and a failure is a ``PlanError`` that names
the field (``keep['conv1.weight']['0'][3] must be an integer, got 'x'``), never a raw KeyError.
A check is a function ``(value, path) -> value`` (it may convert, e.g. the string keys JSON
forces on dims back to ints); ``fields`` combines them into the check of one JSON object.
"""
from __future__ import annotations

import difflib
import json
import os
from typing import Any, Callable

from .errors import ConfigError, PlanError

Check = Callable[[Any, str], Any]


def _show(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60] + '...' if len(text) > 60 else text}"


def fail(path: str, want: str, value: Any) -> PlanError:
    return PlanError(f"{path} must be {want}, got {_show(value)}")


def integer(minimum: int | None = None) -> Check:
    """An int (never a bool or a float), at least ``minimum``.

    >>> integer(0)(3, "x")
    3
    >>> integer(0)(-1, "plan field x")
    Traceback (most recent call last):
    graphprune.errors.PlanError: plan field x must be an integer >= 0, got int -1
    """
    want = "an integer" if minimum is None else f"an integer >= {minimum}"

    def check(value: Any, path: str) -> int:
        if type(value) is not int or (minimum is not None and value < minimum):
            raise fail(path, want, value)
        return value

    return check


def string(value: Any, path: str) -> str:
    if not isinstance(value, str):
        raise fail(path, "a string", value)
    return value


def anything(value: Any, path: str) -> Any:
    return value


def int_key(value: Any, path: str) -> int:
    """A dim or group id: JSON writes mapping keys as strings, so "0" reads as 0."""
    if type(value) is int:
        return value
    if isinstance(value, str) and value.lstrip("-").isdigit():
        return int(value)
    raise fail(path, "an integer key", value)


def list_of(item: Check) -> Check:
    def check(value: Any, path: str) -> list:
        if not isinstance(value, (list, tuple)):
            raise fail(path, "a list", value)
        return [item(v, f"{path}[{i}]") for i, v in enumerate(value)]

    return check


def dict_of(item: Check, key: Check = string) -> Check:
    def check(value: Any, path: str) -> dict:
        if not isinstance(value, dict):
            raise fail(path, "an object (mapping)", value)
        return {key(k, f"{path} key {k!r}"): item(v, f"{path}[{k!r}]") for k, v in value.items()}

    return check


def either(*checks: Check, want: str) -> Check:
    def check(value: Any, path: str) -> Any:
        for c in checks:
            try:
                return c(value, path)
            except PlanError:
                continue
        raise fail(path, want, value)

    return check


def fields(spec: dict[str, tuple[Check, bool]], what: str) -> Check:
    """An object with the given fields (``name: (check, required)``); unknown fields are refused
    with the closest known name, so a typo is not silently ignored.

    >>> c = fields({"ratio": (anything, True)}, "plan")
    >>> c({"ratoi": 1}, "plan")
    Traceback (most recent call last):
    graphprune.errors.PlanError: plan has an unknown field 'ratoi' (did you mean 'ratio'?); known fields: ratio
    """

    def check(value: Any, path: str) -> dict:
        if not isinstance(value, dict):
            raise fail(path, f"a JSON object ({what})", value)
        for name in value:
            if name not in spec:
                close = difflib.get_close_matches(str(name), list(spec), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise PlanError(f"{path} has an unknown field {name!r}{hint}; known fields: {', '.join(spec)}")
        out = {}
        for name, (c, required) in spec.items():
            if name in value:
                out[name] = c(value[name], f"{path} field {name!r}" if path else name)
            elif required:
                raise PlanError(f"{path} has no field {name!r}: {what} needs it")
        return out

    return check


INDEX_LIST = list_of(integer())
SHAPE = list_of(integer(1))
ATTR_VALUE = either(integer(), list_of(integer()), want="an integer or a list of integers")
def member(value: Any, path: str) -> list:
    """A coupled member: [tensor fqn, dim, indices per unit] or [module fqn, attribute, indices per unit]."""
    ok = (isinstance(value, (list, tuple)) and len(value) == 3 and isinstance(value[0], str)
          and (isinstance(value[1], str) or (type(value[1]) is int and value[1] >= 0))
          and type(value[2]) is int and value[2] >= 1)
    if not ok:
        raise fail(path, "[fqn, dim or attribute name, indices per unit >= 1]", value)
    return list(value)


def number(value: Any, path: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(path, "a number", value)
    return float(value)


PLAN_FIELDS: dict[str, tuple[Check, bool]] = {
    "version": (integer(), True),
    "fingerprint": (string, True),
    "model_class": (string, False),
    "actions": (list_of(anything), True),  # each checked by its op's ACTION_FIELDS (graphprune.actions)
    "removed": (dict_of(INDEX_LIST, key=int_key), True),
    "coupled": (dict_of(list_of(member), key=int_key), True),
    "removed_blocks": (dict_of(number), False),
    "config": (dict_of(anything), True),
    "params_before": (integer(0), True),
    "params_after": (integer(0), True),
    "output_shapes": (list_of(list_of(integer(0))), False),
}

# the fields of each kind of plan action besides "op" (see graphprune.actions)
ACTION_FIELDS: dict[str, dict[str, tuple[Check, bool]]] = {
    "slice": {"tensor": (string, True), "dims": (dict_of(INDEX_LIST, key=int_key), True)},
    "set_attr": {"module": (string, True), "attr": (string, True), "value": (ATTR_VALUE, True)},
    "set_config": {"field": (string, True), "value": (integer(1), True)},
    "replace": {"module": (string, True), "by": (string, True)},
    "drop_entries": {"module": (string, True), "indices": (INDEX_LIST, True), "count": (string, False)},
}

RECORD_FIELDS: dict[str, tuple[Check, bool]] = {
    "format": (string, False),
    "version": (integer(), True),
    "base": (dict_of(anything), True),
    "shapes": (dict_of(SHAPE), True),
    "attrs": (dict_of(dict_of(ATTR_VALUE)), True),
    "fingerprint": (string, False),
    "structure": (list_of(anything), False),  # removed modules, as plan actions in the order applied
}


def check_version(data: Any, path: str, want: int, what: str, fix: str) -> None:
    """Refuse data written in another format version, before reading any other field (an old
    file's fields may mean something else)."""
    if not isinstance(data, dict):
        raise fail(path, f"a JSON object ({what})", data)
    if "version" not in data:
        raise PlanError(f"{path} has no 'version' field: it was written before {what}s were versioned (format 1), "
                        f"and this graphprune reads {what} format {want} only. {fix}")
    version = data["version"]
    if version != want or type(version) is not int:
        raise PlanError(f"{path} has format version {version!r}; this graphprune reads {what} format {want} "
                        f"only. {fix}")


def write_text(path: Any, text: str, what: str) -> None:
    """Write ``text`` to the file ``path`` (a str or ``os.PathLike``); a ``ConfigError`` naming the
    path, what was written and why when it cannot be (a folder, a missing parent, no permission)."""
    try:
        with open(os.fspath(path), "w", encoding="utf-8") as fh:
            fh.write(text)
    except (OSError, TypeError) as err:
        why = getattr(err, "strerror", None) or err
        raise ConfigError(f"cannot write {what} to {path!r}: {why}; pass the path of a file in a folder that "
                          f"exists and that you can write to") from err


def read_text(path: str, what: str) -> str:
    """The text of a JSON file, or a PlanError saying why it cannot be one (missing, binary: a
    pickle passed where JSON belongs is refused here, never handed to anything that would load it)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as err:
        shown = path if len(path) <= 200 else f"{path[:200]}... ({len(path)} characters)"
        raise PlanError(f"cannot read {what} {shown!r}: {err.strerror or err}") from err
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise PlanError(f"{what} {path!r} is not a JSON text file (binary data at byte {err.start}); "
                        f"graphprune reads it only as the JSON it writes") from err


def read_json(text_or_path: str, what: str) -> tuple[Any, str]:
    """(parsed JSON, where it came from) from JSON text or the path of a JSON file."""
    if isinstance(text_or_path, os.PathLike):
        path = os.fspath(text_or_path)
        text, where = read_text(path, f"{what} file"), f"{what} file {path!r}"
    elif not isinstance(text_or_path, str):
        raise PlanError(f"a {what} is JSON text or the path of a JSON file, got {type(text_or_path).__name__}")
    elif text_or_path.lstrip()[:1] in ("{", "[") or text_or_path.strip() in ("null", "true", "false"):
        text, where = text_or_path, what  # JSON text (a file name never looks like this)
    else:
        text, where = read_text(text_or_path, f"{what} file"), f"{what} file {text_or_path!r}"
    try:
        return json.loads(text), where
    except json.JSONDecodeError as err:
        raise PlanError(f"{where} is not valid JSON ({err}); graphprune reads the JSON it writes") from err
    except RecursionError as err:  # json nests by recursion: thousands of '[' exhaust the stack
        raise PlanError(f"{where} nests arrays or objects too deeply to be one graphprune writes") from err
