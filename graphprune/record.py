"""Loading stage: rebuild a pruned model's shapes from the record saved with it.

A pruned model is saved as its weights plus a record: how to build the unpruned base model, the
shape of every tensor pruning changed, and the width attributes it set. Hugging Face folders keep
the record in ``config.json`` (``config.graphprune``, see ``graphprune.surgery.config``); other
models in ``graphprune.json`` (``graphprune.saving``). Loading builds the base, checks the record
against it field by field (it comes from a file), gives the tensors their saved shapes, and then
the weights are loaded over them.
"""
from __future__ import annotations

from typing import Any

from torch import nn

from .errors import PlanError
from .plan import Plan
from . import schema
from .validate import named_tensors, check_attr_write, fingerprint

RECORD_VERSION = 1
RESAVE = "Save the model again with this graphprune (graphprune.save_pretrained)."


def read_record(data: Any, where: str) -> dict[str, Any]:
    """The record's fields, each checked for its type (``PlanError`` naming the first bad one).

    >>> read_record({"version": 1, "base": {}, "shapes": {"w": [2, -1]}, "attrs": {}}, "graphprune.json")
    Traceback (most recent call last):
    graphprune.errors.PlanError: graphprune.json field 'shapes'['w'][1] must be an integer >= 1, got int -1
    """
    schema.check_version(data, where, RECORD_VERSION, "graphprune record", RESAVE)
    return schema.fields(schema.RECORD_FIELDS, "a graphprune record")(data, where)


def check_base(model: nn.Module, record: dict[str, Any], where: str) -> None:
    """The freshly built base is the model the record was pruned from (same fingerprint)."""
    if record.get("fingerprint") and record["fingerprint"] != fingerprint(model):
        raise PlanError(f"{where}: the base model built now ({type(model).__qualname__}, fingerprint "
                        f"{fingerprint(model)}) is not the one the weights were pruned from (fingerprint "
                        f"{record['fingerprint']}); was it built by another version of its library?")


def check_record(model: nn.Module, record: dict[str, Any], where: str) -> None:
    """Every recorded shape names a tensor of the base (after the recorded modules went) and is no
    larger than it; every recorded attribute is a width attribute that shrinks (as a plan's are)."""
    tensors = named_tensors(model)
    for fqn, shape in record["shapes"].items():
        field = f"{where} field 'shapes'[{fqn!r}]"
        if fqn not in tensors:
            raise PlanError(f"{field}: the base model has no parameter or buffer {fqn!r}")
        have = list(tensors[fqn].shape)
        if len(shape) != len(have) or any(n > h for n, h in zip(shape, have)):
            raise PlanError(f"{field} is {shape}, which the base model's {have} cannot be pruned to")
    for fqn, attrs in record["attrs"].items():
        for attr, value in attrs.items():
            check_attr_write(model, fqn, attr, value, f"{where} field 'attrs'[{fqn!r}][{attr!r}]")


def reshape_(model: nn.Module, record: dict[str, Any], where: str) -> nn.Module:
    """Give the base ``model`` the recorded shapes and attributes (which indices stay does not
    matter: the saved weights are loaded over them)."""
    from .surgery.core import apply_checked_, apply_plan_

    check_base(model, record, where)
    if record.get("structure"):  # removed modules first: the recorded shapes use the names after it
        apply_plan_(model, structure_plan(model, record, where))
    check_record(model, record, where)
    return apply_checked_(model, shape_plan(model, record))


def structure_plan(model: nn.Module, record: dict[str, Any], where: str) -> Plan:
    """The recorded module removals as a plan (checked like any plan when applied)."""
    from .actions import _action

    actions = tuple(_action(a, f"{where} field 'structure'[{i}]") for i, a in enumerate(record["structure"]))
    n = sum(p.numel() for p in model.parameters())
    return Plan.build(structure=actions, config={"rebuild": True}, params_before=n, params_after=n,
                      fingerprint=fingerprint(model), model_class=type(model).__qualname__)


def shape_plan(model: nn.Module, record: dict[str, Any]) -> Plan:
    tensors = {**dict(model.named_parameters()), **dict(model.named_buffers())}
    keep = {f: {d: list(range(n)) for d, n in enumerate(shape) if n != tensors[f].shape[d]}
            for f, shape in record["shapes"].items() if f in tensors}
    attrs = {f: {a: tuple(v) if isinstance(v, list) else v for a, v in av.items()} for f, av in record["attrs"].items()}
    n = sum(p.numel() for p in model.parameters())
    return Plan.build(keep={f: d for f, d in keep.items() if d}, attrs=attrs, config={"rebuild": True},
                params_before=n, params_after=n, fingerprint=fingerprint(model), model_class=type(model).__qualname__)
