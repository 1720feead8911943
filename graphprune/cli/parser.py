"""Command line, arguments: the verbs, their options (every ``ShrinkConfig`` field) and the examples."""
from __future__ import annotations

import argparse
import dataclasses
import difflib
from typing import Any, NoReturn

from ..config import COMPENSATE, KINDS, NORMALIZE, ROUND_REFERENCES, SCOPES, TARGETS, ShrinkConfig

EXAMPLES = """\
examples:
  graphprune inspect timm:resnet50 --html resnet50-groups.html
  graphprune shrink timm:resnet50 --ratio 0.5 --out resnet50-half
  graphprune shrink torchvision:resnet18 --ratio 0.4 --input-shape 1,3,160,160 --out r18-small
  graphprune shrink hf:./my-llama --ratio 0.3 --prune heads mlp --uniform --round-to 8 --out llama-small
  graphprune shrink timm:vit_small_patch16_224 --ratio 0.3 --scorer activation \\
      --calibration batches.safetensors --compensate lstsq --out vit-small
  graphprune apply timm:resnet50 resnet50-half/plan.json --out resnet50-again
  graphprune inspect resnet50-half          # a folder written by shrink or apply
  graphprune prune-checkpoint ./llama-70b ./llama-70b-small --ratio 0.2 --uniform --round-to 64

MODEL is timm:NAME, torchvision:NAME (built from their configs, random weights, nothing is
downloaded), hf:FOLDER (a local Hugging Face folder), class:module:Class (an nn.Module built with
no arguments), or a folder written by graphprune shrink / apply / graphprune.save_pretrained.
graphprune never unpickles a file: a torch.save pickle is refused with how to convert it.
Outputs are folders of safetensors weights plus JSON (graphprune.load_pretrained reads them).
"""

MODEL_HELP = "timm:NAME, torchvision:NAME, hf:FOLDER, class:module:Class or a graphprune folder"
# help and choices of ShrinkConfig fields; a field missing here still gets a flag (see _config_flags)
OPTIONS: dict[str, dict[str, Any]] = {
    "target": dict(choices=TARGETS, help="what --ratio is a fraction of"),
    "scorer": dict(help="criterion ranking the units (graphprune.list_scorers()); data-aware ones need --calibration"),
    "round_to": dict(help="kept widths are multiples of N (a group narrower than N stays whole)"),
    "min_keep": dict(help="units every group keeps"),
    "ignore": dict(metavar="NAME", help="module FQNs (a prefix covers the subtree) or class names left unpruned"),
    "cost_power": dict(help="rank by score / cost**P; 0 = importance alone"),
    "tolerance": dict(help="how far the achieved ratio may be from --ratio"),
    "prune": dict(choices=KINDS, help="kinds of groups that may shrink"),
    "uniform": dict(help="equal widths in every layer, so a stock Hugging Face config describes the result"),
    "strict": dict(help="an op without a coupling rule, or a rule that fails, is an error instead of freezing what it touches"),
    "read_source": dict(help="let rules read the model's code for widths it computes (graphprune.source)"),
    "scope": dict(choices=SCOPES, help="rank units across groups (global) or remove the same fraction of each (local)"),
    "max_fraction": dict(help="no group loses more than this fraction of its units"),
    "normalize": dict(choices=NORMALIZE, help="per-group score normalisation for global ranking"),
    "compensate": dict(choices=tuple(c for c in COMPENSATE if c), help="refit what removed units fed (needs --calibration)"),
    "ridge": dict(help="the lstsq refit's damping for every layer (default: chosen per layer by cross-validation)"),
    "seed": dict(help="seed of the random criterion and of gradient projections"),
    "max_batches": dict(help="calibration batches read at most"),
    "layers": dict(help="remove exactly N whole blocks (with --prune layers ...)"),
    "block_scorer": dict(help="what ranks blocks: angular, bypass (need --calibration), branch_norm, auto"),
    "round_reference": dict(choices=ROUND_REFERENCES, help="with --steps > 1: judge later rounds against the "
                            "original model's outputs or the partly pruned model's own"),
    "recalibrate_bn": dict(help="re-estimate BatchNorm running statistics on --calibration after pruning "
                           "(after every round with --steps > 1)"),
}


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (exit code 2) rather than usage plus message."""

    flags: list[str] = []

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments:"):
            close = [m for a in message.split(":", 1)[1].split() if a.startswith("--")
                     for m in difflib.get_close_matches(a.split("=")[0], self.flags, n=1)]
            message += f" (did you mean {', '.join(close)}?)" if close else ""
        self.exit(2, f"graphprune: error: {message} (see {self.prog} --help)\n")


def build_parser(version: str) -> Parser:
    p = Parser(prog="graphprune", allow_abbrev=False, description="Structural pruning of any PyTorch model from its graph.",
               epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"graphprune {version}")
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    ins = sub.add_parser("inspect", help="print the groups of coupled channels; dump them as JSON, HTML or DOT",
                         epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    _model_args(ins)
    ins.add_argument("--limit", type=int, default=60, help="table rows to print (default 60)")
    ins.add_argument("--json", metavar="FILE", help="write every group with its index mappings")
    ins.add_argument("--html", metavar="FILE", help="write a self-contained page drawing every group")
    ins.add_argument("--dot", metavar="FILE", help="write the groups as a graphviz DOT graph")
    ins.add_argument("--strict", action="store_true", help=OPTIONS["strict"]["help"])
    shr = sub.add_parser("shrink", help="prune and save the smaller model as a folder",
                         epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    _model_args(shr)
    shr.add_argument("--ratio", type=float, required=True, help="fraction of parameters (or MACs) to remove")
    _config_flags(shr)
    shr.add_argument("--calibration", metavar="FILE", help="safetensors file of calibration samples (dim 0), "
                     "named like --inputs; split into batches of --batch-size")
    shr.add_argument("--batch-size", type=int, default=8, help="calibration batch size (default 8)")
    _out_args(shr)
    app = sub.add_parser("apply", help="apply a saved plan.json to a model and save the result",
                         epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    _model_args(app)
    app.add_argument("plan", help="a plan.json written by graphprune shrink or Plan.to_json")
    _out_args(app)
    ck = sub.add_parser("prune-checkpoint", help="prune a Hugging Face safetensors folder shard by shard, never "
                        "loading the model (planned on the meta device)", epilog=EXAMPLES,
                        formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    ck.add_argument("src", help="folder written by save_pretrained (safetensors weights)")
    ck.add_argument("dst", help="folder to write the pruned checkpoint to")
    how = ck.add_mutually_exclusive_group(required=True)
    how.add_argument("--plan", help="a plan.json made for this architecture (Plan.to_json)")
    how.add_argument("--ratio", type=float, help="plan here: scores read from the checkpoint tensor by tensor")
    ck.add_argument("--uniform", action="store_true", help=OPTIONS["uniform"]["help"])
    ck.add_argument("--round-to", type=int, default=1, help=OPTIONS["round_to"]["help"])
    ck.add_argument("--overwrite", action="store_true", help="write into DST even if it holds files")
    for sp in (ins, shr, app, ck):  # after the command too, where its error message sends the user
        sp.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    Parser.flags = sorted({f for sp in (p, ins, shr, app, ck) for f in sp._option_string_actions
                           if f.startswith("--")})
    return p


def _model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help=MODEL_HELP)
    given = p.add_mutually_exclusive_group()
    given.add_argument("--input-shape", metavar="N,C,H,W", help="example input of this shape (token ids for "
                       "text models); default: derived for timm and Hugging Face models")
    given.add_argument("--inputs", metavar="FILE", help="safetensors file of example inputs: keys 0, 1, ... are "
                       "positional arguments, other keys keyword arguments")
    p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                   help="import this module first (the module of a class:module:Class model you trust)")


def _out_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, metavar="FOLDER", help="folder to write (safetensors weights, "
                   "plan.json, report.json; an HF folder for HF models)")
    p.add_argument("--overwrite", action="store_true", help="write into --out even if it holds files")
    p.add_argument("--max-rows", type=int, default=20, help="report lines per section (default 20; 0 = all)")


def _config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per ShrinkConfig field, typed from its default; only flags given reach the config."""
    for f in dataclasses.fields(ShrinkConfig):
        if f.name in ("ratio", "version"):
            continue
        extra = dict(OPTIONS.get(f.name, {"help": f"ShrinkConfig.{f.name}"}))
        flag = "--" + f.name.replace("_", "-")
        if f.default is False:
            p.add_argument(flag, action="store_true", default=argparse.SUPPRESS, **extra)
        elif f.default is True:  # on by default: --no-NAME turns it off
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, **extra)
        elif isinstance(f.default, tuple):
            p.add_argument(flag, nargs="+", default=argparse.SUPPRESS, **extra)
        else:
            kind = "float" if "float" in str(f.type) else "int" if "int" in str(f.type) else "str"
            p.add_argument(flag, type={"float": float, "int": int, "str": str}[kind], default=argparse.SUPPRESS,
                           **extra)
