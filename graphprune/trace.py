"""Stage 1, trace: model -> ATen-level torch.fx graph with parameters and nodes mapped to FQNs."""
from __future__ import annotations

import contextlib
import io
import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
from torch import fx, nn

from .compat import export_shims
from .errors import TraceError
from .inputs import Inputs, default_inputs, hf_trace_inputs, normalize_inputs, output_shapes, run_model
from .source import TORCH_DIR, helper_frames


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
    with _eval_mode(model):
        shapes = _reference_output(model, inputs)
        try:
            return _from_export(model, model, inputs, shapes, "torch.export", notes)
        except Exception as err:  # noqa: BLE001 - every export failure is retried via symbolic_trace
            first = err
        try:
            gm = fx.symbolic_trace(model)
            return _from_export(model, gm, inputs, shapes, "symbolic_trace+export", notes)
        except Exception as err:  # noqa: BLE001
            fallback = err
        raise TraceError(untraceable_message(model, inputs, first, fallback)) from first


def check_module(model: Any) -> None:
    """graphprune prunes a module; anything else (a state dict, a path) is refused by name.

    >>> check_module({"fc.weight": None})
    Traceback (most recent call last):
    ...
    graphprune.errors.TraceError: graphprune prunes an nn.Module, got an object of type dict (a state dict?): build the model and load the weights into it first (model.load_state_dict(state_dict)), then pass the model
    """
    if isinstance(model, nn.Module):
        return
    hint = " (a state dict?)" if isinstance(model, dict) else ""
    raise TraceError(f"graphprune prunes an nn.Module, got an object of type {type(model).__name__}{hint}: build the model and "
                     f"load the weights into it first (model.load_state_dict(state_dict)), then pass the model")


def untraceable_message(model: nn.Module, inputs: Inputs, err: BaseException, fallback: BaseException) -> str:
    """One line: the model, where tracing failed (file, line, function and module), the error, and
    the submodules that do trace (``submodules=`` prunes those alone)."""
    where = failure_site(model, err)
    parts = [f"cannot trace {type(model).__qualname__}: torch.export failed{where} with "
             f"{type(err).__name__}: {_first_line(err)[:200]}"]
    parts.append(f"symbolic_trace failed too ({type(fallback).__name__}: {_first_line(fallback)[:100]})")
    subs = traceable_submodules(model, inputs)
    if subs:
        shown = ", ".join(repr(s) for s in subs[:6]) + (", ..." if len(subs) > 6 else "")
        parts.append(f"these submodules trace: {shown}; prune them alone with "
                     f"shrink(model, ratio, submodules=({subs[0]!r},)) and leave the rest as it is")
    else:
        parts.append("no submodule traces on its own either; fix the data-dependent code at that line "
                     "or pass example_inputs= that avoid it")
    return "; ".join(parts)


def failure_site(model: nn.Module, err: BaseException) -> str:
    """' at boxes.py:86 in batched_nms (module 'rpn')': the innermost frame of the error outside
    torch, and the innermost module whose forward was running."""
    names = {id(mod): name for name, mod in model.named_modules()}
    fqn, frame = None, None
    tb = err.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if not code.co_filename.startswith((TORCH_DIR, "<")):
            frame = (code.co_filename.rsplit("/", 1)[-1], tb.tb_lineno, code.co_name)
        owner = tb.tb_frame.f_locals.get("self")
        fqn = names.get(id(owner), fqn) if isinstance(owner, nn.Module) else fqn
        tb = tb.tb_next
    out = f" at {frame[0]}:{frame[1]} in {frame[2]}" if frame else ""
    return out + (f" (module {fqn!r})" if fqn else "")


def traceable_submodules(model: nn.Module, inputs: Inputs, budget: int = 24) -> list[str]:
    """The largest submodules (with parameters) that trace on the inputs they receive in the
    model's forward, breadth first: a module that does not trace is searched for children that do."""
    seen = _submodule_inputs(model, inputs)
    found: list[str] = []
    queue = [name for name, _ in model.named_children()]
    while queue and budget > 0:
        fqn = queue.pop(0)
        mod = model.get_submodule(fqn)
        if next(mod.parameters(), None) is None or fqn not in seen:
            continue
        budget -= 1
        try:
            with torch.no_grad(), export_shims(), quiet_export():
                torch.export.export(mod, *seen[fqn], strict=False)
            found.append(fqn)
        except Exception:  # noqa: BLE001 - any failure: look inside
            queue += [f"{fqn}.{name}" for name, _ in mod.named_children()]
    return found


def _submodule_inputs(model: nn.Module, inputs: Inputs) -> dict[str, tuple[tuple, dict]]:
    """The arguments each submodule receives in the model's first call."""
    seen: dict[str, tuple[tuple, dict]] = {}
    hooks = [mod.register_forward_pre_hook(
        lambda m, args, kwargs, fqn=fqn: seen.setdefault(fqn, (args, kwargs)) and None, with_kwargs=True)
        for fqn, mod in model.named_modules() if fqn]
    try:
        with _eval_mode(model):
            run_model(model, inputs)
    except Exception:  # noqa: BLE001 - the caller already knows the model runs; nothing to add
        pass
    finally:
        for h in hooks:
            h.remove()
    return seen


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """torch.export prints the partial graph of a failed export on stderr (thousands of lines for
    a detector) and logs its classification; the error we raise says what matters. What an export
    that succeeds writes there (warnings) is passed on."""
    logger = logging.getLogger("torch.export")
    level, buffer = logger.level, io.StringIO()
    logger.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(buffer):
            yield
        sys.stderr.write(buffer.getvalue())
    finally:
        logger.setLevel(level)


def _reference_output(model: nn.Module, inputs: Inputs) -> tuple[tuple[int, ...], ...]:
    try:
        return tuple(output_shapes(run_model(model, inputs)))
    except Exception as err:  # noqa: BLE001
        raise TraceError(
            f"{type(model).__qualname__} does not run on the example inputs "
            f"({_describe(inputs)}): {type(err).__name__}: {_first_line(err)}; pass example_inputs= "
            f"that the model's forward accepts") from err


def _describe(inputs: Inputs) -> str:
    args, kwargs = inputs
    fmt = lambda v: f"Tensor{tuple(v.shape)}" if isinstance(v, torch.Tensor) else type(v).__name__
    return ", ".join([fmt(a) for a in args] + [f"{k}={fmt(v)}" for k, v in kwargs.items()])


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:300] if text else ""


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    # export in eval mode so batch norm uses running stats and dropout is a no-op
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


def _from_export(model: nn.Module, traced_obj: nn.Module, inputs: Inputs, shapes: Any, method: str,
                 notes: tuple[str, ...] = ()) -> Traced:
    args, kwargs = inputs
    # under no_grad a forward's own `torch.no_grad()` (HF rotary embeddings) is a no-op, so export
    # inlines it instead of hiding its ops in a wrap_with_set_grad_enabled submodule no rule can see
    with torch.no_grad(), export_shims(), helper_frames(model), quiet_export():
        ep = torch.export.export(traced_obj, args, kwargs, strict=False)
    # what the forward computes and drops (attention weights a caller discards) must not constrain pruning
    ep.graph_module.graph.eliminate_dead_code()
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


def _canonical_names(model: nn.Module) -> dict[str, str]:
    """Map every parameter/buffer name to the first name of the same tensor (tied weights)."""
    first: dict[int, str] = {}
    out: dict[str, str] = {}
    named = list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False))
    for name, t in named:
        out[name] = first.setdefault(id(t), name)
    return out
