"""The plan as a value: typed, versioned actions that surgery applies, each by its own surgeon.

A ``Plan`` is a tuple of actions plus what checks them (the fingerprint of the model it was made
for, the coupled members of every removed group) and what reports them. The actions:

``slice``         keep these indices of a tensor along these dims
``set_attr``      set a module's width attribute (``num_heads``, ``groups``, ``in_features`` ...)
``set_config``    set a width field of the model's config (``intermediate_size`` ...)
``replace``       replace a module by ``identity`` (``nn.Identity``) or ``skip`` (returns its first input)
``drop_entries``  take entries out of a ``ModuleList``; later entries move up, their layer-index
                  attributes and the config field that counts the list (``num_hidden_layers``) follow

Every action is frozen, with tuples inside, so a plan cannot change once made; it serialises to
JSON with a format version that ``Plan.from_json`` checks, and re-applies to a fresh model.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Iterable

from . import schema

PLAN_VERSION = 3  # 3: typed actions, removed blocks; 2: fingerprint, coupled members (1: neither)
REMAKE = "Make the plan again from the model (graphprune.make_plan, or graphprune shrink on the command line)."
REPLACEMENTS = ("identity", "skip")


@dataclass(frozen=True)
class Action:
    """One change a plan makes; ``op`` names it in JSON and picks its surgeon."""

    op: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, **{f.name: _plain(getattr(self, f.name)) for f in fields(self)}}


@dataclass(frozen=True)
class Slice(Action):
    """Keep ``dims[d]`` (sorted indices) along each dim ``d`` of the tensor ``tensor``."""

    op: ClassVar[str] = "slice"
    tensor: str
    dims: tuple[tuple[int, tuple[int, ...]], ...]

    def to_dict(self) -> dict[str, Any]:
        return {"op": self.op, "tensor": self.tensor, "dims": {str(d): list(ix) for d, ix in self.dims}}


@dataclass(frozen=True)
class SetAttr(Action):
    """``module.attr = value`` (a dotted ``attr`` reaches the module's config: ``config.num_heads``)."""

    op: ClassVar[str] = "set_attr"
    module: str
    attr: str
    value: int | tuple[int, ...]


@dataclass(frozen=True)
class SetConfig(Action):
    """``model.config.<field> = value`` (dotted for nested configs: ``text_config.hidden_size``)."""

    op: ClassVar[str] = "set_config"
    field: str
    value: int


@dataclass(frozen=True)
class Replace(Action):
    """Replace the module at ``module`` by ``identity`` or ``skip``."""

    op: ClassVar[str] = "replace"
    module: str
    by: str


@dataclass(frozen=True)
class DropEntries(Action):
    """Take ``indices`` out of the ``ModuleList`` at ``module``; ``count`` is the config field
    holding its length ("" if none)."""

    op: ClassVar[str] = "drop_entries"
    module: str
    indices: tuple[int, ...]
    count: str = ""


ACTIONS: dict[str, type[Action]] = {a.op: a for a in (Slice, SetAttr, SetConfig, Replace, DropEntries)}


def _plain(v: Any) -> Any:
    return [_plain(x) for x in v] if isinstance(v, tuple) else v


def slices(keep: dict[str, dict[int, Iterable[int]]]) -> tuple[Slice, ...]:
    """``Slice`` actions from ``{tensor: {dim: kept indices}}``.

    >>> slices({"fc.weight": {0: [0, 2]}})
    (Slice(tensor='fc.weight', dims=((0, (0, 2)),)),)
    """
    return tuple(Slice(f, tuple((int(d), tuple(int(i) for i in ix)) for d, ix in sorted(dims.items())))
                 for f, dims in sorted(keep.items()))


@dataclass(frozen=True)
class Plan:
    """What pruning does to a model, as ``actions``; plus what checks and reports them.

    ``fingerprint`` identifies the model it was made for (parameter and buffer names and shapes,
    see ``graphprune.validate.fingerprint``); ``coupled`` lists, per removed group, its members as
    ``[fqn, dim or attribute, indices per unit]`` (so ``apply_plan_`` checks that coupled tensors
    stay consistent without tracing again); ``removed`` the units removed per group id and
    ``removed_blocks`` the blocks removed whole, with their scores.

    >>> p = Plan.build(keep={"fc.weight": {0: [0, 2]}}, config={}, params_before=12, params_after=8)
    >>> p.keep, [a.op for a in p.actions]
    ({'fc.weight': {0: [0, 2]}}, ['slice'])
    """

    actions: tuple[Action, ...]
    removed: dict[int, list[int]]
    config: dict[str, Any]
    params_before: int
    params_after: int
    output_shapes: list[list[int]] = field(default_factory=list)
    version: int = PLAN_VERSION
    fingerprint: str = ""
    model_class: str = ""
    coupled: dict[int, list[list[Any]]] = field(default_factory=dict)
    removed_blocks: dict[str, float] = field(default_factory=dict)

    @classmethod
    def build(cls, keep: dict | None = None, attrs: dict | None = None, model_config: dict | None = None,
              structure: Iterable[Action] = (), removed: dict | None = None, **rest: Any) -> "Plan":
        """A plan from its parts: kept indices per tensor, attribute values per module, config
        fields, and structural actions (``Replace``, ``DropEntries``)."""
        actions = (*slices(keep or {}),
                   *(SetAttr(m, a, tuple(v) if isinstance(v, list) else v)
                     for m, av in sorted((attrs or {}).items()) for a, v in av.items()),
                   *(SetConfig(f, v) for f, v in sorted((model_config or {}).items())), *structure)
        return cls(actions=actions, removed=dict(removed or {}), **rest)

    def with_parts(self, **parts: Any) -> "Plan":
        """The same plan with some parts (``keep``, ``attrs``, ``model_config``, ``structure``)
        replaced and any other field changed."""
        mine = {"keep": self.keep, "attrs": self.attrs, "model_config": self.model_config,
                "structure": self.structure}
        rest = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "actions"}
        rest.update({k: v for k, v in parts.items() if k not in mine})
        return Plan.build(**{**mine, **{k: v for k, v in parts.items() if k in mine}}, **rest)

    def under(self, prefix: str) -> "Plan":
        """The plan for a submodule, restated for the model that holds it at ``prefix``: every
        tensor, module and coupled member named from there (``submodules=`` merges these).

        >>> Plan.build(keep={"0.weight": {0: [1]}}, attrs={"": {"width": 1}}, config={}, params_before=2,
        ...            params_after=1).under("backbone").keep
        {'backbone.0.weight': {0: [1]}}
        """
        at = lambda name: f"{prefix}.{name}" if name else prefix  # noqa: E731
        named = {Slice: "tensor", SetAttr: "module", Replace: "module", DropEntries: "module"}  # SetConfig: the root's
        actions = tuple(dataclasses.replace(a, **{named[type(a)]: at(getattr(a, named[type(a)]))}) if type(a) in named
                        else a for a in self.actions)
        coupled = {g: [[at(m[0]), *m[1:]] for m in members] for g, members in self.coupled.items()}
        return dataclasses.replace(self, actions=actions, coupled=coupled,
                                   removed_blocks={at(k): v for k, v in self.removed_blocks.items()})

    def of(self, op: str) -> list[Action]:
        return [a for a in self.actions if a.op == op]

    @property
    def keep(self) -> dict[str, dict[int, list[int]]]:
        """Kept indices per tensor and dim (the ``slice`` actions)."""
        return {a.tensor: {d: list(ix) for d, ix in a.dims} for a in self.of("slice")}

    @property
    def attrs(self) -> dict[str, dict[str, Any]]:
        """New attribute values per module (the ``set_attr`` actions)."""
        out: dict[str, dict[str, Any]] = {}
        for a in self.of("set_attr"):
            out.setdefault(a.module, {})[a.attr] = a.value
        return out

    @property
    def model_config(self) -> dict[str, int]:
        """New config field values (the ``set_config`` actions)."""
        return {a.field: a.value for a in self.of("set_config")}

    @property
    def structure(self) -> tuple[Action, ...]:
        """The actions that remove modules (``replace``, ``drop_entries``)."""
        return tuple(a for a in self.actions if a.op in ("replace", "drop_entries"))

    @property
    def ratio(self) -> float:
        return 1 - self.params_after / self.params_before if self.params_before else 0.0

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form (actions as objects with an ``op``; group ids as string keys)."""
        return {**{f.name: getattr(self, f.name) for f in fields(self)},
                "actions": [a.to_dict() for a in self.actions],
                "removed": {str(k): list(v) for k, v in self.removed.items()},
                "coupled": {str(k): [list(m) for m in v] for k, v in self.coupled.items()}}

    def to_json(self, path: str | None = None) -> str:
        """Serialise; ``Plan.from_json`` reads it back.

        >>> p = Plan.build(keep={"w": {1: [0]}}, attrs={"": {"width": 1}}, config={"ratio": 0.0},
        ...                params_before=10, params_after=10, fingerprint="abc")
        >>> Plan.from_json(p.to_json()) == p
        True
        """
        text = json.dumps(self.to_dict())
        if path is not None:
            schema.write_text(path, text, "the plan")
        return text

    @classmethod
    def from_dict(cls, data: Any, where: str = "plan") -> "Plan":
        """Check every field (``PlanError`` naming the first bad one) and build the plan. Plans of
        another format version are refused, with a message saying so.

        >>> Plan.from_dict({"version": 2})
        Traceback (most recent call last):
        graphprune.errors.PlanError: plan has format version 2; this graphprune reads plan format 3 only. Make the plan again ...
        """
        schema.check_version(data, where, PLAN_VERSION, "plan", REMAKE)
        values = schema.fields(schema.PLAN_FIELDS, "a plan")(data, where)
        values["actions"] = tuple(_action(a, f"{where} field 'actions'[{i}]") for i, a in enumerate(values["actions"]))
        return cls(**values)

    @classmethod
    def from_json(cls, text_or_path: str) -> "Plan":
        """Read a plan from JSON text or a JSON file (never anything else: a plan is data)."""
        return cls.from_dict(*schema.read_json(text_or_path, "plan"))


def _action(data: Any, path: str) -> Action:
    """One action from JSON, each field checked (``PlanError`` naming it)."""
    if not isinstance(data, dict) or data.get("op") not in ACTIONS:
        op = data.get("op") if isinstance(data, dict) else data
        raise schema.fail(path, f"an action object whose 'op' is one of {sorted(ACTIONS)}", op)
    values = schema.fields({"op": (schema.string, True), **schema.ACTION_FIELDS[data["op"]]}, f"a {data['op']} action")(
        data, path)
    values.pop("op")
    if data["op"] == "slice":
        values["dims"] = tuple((d, tuple(ix)) for d, ix in sorted(values["dims"].items()))
    return ACTIONS[data["op"]](**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
