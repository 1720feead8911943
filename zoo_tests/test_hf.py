"""Hugging Face zoo: every architecture in hf_archs.py built from a small config, checked end to end."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

import graphprune
from graphprune.inputs import first_tensor, output_shapes, run_model
from graphprune.testing import zero_and_prune

from .hf_archs import Arch, build, cases

RATIO, TOLERANCE = 0.5, 0.01
# a check that starts a fresh interpreter costs ~7 s a case: these run it in `make test`, the rest in `make zoo`
SUBPROCESS_SMOKE = {"llama", "bert", "t5", "mixtral", "vit"}


def _params(check: str, slow: bool = False):
    def marks(arch: Arch):
        known = [pytest.mark.xfail(reason=arch.known[check], strict=True)] if check in arch.known else []
        tier = [pytest.mark.slow] if slow and arch.name not in SUBPROCESS_SMOKE else []
        return [pytest.mark.hf, pytest.mark.timeout(300), *known, *tier]
    return [pytest.param(a, c, id=f"{c}-{check}", marks=marks(a)) for a, c in cases()]


def _shrink(model, **options):
    try:
        return graphprune.shrink(model, RATIO, return_report=True, **options)
    except graphprune.PlanError as err:  # tiny models can be dominated by embeddings: honest, named limit
        assert "largest reachable ratio is" in str(err), err
        pytest.skip(f"PlanError: {err}")


@pytest.mark.parametrize("arch,cls", _params("shrink"))
def test_shrink_half(arch: Arch, cls: str, zoo_case: dict) -> None:
    zoo_case.update(source="hf", family=arch.name, model=cls)
    model = build(arch, cls)
    inputs = graphprune.find_groups(model).traced.inputs
    before = output_shapes(run_model(model, inputs))
    small, report = _shrink(model)
    n0, n1 = graphprune.count_params(model), graphprune.count_params(small)
    zoo_case.update(params_before=n0, params_after=n1, ratio=1 - n1 / n0)
    assert type(small) is type(model)
    assert output_shapes(run_model(small, inputs)) == before
    assert abs(zoo_case["ratio"] - RATIO) <= TOLERANCE
    record = small.config.graphprune
    assert {f: list(t.shape) for f, t in small.state_dict().items() if f in record["shapes"]} == record["shapes"]


@pytest.mark.parametrize("arch,cls", _params("oracle"))
def test_oracle_heads_and_mlp(arch: Arch, cls: str) -> None:
    model = build(arch, cls)
    groups = graphprune.find_groups(model)
    kinds = {graphprune.plan.kind(g) for g in groups.prunable}
    assert {"heads", "mlp"} <= kinds, f"found only {kinds}"
    for kind in ("heads", "mlp"):
        zeroed, pruned, used = zero_and_prune(model, groups, kinds=(kind,))
        want = first_tensor(run_model(zeroed, groups.traced.inputs))
        got = first_tensor(run_model(pruned, groups.traced.inputs))
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max().clamp_min(1e-6)))


@pytest.mark.parametrize("arch,cls", [p for p in _params("generate") if p.values[0].decoder and (
    "Causal" in p.values[1] or p.values[1].endswith("LMHeadModel") or "Conditional" in p.values[1])])
def test_generate_same_tokens_after_pruning_zeroed_units(arch: Arch, cls: str) -> None:
    model = build(arch, cls)
    groups = graphprune.find_groups(model)
    zeroed, pruned, _ = zero_and_prune(model, groups)
    ids = torch.randint(3, 90, (1, 6), generator=torch.Generator().manual_seed(1))
    opts = dict(max_new_tokens=20, do_sample=False, min_new_tokens=20, pad_token_id=0)
    torch.testing.assert_close(pruned.generate(ids, **opts), zeroed.generate(ids, **opts), rtol=0, atol=0)


def _saved(arch: Arch, cls: str, uniform: bool, path):
    """(pruned model, its inputs, its output) after save_pretrained into ``path``."""
    model = build(arch, cls)
    options = dict(uniform=True, round_to=4) if uniform else {}
    try:  # the round trip is the point here: a ratio tiny models reach with config-describable widths
        small, _ = graphprune.shrink(model, 0.3, return_report=True, tolerance=0.05, **options)
    except graphprune.GraphPruneError as err:
        pytest.skip(f"{type(err).__name__}: {err}")
    inputs = graphprune.find_groups(model).traced.inputs
    small.save_pretrained(path)
    return small, inputs, first_tensor(run_model(small, inputs))


@pytest.mark.parametrize("arch,cls", _params("reload"))
@pytest.mark.parametrize("uniform", [False, True], ids=["per-layer", "uniform"])
def test_save_and_reload_give_identical_outputs(arch: Arch, cls: str, uniform: bool, tmp_path) -> None:
    small, inputs, want = _saved(arch, cls, uniform, tmp_path)
    again = graphprune.from_pretrained(str(tmp_path))
    # the same weights, possibly another attention kernel after loading: float noise only
    torch.testing.assert_close(first_tensor(run_model(again, inputs)), want, rtol=1e-5, atol=1e-6)
    if uniform:
        assert graphprune.config_mismatches(small) == []


@pytest.mark.parametrize("arch,cls", _params("stock-load", slow=True))
def test_stock_transformers_loads_uniform_folder(arch: Arch, cls: str, tmp_path) -> None:
    _, inputs, want = _saved(arch, cls, True, tmp_path)
    _stock_load_matches(cls, tmp_path, inputs, want)


def _stock_load_matches(cls: str, path, inputs, want: torch.Tensor) -> None:
    """A fresh interpreter that never imports graphprune loads the folder with stock transformers."""
    torch.save((inputs, want), path / "expected.pt")
    script = textwrap.dedent(f"""
        import sys, torch, transformers
        (args, kwargs), want = torch.load({str(path / 'expected.pt')!r}, weights_only=False)
        model = transformers.{cls}.from_pretrained({str(path)!r}).eval()
        with torch.no_grad():
            out = model(*args, **kwargs)
        got = out if isinstance(out, torch.Tensor) else next(v for v in out.values() if isinstance(v, torch.Tensor))
        assert "graphprune" not in sys.modules
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("arch,cls", [p for p in _params("static-cache") if "CausalLM" in p.values[1]])
def test_static_cache_serves_per_layer_widths(arch: Arch, cls: str) -> None:
    """Per-layer widths leave layers with different key/value head counts; a static cache (what
    compiled serving uses) must still give the dynamic cache's tokens."""
    small, _ = _shrink(build(arch, cls))
    ids = torch.randint(3, 90, (1, 6), generator=torch.Generator().manual_seed(1))
    opts = dict(max_new_tokens=12, do_sample=False, min_new_tokens=12, pad_token_id=0, use_cache=True)
    torch.testing.assert_close(small.generate(ids, cache_implementation="static", **opts),
                               small.generate(ids, **opts), rtol=0, atol=0)
