"""Schedules: prune in rounds (``shrink(..., steps=N)``), or during the user's own training loop
(``Pruner``), each round re-tracing and re-scoring the model as it is by then."""
from .iterative import shrink_steps
from .optim import ParamMap, check_optimizer, remap_optimizer_
from .pruner import PruneStep, Pruner
from .rounds import Round, compose

__all__ = ["ParamMap", "PruneStep", "Pruner", "Round", "check_optimizer", "compose", "remap_optimizer_", "shrink_steps"]
