"""liver-frcnn: seconds per 512 x 512 CT slice, per volume and per training step, peak memory.

The default ResNet-50 Faster R-CNN: the shipped model when there is one, else an untrained
network (which keeps more proposals than a trained one, so its timings are an upper bound).
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from ..methods.liver_frcnn import DEFAULTS, LiverFasterRCNN, detect
from ..methods.liver_frcnn.slices import stacks
from ..models import ModelCard, shipped_model_dir
from ..training import load_trained
from .measure import median_seconds, peak_rss_mb

NAME = "liver-frcnn"

# a small detector on small slices: the same code path in seconds (the default test suite)
QUICK = {"backbone": "resnet18", "image_size": 128, "anchor_sizes": [8, 12, 16, 24, 48]}


def run(quick: bool = False) -> dict[str, Any]:
    if quick:
        return benchmark(QUICK, slices=2, repeats=1)
    return benchmark()


def benchmark(config: dict[str, Any] | None = None, slices: int = 8, repeats: int = 3) -> dict[str, Any]:
    """Speed and memory of the default ResNet-50 Faster R-CNN on 512 x 512 CT slices: median
    seconds per slice (inference), per `slices`-slice volume (streamed inference with linking),
    per training step (batch of 2 slices with 2 boxes each), and peak resident memory.
    Uses the shipped model when there is one, else an untrained network (which keeps more
    proposals than a trained one, so its timings are an upper bound)."""
    shipped = shipped_model_dir("liver-frcnn") if config is None else None
    config = {**DEFAULTS, **(config or {})}
    device = torch.device("cpu")
    if shipped is not None:
        _, model, card, _ = load_trained(shipped, device="cpu")
    else:
        torch.manual_seed(0)
        model = LiverFasterRCNN().build_model(config).eval()
        card = ModelCard(method="liver-frcnn", modality="CT", config=config, thresholds={"score": 0.5})
    rng = np.random.default_rng(0)
    size = int(config["image_size"])
    volume = rng.normal(40, 30, size=(slices, size, size)).astype(np.float32)
    volume[:, size // 3:size // 3 + 40, size // 2:size // 2 + 40] = -20  # one dark "lesion"
    image = sitk.GetImageFromArray(volume)
    image.SetSpacing((0.8, 0.8, 2.5))

    one = next(stacks(volume, [slices // 2], 1.0, config["window"], 1))[1]
    detect(model, one, device)  # warm-up
    slice_s = median_seconds(lambda: detect(model, one, device), repeats)
    predictor = LiverFasterRCNN()
    volume_s = median_seconds(lambda: predictor.predict(model, card, image, device, threshold=0.5), repeats)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=1e-4, momentum=0.9)
    batch = ([torch.from_numpy(one[0]).float() / 255] * 2,
             [{"boxes": torch.tensor([[200.0, 170, 240, 210], [100, 100, 130, 126]]) * (size / 512),
               "labels": torch.ones(2, dtype=torch.int64)}] * 2)

    def step():
        loss = predictor.batch_loss(model, batch, device)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    step()  # warm-up
    train_step_s = median_seconds(step, repeats)
    return {
        "slice_s": round(slice_s, 3),
        "volume_s": round(volume_s, 3),
        "volume_slices": slices,
        "train_step_s": round(train_step_s, 3),
        "peak_rss_mb": peak_rss_mb(),
        "backbone": config["backbone"],
        "image_size": size,
        "model": "shipped" if shipped is not None else "untrained",
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
    }
