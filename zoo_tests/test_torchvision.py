"""torchvision tier: ``shrink(m, 0.5)`` and the oracle on torchvision's classifiers, built with random
weights; Faster R-CNN, which does not trace whole, through ``submodules=``."""
from __future__ import annotations

import time
import warnings

import pytest
import torch

import graphprune
from graphprune.inputs import output_shapes, run_model
from graphprune.testing import assert_prune_matches

torchvision = pytest.importorskip("torchvision")

RATIO, TOLERANCE = 0.5, 0.01
MODELS = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "vit_b_16", "swin_t", "convnext_tiny",
          "regnet_y_400mf", "shufflenet_v2_x1_0", "googlenet", "densenet121", "squeezenet1_0", "mnasnet0_5"]
# measured on the shared 2-core dev machine (under load): vit_b_16 51 s, swin_t 35 s (shrink and oracle);
# the other ten and the detector 232 s together. CI runs those (`not slow`), `make zoo` all of them
SLOW = {"vit_b_16", "swin_t"}


def _build(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # googlenet's init_weights notice
        return torchvision.models.get_model(name, weights=None).eval()


def _param(name: str):
    marks = [pytest.mark.torchvision, pytest.mark.timeout(600 if name in SLOW else 300)]
    return pytest.param(name, marks=marks + ([pytest.mark.slow] if name in SLOW else []), id=name)


@pytest.mark.parametrize("name", [_param(n) for n in MODELS])
def test_shrink_half_and_oracle(name: str, zoo_case: dict) -> None:
    zoo_case.update(source="torchvision", family=name, model=name)
    torch.set_num_threads(1)
    model, x = _build(name), torch.randn(1, 3, 224, 224)
    start = time.perf_counter()
    before = output_shapes(run_model(model, ((x,), {})))
    small, report = graphprune.shrink(model, RATIO, example_inputs=x, return_report=True)
    n0, n1 = graphprune.count_params(model), graphprune.count_params(small)
    zoo_case.update(params_before=n0, params_after=n1, ratio=1 - n1 / n0)
    assert type(small) is type(model) and output_shapes(run_model(small, ((x,), {}))) == before
    assert (report.params_before, report.params_after) == (n0, n1)
    assert abs(zoo_case["ratio"] - RATIO) <= TOLERANCE, f"removed {zoo_case['ratio']:.4f} of the parameters"
    assert not report.left_out, f"left unpruned: {report.left_out}"
    result = assert_prune_matches(model, x, fraction=0.3, tol=1e-4)
    zoo_case["oracle"] = f"exact ({result.groups_checked} groups, max rel diff {result.max_rel_diff:.1e})"
    assert result.groups_checked >= 5
    zoo_case["seconds"] = round(time.perf_counter() - start)


@pytest.mark.torchvision
@pytest.mark.timeout(600)
def test_faster_rcnn_prunes_its_backbone_through_submodules(zoo_case: dict) -> None:
    zoo_case.update(source="torchvision", family="detection", model="fasterrcnn_mobilenet_v3_large_fpn")
    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_fpn(
        weights=None, weights_backbone=None, num_classes=5).eval()
    images = [torch.rand(3, 256, 256)]
    with pytest.raises(graphprune.TraceError) as err:
        graphprune.trace(model, (images,))
    message = str(err.value)
    assert "\n" not in message and "batched_nms" in message and "submodules=('backbone',)" in message
    small = graphprune.shrink(model, RATIO, example_inputs=(images,), submodules=("backbone",))
    n0, n1 = graphprune.count_params(model.backbone), graphprune.count_params(small.backbone)
    zoo_case.update(params_before=graphprune.count_params(model), params_after=graphprune.count_params(small),
                    ratio=1 - graphprune.count_params(small) / graphprune.count_params(model), oracle="backbone only")
    assert abs(1 - n1 / n0 - RATIO) <= TOLERANCE
    with torch.no_grad():
        (detections,) = small(images)
    boxes, labels, scores = detections["boxes"], detections["labels"], detections["scores"]
    assert boxes.dim() == 2 and boxes.shape[1] == 4 and labels.shape == scores.shape == boxes.shape[:1]
    assert small.roi_heads.box_head.fc6.weight.shape == model.roi_heads.box_head.fc6.weight.shape
