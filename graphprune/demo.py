"""The README's demo: prune a timm ResNet-50, a timm ViT and a small HF model built locally, and
show what changed (parameters, MACs, CPU latency, a few of the groups found)."""
from __future__ import annotations

import statistics
import time

import torch
from rich.console import Console
from rich.table import Table
from torch import nn

import graphprune
from graphprune.inputs import run_model

console = Console()


def latency_ms(model: nn.Module, inputs, runs: int = 5) -> float:
    """Median wall time of one forward (batch 1, no autograd), after a warm-up call."""
    run_model(model, inputs)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run_model(model, inputs)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def show(name: str, model: nn.Module, ratio: float = 0.5, **options) -> None:
    """Prune ``model`` and print a before/after table plus a few of its groups."""
    console.rule(f"[bold]{name}[/bold]: shrink(model, {ratio})")
    start = time.perf_counter()
    groups = graphprune.find_groups(model)
    small, report = graphprune.shrink(model, ratio, return_report=True, **options)
    took = time.perf_counter() - start
    inputs = groups.traced.inputs
    table = Table("", "before", "after", "after / before")
    table.add_row("parameters", f"{report.params_before:,}", f"{report.params_after:,}",
                  f"{report.params_after / report.params_before:.3f}")
    table.add_row("MACs", f"{report.macs_before:,}", f"{report.macs_after:,}",
                  f"{report.macs_after / report.macs_before:.3f}")
    before_ms, after_ms = latency_ms(model, inputs), latency_ms(small, inputs)
    table.add_row("CPU latency (ms)", f"{before_ms:.1f}", f"{after_ms:.1f}", f"{after_ms / before_ms:.3f}")
    table.add_row("class", type(model).__name__, type(small).__name__, "same" if type(small) is type(model) else "DIFFERENT")
    console.print(table)
    console.print(f"{len(groups.prunable)} prunable groups, {len(groups.coupling.unsupported)} ops without a rule; "
                  f"analysis + pruning took {took:.1f} s. A few groups:")
    picks = _few(groups)
    console.print("\n".join(f"  [{g.id}] {g.structure:<16} {', '.join(f'{m.fqn}:{m.dim}' for m in g.members[:4])}"
                            f"{' ...' if len(g.members) > 4 else ''}" for g in picks))
    console.print("What changed:\n" + "\n".join(f"  {line}" for line in report.pruned[:6]))
    console.print("\n".join(n[0].upper() + n[1:] for n in report.notes if n.startswith("values ")))


def _few(groups: graphprune.Groups) -> list[graphprune.Group]:
    """One group of each unit kind (heads, conv groups, channels), then the widest others."""
    seen, out = set(), []
    for g in sorted(groups.prunable, key=lambda g: (-len(g.members), g.id)):
        if g.unit not in seen:
            seen.add(g.unit)
            out.append(g)
    return out + [g for g in groups.prunable if g not in out][: max(0, 4 - len(out))]


def main() -> None:
    import timm
    import transformers

    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    show("timm resnet50", timm.create_model("resnet50").eval())
    show("timm vit_small_patch16_224", timm.create_model("vit_small_patch16_224").eval())
    cfg = transformers.LlamaConfig(hidden_size=128, intermediate_size=344, num_hidden_layers=4, num_attention_heads=8,
                                   num_key_value_heads=4, vocab_size=512, max_position_embeddings=128, use_cache=False)
    show("HF LlamaForCausalLM (small config, GQA 8/4)", transformers.LlamaForCausalLM(cfg).eval(), 0.4)


if __name__ == "__main__":
    main()
