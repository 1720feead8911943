"""Zoo tier for data-aware pruning: ``shrink(..., calibration=...)`` with each family of criteria and
both compensations, on timm and HF zoo models that pass the plain zoo today (smoke: run in CI)."""
from __future__ import annotations

import copy

import pytest
import timm
import torch

import graphprune
from graphprune.inputs import default_inputs, output_shapes, run_model

from .hf_archs import ARCHS, build

RECIPES = [("activation", "mean"), ("taylor", "lstsq"), ("fluctuation", None)]
TIMM = ["resnet18", "mobilenetv3_small_050", "vit_tiny_patch16_224"]
HF = [("llama", "LlamaForCausalLM"), ("bert", "BertModel"), ("mixtral", "MixtralForCausalLM")]


def _batches(model, n: int = 3):
    args, kwargs = default_inputs(model)
    g = torch.Generator().manual_seed(0)
    if kwargs:  # token ids: fresh ones in the model's vocabulary
        vocab = model.config.vocab_size
        return [{**kwargs, **{k: torch.randint(0, vocab, v.shape, generator=g) for k, v in kwargs.items()
                              if k.endswith("input_ids")}} for _ in range(n)]
    return [torch.randn(2, *args[0].shape[1:], generator=g) for _ in range(n)]


def _check(model, small, report, scorer: str, compensate) -> None:
    inputs = default_inputs(model)
    assert type(small) is type(model)
    assert output_shapes(run_model(small, inputs)) == output_shapes(run_model(model, inputs))
    assert abs(report.ratio - 0.3) <= 0.05
    assert (report.criterion, report.compensate, report.calibration_batches) == (scorer, compensate, 3)
    assert f"criterion {scorer}" in str(report)


@pytest.mark.smoke
@pytest.mark.timm
@pytest.mark.timeout(300)
@pytest.mark.parametrize("scorer,compensate", RECIPES)
@pytest.mark.parametrize("name", TIMM)
def test_timm_with_calibration(name: str, scorer: str, compensate) -> None:
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    small, report = graphprune.shrink(model, 0.3, calibration=_batches(model), scorer=scorer,
                                      compensate=compensate, return_report=True, tolerance=0.05)
    _check(model, small, report, scorer, compensate)


@pytest.mark.smoke
@pytest.mark.hf
@pytest.mark.timeout(300)
@pytest.mark.parametrize("scorer,compensate", RECIPES)
@pytest.mark.parametrize("arch,cls", HF, ids=[c for _, c in HF])
def test_hf_with_calibration(arch: str, cls: str, scorer: str, compensate) -> None:
    model = build(next(a for a in ARCHS if a.name == arch), cls)
    small, report = graphprune.shrink(model, 0.3, calibration=_batches(model), scorer=scorer,
                                      compensate=compensate, return_report=True, tolerance=0.05)
    _check(model, small, report, scorer, compensate)
    if scorer == "taylor" and "Causal" in cls:
        assert report.plan.config["calibration"]["loss"] == "the model's own loss"


@pytest.mark.smoke
@pytest.mark.timm
@pytest.mark.timeout(300)
@pytest.mark.parametrize("name", TIMM[:2])
def test_timm_recalibrates_batch_norm_every_round(name: str) -> None:
    """recalibrate_bn=True on real BatchNorm CNNs, in 2 rounds: every BatchNorm ends with the
    statistics the pruned model gives on the batches, and the report counts them all."""
    torch.manual_seed(0)
    model = timm.create_model(name).eval()
    batches = _batches(model)
    small, report = graphprune.shrink(model, 0.3, calibration=batches, scorer="activation", steps=2,
                                      recalibrate_bn=True, return_report=True, tolerance=0.05)
    bns = [m for m in small.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    again = graphprune.recalibrate_bn_(copy.deepcopy(small), batches)
    fitted = [m for m in again.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and all(torch.allclose(a.running_var, b.running_var) for a, b in zip(bns, fitted))
    assert f"BatchNorm running statistics of {len(bns)} layers re-estimated" in "\n".join(report.notes)
