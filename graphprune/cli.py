"""Command line: ``graphprune inspect MODEL``, ``graphprune shrink MODEL --ratio R --out FILE`` and
``graphprune prune-checkpoint SRC DST (--ratio R | --plan PLAN.json)`` for a Hugging Face folder.

MODEL is ``timm:NAME`` (built from config, random init, no download) or the path of a model saved
whole with ``torch.save(model, path)``.
"""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

import torch
from torch import nn

from .errors import GraphPruneError


def load_model(spec: str) -> nn.Module:
    """Build ``timm:NAME`` or load a whole saved model.

    >>> type(load_model("timm:resnet18")).__name__
    'ResNet'
    """
    if spec.startswith("timm:"):
        import timm

        return timm.create_model(spec[len("timm:"):], pretrained=False).eval()
    try:
        model = torch.load(spec, weights_only=False, map_location="cpu")
    except FileNotFoundError as err:
        raise GraphPruneError(f"no model file {spec!r}; pass timm:NAME or a path saved with torch.save(model, path)") from err
    if not isinstance(model, nn.Module):
        raise GraphPruneError(f"{spec!r} holds a {type(model).__name__}, not a whole model; save it with "
                              f"torch.save(model, path), not torch.save(model.state_dict(), path)")
    return model.eval()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="graphprune", description="Structural pruning from the model's graph.")
    sub = p.add_subparsers(dest="command", required=True)
    ins = sub.add_parser("inspect", help="print the groups of coupled channels")
    ins.add_argument("model", help="timm:NAME or a saved model file")
    ins.add_argument("--json", help="also write every group with its index mappings to this file")
    ins.add_argument("--limit", type=int, default=60, help="rows to print")
    shr = sub.add_parser("shrink", help="prune and save the smaller model")
    shr.add_argument("model", help="timm:NAME or a saved model file")
    shr.add_argument("--ratio", type=float, required=True, help="fraction of parameters (or MACs) to remove")
    shr.add_argument("--target", choices=("params", "macs"), default="params")
    shr.add_argument("--round-to", type=int, default=1)
    shr.add_argument("--ignore", nargs="*", default=(), help="module FQNs or class names to leave alone")
    shr.add_argument("--out", required=True, help="where to torch.save the pruned model; the plan goes to OUT.plan.json")
    ck = sub.add_parser("prune-checkpoint", help="prune a Hugging Face safetensors folder shard by shard")
    ck.add_argument("src", help="folder written by save_pretrained (safetensors)")
    ck.add_argument("dst", help="folder to write the pruned checkpoint to")
    how = ck.add_mutually_exclusive_group(required=True)
    how.add_argument("--plan", help="a plan JSON made for this architecture (Plan.to_json)")
    how.add_argument("--ratio", type=float, help="plan here, on the meta device, scoring from the checkpoint")
    ck.add_argument("--uniform", action="store_true", help="same widths in every layer (stock from_pretrained loads it)")
    ck.add_argument("--round-to", type=int, default=1)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``graphprune`` command."""
    args = _parser().parse_args(argv)
    try:
        return {"inspect": _inspect, "shrink": _shrink, "prune-checkpoint": _prune_checkpoint}[args.command](args)
    except GraphPruneError as err:
        print(f"graphprune: error: {err}", file=sys.stderr)
        return 2


def _inspect(args: argparse.Namespace) -> int:
    from .groups import find_groups
    from .report import groups_table

    groups = find_groups(load_model(args.model))
    print(groups_table(groups, limit=args.limit))
    if args.json:
        groups.to_json(args.json)
        print(f"wrote {args.json}")
    return 0


def _shrink(args: argparse.Namespace) -> int:
    from .api import shrink

    model = load_model(args.model)
    small, report = shrink(model, args.ratio, target=args.target, round_to=args.round_to,
                           ignore=tuple(args.ignore), return_report=True)
    torch.save(small, args.out)
    report.plan.to_json(args.out + ".plan.json")
    print(report)
    print(f"saved {args.out} and {args.out}.plan.json")
    return 0


def _prune_checkpoint(args: argparse.Namespace) -> int:
    from .checkpoint import plan_checkpoint, prune_checkpoint
    from .config import ShrinkConfig
    from .plan import Plan

    plan = (Plan.from_json(args.plan) if args.plan else
            plan_checkpoint(args.src, ShrinkConfig(ratio=args.ratio, uniform=args.uniform, round_to=args.round_to)))
    prune_checkpoint(args.src, plan, args.dst)
    plan.to_json(f"{args.dst}/graphprune.plan.json")
    print(f"parameters {plan.params_before:,} -> {plan.params_after:,} (-{plan.ratio:.1%}); wrote {args.dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
