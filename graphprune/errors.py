"""Error hierarchy: every failure graphprune raises on purpose derives from ``GraphPruneError``."""
from __future__ import annotations


class GraphPruneError(Exception):
    """Base class of all graphprune errors."""


class ConfigError(GraphPruneError, ValueError):
    """An option has a value outside its range; the message names the option and the fix."""


class CalibrationError(ConfigError):
    """Calibration data cannot be used: no batches, a batch the model does not accept, a loss that is
    not a scalar, or a data-aware criterion asked for without data. The model is left as it was."""


class TraceError(GraphPruneError):
    """The model could not be turned into a graph (neither torch.export nor symbolic_trace)."""


class UnsupportedOpError(GraphPruneError):
    """An op has no coupling rule and ``strict=True`` was asked for."""


class RuleError(GraphPruneError):
    """A coupling rule raised on a node and ``strict=True`` was asked for; the message names the
    rule (and where it is defined), the node, its module path and source line. Without ``strict``
    the node's dims are frozen instead and the failure is listed (``groups.coupling.rule_errors``,
    the report's "rule failed" lines)."""


CouplingError = RuleError  # the same class under the name the coupling stage's docs use


class PlanError(GraphPruneError):
    """The requested target cannot be met, or a plan does not fit the model it is applied to."""


class SurgeryError(GraphPruneError):
    """Slicing the model failed or produced a model whose forward breaks; the model was rolled back."""


class LoadError(GraphPruneError):
    """A file or folder cannot be loaded: a pickle (graphprune never unpickles), a missing or
    malformed file, or weights that do not fit the model their record describes."""


class RegistryError(GraphPruneError, KeyError):
    """A registry lookup or registration conflict."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it readable
        return str(self.args[0]) if self.args else ""


class SparsityError(GraphPruneError):
    """Weight masks cannot be made or used as asked: a layer the pattern does not fit, or hardware
    and torch without the sparse kernels ``to_semi_structured_`` needs. The model is left as it was."""


class OptimizerError(ConfigError):
    """An optimizer handed to ``Pruner`` does not hold the model's parameters, or holds state whose
    layout cannot be sliced with them."""
