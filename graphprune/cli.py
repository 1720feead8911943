"""Command line: ``graphprune inspect MODEL`` and ``graphprune shrink MODEL --ratio R --out FILE``.

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
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``graphprune`` command."""
    args = _parser().parse_args(argv)
    try:
        return _inspect(args) if args.command == "inspect" else _shrink(args)
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


if __name__ == "__main__":
    raise SystemExit(main())
