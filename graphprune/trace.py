"""Stage 1, trace: model -> ATen-level torch.fx graph with parameters and nodes mapped to FQNs."""
from __future__ import annotations

import contextlib
import copy
import itertools
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import fx, nn
from torch.export.graph_signature import OutputKind
from torch.utils._pytree import tree_unflatten

from .compat import export_shims, quiet_export
from .errors import TraceError
from .inputs import Inputs, default_inputs, hf_trace_inputs, normalize_inputs, output_shapes, run_model
from .inputs import eval_mode as _eval_mode  # export in eval mode: batch norm on running stats, no dropout
from .source import helper_frames


@dataclass(frozen=True, eq=False)
class Traced:
    """A traced model: the ATen graph plus the maps every later stage needs.

    ``tensor_fqn`` maps placeholder node names to parameter/buffer FQNs (tied weights resolve to one
    canonical FQN, ``aliases`` lists the others); ``constants`` are lifted tensors we cannot slice.
    """

    model: nn.Module
    graph: fx.Graph
    inputs: Inputs
    tensor_fqn: dict[str, str]
    params: frozenset[str]
    aliases: dict[str, tuple[str, ...]]
    constants: frozenset[str]
    user_inputs: tuple[str, ...]
    output_shapes: tuple[tuple[int, ...], ...]
    method: str = "torch.export"
    notes: tuple[str, ...] = field(default=())

    def module_path(self, node: fx.Node) -> str:
        """The FQN of the innermost module that produced ``node`` ('' for the root)."""
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            return ""
        path = list(stack.values())[-1][0]
        return _clean_path(path)

    def where(self, node: fx.Node) -> str:
        """'node 'x' in blocks.0.attn, file.py:12' for error messages."""
        loc = f"node {node.name!r} in {self.module_path(node) or '<root>'}"
        trace = (node.meta.get("stack_trace") or "").strip().splitlines()
        lines = [ln.strip() for ln in trace if ln.strip().startswith("File ")]
        if lines:
            loc += f", {_short_file(lines[-1])}"
        return loc


def _clean_path(path: str) -> str:
    # export writes module paths as "L['self'].blocks[0].attn" in strict mode; normalise to FQN
    path = path.replace("L['self'].", "").replace("L['self']", "")
    return path.replace("[", ".").replace("]", "").replace("._modules", "").strip(".")


def _short_file(line: str) -> str:
    parts = line.split('"')
    if len(parts) < 3:
        return line
    fname = parts[1].rsplit("/", 1)[-1]
    lineno = parts[2].split(",")[1].strip().replace("line ", "") if "," in parts[2] else "?"
    return f"{fname}:{lineno}"


def trace(model: nn.Module, example_inputs: Any = None) -> Traced:
    """Trace ``model`` with ``torch.export`` (non-strict), falling back to ``symbolic_trace``.

    >>> import timm
    >>> t = trace(timm.create_model("resnet18"))
    >>> t.tensor_fqn["p_conv1_weight"], t.method
    ('conv1.weight', 'torch.export')
    """
    check_module(model)
    inputs = default_inputs(model) if example_inputs is None else normalize_inputs(example_inputs)
    inputs, notes = hf_trace_inputs(model, inputs)
    with _eval_mode(model), _state_kept(model):
        try:
            return _from_export(model, model, inputs, "torch.export", notes)
        except Exception as err:  # noqa: BLE001 - every export failure is retried via symbolic_trace
            first = err
        if not is_meta(model):
            check_runs(model, inputs)  # a model that does not run at all is told so plainly
        try:
            gm = fx.symbolic_trace(model)
            return _from_export(model, gm, inputs, "symbolic_trace+export", notes)
        except Exception as err:  # noqa: BLE001
            fallback = err
        from .untraceable import untraceable_message
        raise TraceError(untraceable_message(model, inputs, first, fallback)) from first


def check_module(model: Any) -> None:
    """graphprune prunes a module; anything else (a state dict, a path) is refused by name.

    >>> check_module({"fc.weight": None})
    Traceback (most recent call last):
    ...
    graphprune.errors.TraceError: graphprune prunes an nn.Module, got an object of type dict (a state dict?): build the model and load the weights into it first (model.load_state_dict(state_dict)), then pass the model
    """
    if isinstance(model, torch.jit.ScriptModule):
        # TorchScript keeps no Python forward to export, and its modules take no hooks or new tensors
        raise TraceError(f"graphprune prunes an eager nn.Module, got a TorchScript {type(model).__name__} "
                         f"(torch.jit.script or torch.jit.trace): pass the module before scripting it, and "
                         f"script the pruned one")
    if isinstance(model, nn.Module):
        return
    hint = " (a state dict?)" if isinstance(model, dict) else ""
    raise TraceError(f"graphprune prunes an nn.Module, got an object of type {type(model).__name__}{hint}: build the model and "
                     f"load the weights into it first (model.load_state_dict(state_dict)), then pass the model")


def aliases_of(model: nn.Module) -> dict[int, list[str]]:
    """Every name of each parameter and buffer, by tensor id (a tied weight has several)."""
    out: dict[int, list[str]] = {}
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False)):
        out.setdefault(id(t), []).append(name)
    return out


def is_meta(model: nn.Module) -> bool:
    """Whether the model holds tensors on the meta device (built to be analysed, not run).

    >>> with torch.device("meta"):
    ...     is_meta(nn.Linear(2, 2))
    True
    """
    return any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers()))


def check_runs(model: nn.Module, inputs: Inputs) -> None:
    """``TraceError`` when the unpruned model itself fails on the inputs (export runs on fake tensors,
    so a wrong dtype passes it), instead of blaming what pruning did."""
    try:
        run_model(model, inputs)
    except Exception as err:  # noqa: BLE001
        raise TraceError(
            f"{type(model).__qualname__} does not run on the example inputs "
            f"({_describe(inputs)}): {type(err).__name__}: {_first_line(err)}; pass example_inputs= "
            f"that the model's forward accepts") from err


def _describe(inputs: Inputs) -> str:
    args, kwargs = inputs
    fmt = lambda v: (f"Tensor{tuple(v.shape)}" + ("" if v.dtype == torch.float32 else f" {str(v.dtype)[6:]}")
                     if isinstance(v, torch.Tensor) else type(v).__name__)
    return ", ".join([fmt(a) for a in args] + [f"{k}={fmt(v)}" for k, v in kwargs.items()])


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else ""


@contextlib.contextmanager
def _state_kept(model: nn.Module) -> Iterator[None]:
    """Undo what tracing writes into the modules' own state: a forward that caches a tensor in eval
    mode (timm LeViT's attention biases, per device) would otherwise keep export's fake tensor."""
    saved = [(m, {k: v for k, v in vars(m).items() if not k.startswith("_")}) for m in model.modules()]
    contents = [(v, copy.copy(v)) for _, attrs in saved for v in attrs.values() if type(v) in (dict, list, set)]
    try:
        yield
    finally:
        for m, attrs in saved:
            for k in [k for k in vars(m) if not k.startswith("_") and k not in attrs]:
                delattr(m, k)
            m.__dict__.update(attrs)
        for container, before in contents:
            container.clear()
            container.update(before) if isinstance(container, (dict, set)) else container.extend(before)


def export_program(model: nn.Module, inputs: Inputs) -> torch.export.ExportedProgram:
    """``torch.export`` of the model in eval mode, as ``trace`` runs it, leaving the model as it was."""
    with _eval_mode(model), _state_kept(model):
        return _export(model, model, inputs)


def _export(model: nn.Module, traced_obj: nn.Module, inputs: Inputs) -> torch.export.ExportedProgram:
    args, kwargs = inputs
    # under no_grad a forward's own `torch.no_grad()` (HF rotary embeddings) is a no-op, so export
    # inlines it instead of hiding its ops in a wrap_with_set_grad_enabled submodule no rule can see
    with torch.no_grad(), export_shims(), helper_frames(model), quiet_export():
        return torch.export.export(traced_obj, args, kwargs, strict=False)


def _from_export(model: nn.Module, traced_obj: nn.Module, inputs: Inputs, method: str,
                 notes: tuple[str, ...] = ()) -> Traced:
    ep = _export(model, traced_obj, inputs)
    # what the forward computes and drops (attention weights a caller discards) must not constrain pruning
    ep.graph_module.graph.eliminate_dead_code()
    shapes = _output_shapes(ep)
    sig = ep.graph_signature
    canonical = _canonical_names(model)
    fqn_of = {**sig.inputs_to_parameters, **sig.inputs_to_buffers}
    tensor_fqn = {ph: canonical.get(fqn, fqn) for ph, fqn in fqn_of.items()}
    params = frozenset(canonical.get(f, f) for f in sig.inputs_to_parameters.values())
    aliases: dict[str, list[str]] = {}
    for name, canon in canonical.items():
        if name != canon:
            aliases.setdefault(canon, []).append(name)
    return Traced(
        model=model, graph=ep.graph_module.graph, inputs=inputs, tensor_fqn=tensor_fqn, params=params,
        aliases={k: tuple(v) for k, v in aliases.items()},
        constants=frozenset(sig.inputs_to_lifted_tensor_constants),
        user_inputs=tuple(sig.user_inputs), output_shapes=tuple(shapes), method=method, notes=tuple(notes))


def _output_shapes(ep: torch.export.ExportedProgram) -> list[tuple[int, ...]]:
    """Shapes of the model's outputs as a forward returns them, read from the traced graph (its
    fake values rebuilt into the output's structure), so no forward has to run."""
    nodes = {n.name: n for n in ep.graph.nodes}
    values = []
    for spec in ep.graph_signature.output_specs:
        if spec.kind == OutputKind.USER_OUTPUT:
            name = getattr(spec.arg, "name", None)
            values.append(nodes[name].meta.get("val") if name in nodes else getattr(spec.arg, "value", None))
    out = tree_unflatten(values, ep.call_spec.out_spec)
    return [tuple(int(n) for n in s) for s in output_shapes(out)]


def _canonical_names(model: nn.Module) -> dict[str, str]:
    """Map every parameter/buffer name to the first name of the same tensor (tied weights)."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    for name, t in named:
        out[name] = first.setdefault(id(t), name)
    return out
