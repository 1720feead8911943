"""Surgery mechanics, checks after the cut: the pruned forward runs and gives the shapes it gave
before (naming the module that breaks), and a uniform plan's config still describes the weights."""
from __future__ import annotations

import warnings
from typing import Any

import torch  # noqa: F401 - failing_module's doctest
from torch import nn

from ..errors import SurgeryError
from ..inputs import Inputs, normalize_inputs, output_shapes, run_model
from ..plan import Plan


def as_inputs(example_inputs: Any) -> Inputs:
    return example_inputs if _is_inputs(example_inputs) else normalize_inputs(example_inputs)


def check_forward(model: nn.Module, plan: Plan, example_inputs: Any) -> Any:
    """The pruned model's outputs on the example inputs, once it runs and gives the original shapes."""
    inputs = as_inputs(example_inputs)
    try:
        outputs = run_model(model, inputs)
        shapes = output_shapes(outputs)
    except Exception as err:
        fqn = failing_module(model, err)
        fix = (f"A module computes a shape from a constant; add {fqn!r} to ignore=" if fqn else
               "The model's own forward computes a shape from a constant; leave out the kind of group it "
               "depends on with prune= (e.g. prune=('heads', 'mlp'))")
        failure = SurgeryError(f"the pruned model's forward fails in {fqn or '<root>'!r}, so the model was "
                               f"restored: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. "
                               f"{fix}")
        failure.module, failure.fix = fqn, fix
        raise failure from err
    if plan.output_shapes and [list(s) for s in shapes] != [list(s) for s in plan.output_shapes]:
        raise SurgeryError(f"the pruned model's output shapes {shapes} differ from the original "
                           f"{plan.output_shapes}; the model was restored")
    return outputs


def failing_module(model: nn.Module, err: BaseException) -> str | None:
    """FQN of the innermost submodule whose own code raised ``err`` (None if no module frame).

    >>> m = nn.Sequential(nn.Linear(2, 3))
    >>> try:
    ...     m(torch.zeros(1, 5))
    ... except RuntimeError as e:
    ...     failing_module(m, e)
    '0'
    """
    names = {id(mod): name for name, mod in model.named_modules()}
    found, tb = None, err.__traceback__
    while tb is not None:
        owner = tb.tb_frame.f_locals.get("self")
        found = names.get(id(owner), found)
        tb = tb.tb_next
    return found


def check_config(model: nn.Module) -> None:
    """With uniform widths the config alone must rebuild the model: stock from_pretrained relies on it."""
    from ..hub import config_mismatches, sync_derived_buffers_

    wrong = config_mismatches(model)
    if wrong:
        raise SurgeryError(f"uniform pruning left model.config unable to describe the weights "
                           f"({'; '.join(wrong[:3])}): {type(model.config).__name__} derives these shapes "
                           f"from fields that cannot take the new widths; pass round_to= (e.g. 8) so widths "
                           f"stay multiples the config accepts, exclude that kind with prune= (e.g. "
                           f"prune=('heads', 'mlp')), or use per-layer widths and graphprune.from_pretrained")
    changed = sync_derived_buffers_(model)
    if changed:
        warnings.warn(f"graphprune: {', '.join(changed)} are derived from the config at construction and not "
                      f"saved; they now hold the values a reload computes from the pruned config")


def _is_inputs(x: Any) -> bool:
    return isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], tuple) and isinstance(x[1], dict)
