"""Surgery guard: check that a plan fits the model it is applied to, before any tensor changes.

A plan may come from a file, so ``apply_plan_`` trusts none of it: the format version, the model it
was made for (``fingerprint``), every kept index, that coupled tensors keep matching widths, and
that it writes only width attributes and config fields. Each kind of change a plan holds has its
own check, registered in ``PLAN_CHECKS`` (a new kind of change registers its own), and every
failure is a ``PlanError`` naming the field or index. Those checks read the plan alone; ``units``
checks it against the model's own groups, which needs a trace (``apply_plan_`` runs it).
"""
from __future__ import annotations

from .core import PLAN_CHECKS, Target, check_plan, fingerprint, named_tensors, plan_check
# importing a check module registers its checks: kept indices, then writes, then structure, the
# order in which a plan's errors are reported
from .indices import check_indices, check_keep
from .writes import check_attr_write, check_attrs, check_model_config
from . import structure  # noqa: E402,F401 - registers "structure" last

__all__ = ["PLAN_CHECKS", "Target", "check_attr_write", "check_attrs", "check_indices", "check_keep",
           "check_model_config", "check_plan", "fingerprint", "named_tensors", "plan_check"]
