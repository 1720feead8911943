"""graphprune: structural pruning of any PyTorch model, from its torch.fx graph.

>>> import timm, graphprune
>>> small = graphprune.shrink(timm.create_model("resnet18"), 0.3)
>>> type(small).__name__
'ResNet'
"""
from .api import shrink
from .calibrate import InputStats, Stats, calibrate
from .compensate import Compensation, compensate_
from .recalibrate import recalibrate_bn_
from .config import ShrinkConfig
from .coupling import RULES, register_rule
from .errors import (CalibrationError, ConfigError, CouplingError, GraphPruneError, LoadError, OptimizerError, PlanError,
                     RegistryError, RuleError, SparsityError, SurgeryError, TraceError, UnsupportedOpError)
from .groups import Group, Groups, Member, find_groups
from .plan import Plan, count_params, make_plan
from .report import Report, count_macs, plan_report
from .schedule import ParamMap, PruneStep, Pruner, Round, remap_optimizer_
from .scores import ScoreContext, Scores, list_scorers, register_scorer, score
from .sparsity import SparsityReport, list_mask_scorers, make_dense_, register_mask_scorer, sparsify_, to_semi_structured_
from .surgery import SLICERS, apply_plan_, register_slicer
from .trace import Traced, trace
from .saving import load_pretrained, save_pretrained
from .sources import ModelSpec
from .validate import check_plan, fingerprint

__version__ = "0.1.0"


def list_rules() -> list[str]:
    """Canonical ops that have a coupling rule.

    >>> "aten.conv2d" in list_rules()
    True
    """
    from . import rules  # noqa: F401

    return RULES.names()


__all__ = [
    "CalibrationError", "Compensation", "InputStats", "ScoreContext", "Scores", "Stats", "calibrate",
    "compensate_", "recalibrate_bn_", "ConfigError", "CouplingError", "GraphPruneError", "Group", "Groups", "Member", "Plan", "PlanError", "RegistryError",
    "Report", "ShrinkConfig", "SurgeryError", "TraceError", "Traced", "UnsupportedOpError", "apply_plan_",
    "count_macs", "count_params", "find_groups", "list_rules", "list_scorers", "make_plan",
    "register_rule", "register_scorer", "register_slicer", "score", "shrink", "trace", "SLICERS",
    "config_mismatches", "from_pretrained", "LoadError", "RuleError", "ModelSpec", "load_pretrained",
    "save_pretrained", "check_plan", "fingerprint", "checkpoint_tensors", "meta_model", "prune_checkpoint",
    "plan_report",
    "OptimizerError", "SparsityError", "SparsityReport", "list_mask_scorers", "make_dense_", "register_mask_scorer",
    "sparsify_", "to_semi_structured_", "ParamMap", "PruneStep", "Pruner", "Round", "remap_optimizer_",
    "Block", "Blocks", "find_blocks", "register_block_scorer", "list_block_scorers", "score_blocks", "actions",
]
from .hub import config_mismatches, from_pretrained  # noqa: E402
from . import actions  # noqa: E402
from .blocks import Block, Blocks, find_blocks  # noqa: E402
from .criteria.blocks import list_block_scorers, register_block_scorer, score_blocks  # noqa: E402
from .checkpoint import checkpoint_tensors, meta_model, prune_checkpoint  # noqa: E402
