"""Command line: ``graphprune inspect | shrink | apply MODEL ...`` and ``graphprune prune-checkpoint SRC DST``
(``graphprune --help`` has examples).

Every argument and output path is checked before any work; an error is one line on stderr and
exit code 2 (``--debug`` shows the traceback). Models are read and written only as safetensors
folders (graphprune's or Hugging Face's), never as pickles.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import sys
import warnings
from typing import Iterator, Sequence

from torch import nn

from ..errors import ConfigError, GraphPruneError, TraceError
from ..sources import ModelSpec
from . import commands as c
from .parser import build_parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``graphprune`` command; returns the exit code."""
    from .. import __version__

    args = build_parser(__version__).parse_args(argv)
    try:
        with _one_line_warnings(args.debug):
            return VERBS[args.command](args)
    except KeyboardInterrupt:
        print("graphprune: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - the command line shows one line, never a traceback
        if args.debug:
            raise
        print(f"graphprune: error: {one_line(err)}", file=sys.stderr)
        return 2


def one_line(err: BaseException) -> str:
    """The error as one line; errors graphprune did not expect say how to see their traceback.

    >>> one_line(ValueError("bad\\nthing"))
    'ValueError: bad thing (unexpected: rerun with --debug for the traceback)'
    """
    text = " ".join(str(err).split())
    if isinstance(err, GraphPruneError):
        return text
    return f"{type(err).__name__}: {text} (unexpected: rerun with --debug for the traceback)"


@contextlib.contextmanager
def _one_line_warnings(debug: bool) -> Iterator[None]:
    """graphprune's warnings as one line each; other libraries' only with --debug."""
    def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 - warnings' signature
        text = " ".join(str(message).split())
        if text.startswith("graphprune: "):
            print(f"graphprune: warning: {text[len('graphprune: '):]}", file=sys.stderr)
        elif debug:
            print(f"warning: {category.__name__}: {text} ({os.path.basename(filename)}:{lineno})", file=sys.stderr)

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = show
        yield


def _inspect(args: argparse.Namespace) -> int:
    from ..groups import find_groups
    from ..progress import stages
    from ..report import groups_table
    from ..trace import trace

    spec = c.check_args(args)
    for path, flag in ((args.json, "--json"), (args.html, "--html"), (args.dot, "--dot")):
        c.check_out_file(path, flag)
    model = _load(spec, args)
    with stages("inspect", ["trace", "groups"]) as step:
        step("trace")
        traced = trace(model, c.example_inputs(args, model))
        step("groups")
        groups = find_groups(traced, strict=args.strict)
    print(groups_table(groups, limit=args.limit))
    for path, write in ((args.json, groups.to_json), (args.html, groups.to_html), (args.dot, groups.to_dot)):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)  # as check_out_file promised
            write(path)
            print(f"wrote {path}")
    return 0


def _shrink(args: argparse.Namespace) -> int:
    from ..api import shrink
    from ..config import ShrinkConfig
    from ..scores import needs_of

    spec = c.check_args(args)
    options = {f.name: getattr(args, f.name) for f in dataclasses.fields(ShrinkConfig)
               if f.name not in ("ratio", "version") and hasattr(args, f.name)}
    config = ShrinkConfig(ratio=args.ratio, **options)  # every option checked before the model is built
    if needs_of(config.scorer) and not args.calibration:
        raise ConfigError(f"--scorer {config.scorer} reads calibration data; pass --calibration FILE")
    if config.recalibrate_bn and not args.calibration:
        raise ConfigError("--recalibrate-bn re-estimates BatchNorm statistics on calibration data; pass --calibration FILE")
    batches = c.calibration_batches(args.calibration, args.batch_size) if args.calibration else None
    model = _load(spec, args)
    small, report = shrink(model, args.ratio, example_inputs=c.example_inputs(args, model), calibration=batches,
                           return_report=True, **options)
    _save(small, spec, args, report.plan)
    report.to_json(os.path.join(args.out, "report.json"))
    print(report.format(max_rows=args.max_rows or None))
    print(f"saved {args.out} (weights, plan.json, report.json)")
    return 0


def _apply(args: argparse.Namespace) -> int:
    from ..inputs import default_inputs
    from ..plan import Plan, count_params
    from ..surgery import apply_plan_

    spec = c.check_args(args)
    plan = Plan.from_json(args.plan)  # a bad plan file fails here, before the model is built
    model = _load(spec, args)
    inputs = c.example_inputs(args, model)
    if inputs is None:
        with contextlib.suppress(TraceError):
            inputs = default_inputs(model)  # check the forward when graphprune can derive inputs
    before = count_params(model)
    apply_plan_(model, plan, inputs)
    _save(model, spec, args, plan)
    print(f"parameters {before:,} -> {count_params(model):,}; saved {args.out}"
          f"{'' if inputs is not None else ' (forward not checked: pass --input-shape or --inputs)'}")
    return 0


def _load(spec: ModelSpec, args: argparse.Namespace) -> nn.Module:
    c.import_modules(args.imports)
    try:
        return spec.build(allow_import=spec.source == "class").eval()  # class:...: typed by the user
    except TypeError as err:  # the constructor wants arguments the command line cannot give
        if spec.source != "class":
            raise
        raise ConfigError(f"cannot build {spec}: {err}; the command line builds a class without arguments: give "
                          f"the class defaults, or build the model in Python and call graphprune.shrink") from err


def _save(model: nn.Module, spec: ModelSpec, args: argparse.Namespace, plan: object) -> None:
    from ..saving import read_saved, save_pretrained
    from ..sources import folder_kind

    base = spec if spec.source in ("timm", "torchvision", "class") else None
    if spec.source == "folder" and folder_kind(spec.name) == "graphprune":
        base = read_saved(spec.name)[1]  # pruned again: still rebuilt from the original base
    save_pretrained(model, args.out, base=base, plan=plan)


def _prune_checkpoint(args: argparse.Namespace) -> int:
    from ..checkpoint import plan_checkpoint, prune_checkpoint
    from ..config import ShrinkConfig
    from ..plan import Plan

    if not os.path.isfile(os.path.join(args.src, "config.json")):
        raise ConfigError(f"{args.src} is not a Hugging Face folder (no config.json); pass the folder "
                          f"save_pretrained wrote")
    c.check_out_dir(args.dst, args.overwrite)
    plan = (Plan.from_json(args.plan) if args.plan else
            plan_checkpoint(args.src, ShrinkConfig(ratio=args.ratio, uniform=args.uniform, round_to=args.round_to)))
    prune_checkpoint(args.src, plan, args.dst)
    plan.to_json(os.path.join(args.dst, "graphprune.plan.json"))
    print(f"parameters {plan.params_before:,} -> {plan.params_after:,} (-{plan.ratio:.1%}); wrote {args.dst}")
    return 0


VERBS = {"inspect": _inspect, "shrink": _shrink, "apply": _apply, "prune-checkpoint": _prune_checkpoint}
