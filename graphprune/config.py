"""Options for ``shrink`` and ``make_plan``: one frozen, validated, serialisable dataclass."""
from __future__ import annotations

import difflib
import numbers
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .errors import ConfigError

VERSION = 8  # 8: ridge; 7: recalibrate_bn; 6: round_reference; 5: read_source; 4: layers, block_scorer; 3: steps; 2: scope, max_fraction, normalize, compensate, seed, max_batches
TARGETS = ("params", "macs")
KINDS = ("heads", "mlp", "hidden", "layers")
WIDTHS = ("heads", "mlp", "hidden")  # what prune= takes by default: depth is asked for by name
SCOPES = ("auto", "global", "local")
NORMALIZE = ("auto", "mean", "max", "sum", "none")
COMPENSATE = (None, "mean", "lstsq")
ROUND_REFERENCES = ("original", "current")


def _check_block_scorer(name: Any) -> None:
    """A misspelt block scorer is an error even when prune= has no "layers" to use it on."""
    from .criteria.blocks import block_needs  # criteria import this module

    if isinstance(name, str) and name != "auto":
        block_needs(name)  # resolves it in the registry, which names the closest scorer


def check_flags(**flags: Any) -> None:
    """Refuse a flag that is not a bool: ``inplace="no"`` is truthy and would prune in place.

    >>> check_flags(inplace="no")
    Traceback (most recent call last):
    ...
    graphprune.errors.ConfigError: inplace='no' must be True or False
    """
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ConfigError(f"{name}={value!r} must be True or False")


def check_number(name: str, value: Any) -> None:
    """Refuse a value that is not a real number (a string, a bool, None, NaN) before any range check.
    A numpy scalar passes: numpy registers its numbers with ``numbers.Real`` (``np.bool_`` it does not)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
        got = "NaN" if isinstance(value, float) else type(value).__name__
        raise ConfigError(f"{name}={value!r} must be a number (an int or float), got {got}")


def check_seed(seed: Any) -> None:
    """Refuse a seed that is not an integer (``seed="a"``, ``seed=1.5``): torch would, from deep inside."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2 ** 63:
        raise ConfigError(f"seed={seed!r} must be an integer in [0, 2**63), e.g. seed=0")


def check_callable(name: str, value: Any, signature: str) -> None:
    """Refuse a value where a function is expected (``loss_fn="mse"``), before any data runs."""
    if value is not None and not callable(value):
        raise ConfigError(f"{name}={value!r} must be a function {signature} or None, got {type(value).__name__}")


@dataclass(frozen=True)
class ShrinkConfig:
    """What to prune and how much.

    ``ratio``: fraction of the target (parameters, or MACs with ``target="macs"``) to remove.
    ``ignore``: module FQNs (a prefix matches the subtree), module classes (or their names) or
    filters ``fn(fqn, module) -> bool`` whose modules are left untouched; each name must exist in
    the model (``ConfigError`` with the closest names otherwise).
    ``round_to``: kept widths are multiples of it (a group narrower than it stays whole).
    ``min_keep``: units every group keeps.
    ``cost_power``: units are ranked by ``score / cost**cost_power`` (cost = parameters or MACs a unit
    carries): 0 ranks by importance alone, 1 by importance per parameter.
    ``tolerance``: how far the achieved ratio may be from ``ratio`` before ``PlanError`` is raised.
    ``prune``: which kinds of groups may shrink: "heads" (attention heads), "mlp" (MLP neurons and
    conv channels), "hidden" (widths normalised by layer/RMS norms: a transformer's residual stream),
    "layers" (whole residual blocks the graph proves removable, see ``graphprune.find_blocks``; not
    in the default, since removing depth is a choice to make deliberately).
    ``layers``: remove exactly this many blocks (with "layers" in ``prune``); without it the blocks
    take the whole ratio (``prune=("layers",)``) or about half of it beside width kinds.
    ``block_scorer``: what ranks blocks: "angular" (needs calibration), "bypass" (needs
    calibration; one forward per block per batch), "branch_norm" (weights only); "auto" picks
    "angular" with calibration data and "branch_norm" without.
    ``uniform``: groups playing the same part in every layer keep equal widths (a standard HF config
    can then describe the pruned model); refused for a model without a config (``model.config``).
    ``scope``: "global" ranks units of every group against each other (scores divided per group by
    their ``normalize``: "mean", "max", "sum", or "none"); "local" removes the same fraction of
    every group. "auto" (both defaults) is global and unnormalised for criteria that read
    calibration data (they estimate what removal changes, in units every layer shares: dividing
    by a group's mean threw that away and cost EfficientNet-Lite0 40 points of top-1 at 10%), and
    local for weight-only ones (a weight norm means different things in different layers: ranked
    globally, the pretrained CNN lost a whole expansion layer at 5%). See docs/criteria.md. ``max_fraction``: no group loses more than
    this fraction of its units.
    ``compensate``: after removal, fold what the removed units fed their consumers into what stays,
    from calibration data: "mean" (into a bias or the next norm's running mean) or "lstsq" (refit the
    consumers' kept weights by ridge least squares; "mean" where a consumer is no linear map).
    ``ridge``: the lstsq refit's damping, relative to the mean energy of the kept inputs: None (the
    default) picks each layer's by two-fold cross-validation over the calibration batches
    (``graphprune.ridge``); a number fixes it for every layer (cheaper on very wide layers; 1e-3
    is what graphprune used before cross-validation).
    ``seed``: for the random criterion and the random output projection of gradient criteria.
    ``max_batches``: calibration batches read at most (None: all).
    ``strict``: an op without a coupling rule, or a rule that fails, raises instead of freezing.
    ``read_source``: let rules read the model's code for widths it computes (``graphprune.source``).
    ``steps``: rounds the budget is removed in (re-tracing, re-scoring and re-calibrating between
    them); round k reaches ``ratio * k / steps`` of the original model.
    ``round_reference``: with ``steps > 1`` and calibration data, what rounds after the first judge
    units against: "original" (what removing a unit does to the pruned model's error against the
    original model's outputs; ``activation``, ``fluctuation``, ``obs`` and projection ``taylor`` read it) or
    "current" (the partly pruned model's own outputs, as a fresh one-shot run would).
    ``recalibrate_bn``: after pruning (after every round with ``steps > 1``), re-estimate every
    BatchNorm's running statistics on the calibration batches: removing channels moves what the
    next layers compute, and statistics measured before no longer match (needs ``calibration=``).

    >>> ShrinkConfig(ratio=0.5, ignore=("head",)).to_dict()["ratio"]
    0.5
    """

    ratio: float
    target: str = "params"
    scorer: str = "l2"
    round_to: int = 1
    min_keep: int = 1
    ignore: tuple[str, ...] = ()
    cost_power: float = 0.0
    tolerance: float = 0.01
    prune: tuple[str, ...] = WIDTHS
    uniform: bool = False
    strict: bool = False
    read_source: bool = True
    scope: str = "auto"
    max_fraction: float = 1.0
    normalize: str = "auto"
    compensate: str | None = None
    ridge: float | None = None
    seed: int = 0
    max_batches: int | None = None
    steps: int = 1
    layers: int | None = None
    block_scorer: str = "auto"
    round_reference: str = "original"
    recalibrate_bn: bool = False
    version: int = field(default=VERSION)

    def __post_init__(self) -> None:
        self._plain_numbers()
        check_number("ratio", self.ratio)
        if not 0 <= self.ratio < 1:
            raise ConfigError(f"ratio={self.ratio!r} is outside [0, 1): it is the fraction of the "
                              f"model's {self.target} to remove, e.g. ratio=0.5 halves them")
        if self.target not in TARGETS:
            raise ConfigError(f"target={self.target!r} is not one of {TARGETS}")
        for name in ("round_to", "min_keep"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name}={value!r} must be an integer >= 1")
        if not isinstance(self.tolerance, (int, float)) or not 0 < self.tolerance <= 1:
            raise ConfigError(f"tolerance={self.tolerance!r} must be in (0, 1]")
        if not isinstance(self.cost_power, (int, float)) or not 0 <= self.cost_power <= 2:
            raise ConfigError(f"cost_power={self.cost_power!r} must be a number in [0, 2]")
        for name, allowed in (("scope", SCOPES), ("normalize", NORMALIZE), ("compensate", COMPENSATE),
                              ("round_reference", ROUND_REFERENCES)):
            if getattr(self, name) not in allowed:
                raise ConfigError(f"{name}={getattr(self, name)!r} is not one of {allowed}")
        if isinstance(self.max_fraction, bool) or not isinstance(self.max_fraction, (int, float)) \
                or not 0 < self.max_fraction <= 1:
            raise ConfigError(f"max_fraction={self.max_fraction!r} must be in (0, 1]: the largest fraction of "
                              f"one group's units that may go")
        if self.ridge is not None and (isinstance(self.ridge, bool) or not isinstance(self.ridge, (int, float))
                                       or not 0 <= self.ridge < float("inf")):
            raise ConfigError(f"ridge={self.ridge!r} must be a number >= 0 (the lstsq damping, relative to the mean "
                              f"input energy, e.g. 1e-3) or None to choose it per layer by cross-validation")
        if self.max_batches is not None and (not isinstance(self.max_batches, int) or self.max_batches < 1):
            raise ConfigError(f"max_batches={self.max_batches!r} must be an integer >= 1 or None")
        check_seed(self.seed)
        check_flags(read_source=self.read_source, recalibrate_bn=self.recalibrate_bn, uniform=self.uniform,
                    strict=self.strict)
        if isinstance(self.steps, bool) or not isinstance(self.steps, int) or self.steps < 1:
            raise ConfigError(f"steps={self.steps!r} must be an integer >= 1: the number of rounds the ratio is "
                              f"removed in (1: all at once)")
        prune = (self.prune,) if isinstance(self.prune, str) else tuple(self.prune)
        if not prune or set(prune) - set(KINDS):
            raise ConfigError(f"prune={self.prune!r} must name some of {KINDS}")
        if self.layers is not None and (isinstance(self.layers, bool) or not isinstance(self.layers, int)
                                        or self.layers < 1 or "layers" not in prune):
            raise ConfigError(f"layers={self.layers!r} removes that many whole blocks: pass an integer >= 1 and "
                              f"include 'layers' in prune= (e.g. prune=('layers',) or ('layers', 'mlp'))")
        if "layers" in prune and isinstance(self.steps, int) and self.steps > 1:
            raise ConfigError(f"steps={self.steps} with 'layers' in prune=: blocks are removed in one step; "
                              f"remove them first (prune=('layers',)), then prune widths in rounds")
        if not isinstance(self.block_scorer, str) and not callable(self.block_scorer):
            raise ConfigError(f"block_scorer={self.block_scorer!r} must be a registered name or fn(ctx) -> float")
        _check_block_scorer(self.block_scorer)
        object.__setattr__(self, "prune", prune)
        object.__setattr__(self, "ignore", _ignore_names(self.ignore))

    def _plain_numbers(self) -> None:
        """A numpy scalar (``np.float32(0.3)``, ``np.int64(5)``) is a number to a user: store it as
        the Python float or int it equals (the plan's JSON and the checks below read those). A
        tensor, a string or a bool stays what it is, for the checks to refuse."""
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) in (bool, int, float) or not isinstance(value, numbers.Real):
                continue
            object.__setattr__(self, f.name, int(value) if isinstance(value, numbers.Integral) else float(value))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["ignore"] = [i if isinstance(i, str) else getattr(i, "__qualname__", repr(i)) for i in self.ignore]
        data["prune"] = list(self.prune)
        for name in ("scorer", "block_scorer"):
            if not isinstance(getattr(self, name), str):
                data[name] = getattr(getattr(self, name), "__qualname__", repr(getattr(self, name)))
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ShrinkConfig":
        check_options(data, what="config key")
        data = dict(data)
        data["ignore"] = tuple(data.get("ignore", ()))
        data["prune"] = tuple(data.get("prune", WIDTHS))
        return cls(**data)


def check_options(options: dict[str, Any], also: tuple[str, ...] = (), what: str = "option") -> None:
    """Refuse a keyword no option reads, naming the closest ones (a typo must not be ignored).

    >>> check_options({"ratoi": 0.5})
    Traceback (most recent call last):
    graphprune.errors.ConfigError: unknown option 'ratoi' (did you mean 'ratio'?); known: ...
    """
    known = sorted(set(f.name for f in fields(ShrinkConfig)) | set(also))
    for name in options:
        if name not in known:
            close = difflib.get_close_matches(str(name), known, n=2)
            hint = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ""
            raise ConfigError(f"unknown {what} {name!r}{hint}; known: {', '.join(known)}")


def _ignore_names(ignore: Any) -> tuple[Any, ...]:
    """Module FQNs and class names as strings; filters ``fn(fqn, module) -> bool`` stay callables
    until ``graphprune.options.checked`` turns them into the FQNs they pick."""
    if isinstance(ignore, (str, type)) or callable(ignore):
        ignore = (ignore,)
    if not isinstance(ignore, (tuple, list)):
        raise ConfigError(f"ignore= takes a tuple of module FQNs, module classes or filters fn(fqn, module) -> bool, "
                          f"got {ignore!r}")
    names = []
    for item in ignore:
        if isinstance(item, type):
            names.append(item.__qualname__)
        elif isinstance(item, str) or callable(item):
            names.append(item)
        else:
            raise ConfigError(f"ignore= takes module FQNs, module classes or filters fn(fqn, module) -> bool, "
                              f"got {item!r}")
    return tuple(names)
