"""Evaluation of liver-frcnn as the paper reports it.

Faster R-CNN: FROC on the test key slices by the DeepLesion rule (a box hits the lesion it
overlaps most when IoU >= `eval_iou`; each lesion counted once), sensitivity at 0.5-8 FP per
image.  Baseline regressors: the share of lesions whose one predicted box has IoU > 0.1
(the paper's accuracy).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torchvision.ops import box_iou

from ...errors import LesionDetectError
from ...metrics.froc import froc_summary
from ...metrics.matching import box_hits, match_detections
from ...progress import progress
from .data import KeySliceSamples, case_stacks
from .network import detect


def _key_slice_detections(model, config, cases, device, desc):
    """Yield (detected boxes, scores, true boxes) for every key slice of `cases`."""
    # the paper's measure is on the key slices, whichever slices the model trained on
    key_only = {**config, "train_slices": "key", "negative_slices": 0.0}
    for case in progress(cases, desc=desc, unit="case"):
        items = case_stacks(case, key_only)
        for start in range(0, len(items), int(config["slice_batch"])):
            part = items[start:start + int(config["slice_batch"])]
            for (boxes, scores), (_, truth) in zip(detect(model, np.stack([s for s, _ in part]), device), part):
                yield boxes, scores, truth


def froc_of(model, config, cases, device, desc="evaluating") -> dict[str, Any]:
    fp_scores, lesion_scores, n_images, top1_hits = [], [], 0, 0
    for boxes, scores, truth in _key_slice_detections(model, config, cases, device, desc):
        fp, hits = match_detections(scores, box_hits(boxes, truth, float(config["eval_iou"])))
        fp_scores += fp
        lesion_scores += hits
        n_images += 1
        if len(boxes):  # the baselines' metric on the best box: IoU > 0.1 with a lesion
            best = box_iou(torch.as_tensor(boxes[:1]), torch.as_tensor(truth)).max()
            top1_hits += int(best > float(config["baseline_iou"]))
    if n_images == 0:
        raise LesionDetectError("no key slices to evaluate")
    summary = froc_summary(fp_scores, lesion_scores, n_images)
    summary["top1_iou_0.1_sensitivity"] = top1_hits / n_images
    return summary


@torch.no_grad()
def regressor_metrics(model, config, cases, device) -> dict[str, Any]:
    hits, ious, errors = 0, [], []
    samples = KeySliceSamples(cases, config, train=False)
    for i in progress(range(len(samples)), desc="evaluating", unit="lesion"):
        image, target = samples[i]
        stack = samples.items[i][0]
        height, width = stack.shape[-2:]
        pred = model(image[None].to(device))[0].cpu()
        errors.append(float(((pred - target) ** 2).mean()))
        scale = torch.tensor([width, height, width, height], dtype=torch.float32)
        iou = float(box_iou((pred * scale)[None], (target * scale)[None])[0, 0])
        ious.append(iou)
        hits += int(iou > float(config["baseline_iou"]))
    if not samples:
        raise LesionDetectError("no key slices to evaluate")
    return {"sensitivity_iou_0.1": hits / len(samples), "mean_iou": float(np.mean(ious)),
            "mse": float(np.mean(errors)), "lesions": len(samples)}
