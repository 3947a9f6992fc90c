"""bone-scan-cls: milliseconds per crop and per whole-body scan (with the activation map), training images per second.

The whole predict path (normalisation, network, Grad-CAM, map back onto the image, peaks)
with the shipped model, or the untrained default when none ships: one BS-80K-sized crop
(165 x 65), a batch of crops scored without maps, and a 1024 x 256 whole-body view read by
a network at that size; plus training steps per second and peak memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from ..methods.bone_scan_cls import BoneScanClassifier
from ..methods.bone_scan_cls.data import ScanSet
from ..models import ModelCard, shipped_model_dir
from ..training import load_trained
from .measure import median_seconds, peak_rss_mb, train_samples_per_second

NAME = "bone-scan-cls"


def _scan(rows: int, cols: int, seed: int) -> sitk.Image:
    rng = np.random.default_rng(seed)
    array = rng.poisson(40, (rows, cols)).astype(np.float32)
    array[rows // 3:rows // 3 + 8, cols // 2:cols // 2 + 8] += 400
    return sitk.GetImageFromArray(array)


def run(quick: bool = False) -> dict[str, Any]:
    method, cpu = BoneScanClassifier(), torch.device("cpu")
    shipped = shipped_model_dir(method.name)
    if shipped is not None and not quick:
        _, model, card, _ = load_trained(shipped, device="cpu")
    else:
        config = {**method.defaults, **({"compact_widths": [4, 8], "input_size": [40, 16]} if quick else {})}
        model = method.build_model(config).eval()
        card = ModelCard(method=method.name, modality="NM", config=config, thresholds={"image": 0.5})
    config = {**method.defaults, **card.config}
    repeats, batch = (2, 8) if quick else (20, 64)
    crop = _scan(165, 65, 0)
    method.predict(model, card, crop, cpu)  # warm-up
    results: dict[str, Any] = {"model": card.model_id if shipped and not quick else "untrained default",
                               "torch_threads": torch.get_num_threads()}
    results["crop_ms"] = round(1000 * median_seconds(lambda: method.predict(model, card, crop, cpu), repeats), 2)
    samples = ScanSet(torch.rand(batch, 1, *[int(v) for v in config["input_size"]]), torch.zeros(batch),
                      torch.ones(batch))
    method.scores(model, samples, config, cpu)
    results["crop_batched_ms"] = round(1000 * median_seconds(lambda: method.scores(model, samples, config, cpu),
                                                             max(1, repeats // 4)) / batch, 3)
    whole = _scan(1024 if not quick else 128, 256 if not quick else 32, 1)
    whole_card = ModelCard(method=method.name, modality="NM", thresholds=dict(card.thresholds),
                           config={**config, "input_size": [whole.GetSize()[1], whole.GetSize()[0]]})
    method.predict(model, whole_card, whole, cpu)
    results["whole_body_s"] = round(median_seconds(lambda: method.predict(model, whole_card, whole, cpu),
                                                   max(1, repeats // 4)), 3)
    results["train_images_per_s"] = round(_train_rate(method, model, config, batch), 1)
    results["peak_rss_mb"] = peak_rss_mb()
    return results


def _train_rate(method: BoneScanClassifier, model, config: dict, batch: int) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    images = torch.rand(batch, 1, *[int(v) for v in config["input_size"]])
    labels, weights = (torch.rand(batch) < 0.1).float(), torch.ones(batch)
    return train_samples_per_second(method, model, (images, labels, weights), optimizer, batch)
