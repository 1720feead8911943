"""Trace stage helper, for models that do not trace whole: one line saying where tracing failed
and which submodules do trace (``shrink(..., submodules=)`` prunes those, see ``graphprune.partial``)."""
from __future__ import annotations

import torch
from torch import nn

from .compat import export_shims, quiet_export
from .inputs import Inputs, run_model
from .source import TORCH_DIR
from .trace import _eval_mode, _first_line


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
    seen = submodule_inputs(model, inputs)
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


def submodule_inputs(model: nn.Module, inputs: Inputs) -> dict[str, tuple[tuple, dict]]:
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
