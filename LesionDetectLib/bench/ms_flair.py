"""ms-flair-fcn: seconds per 182 x 218 x 182 volume (with and without TTA) and per 448 x 512 slice,
training tiles per second.

The whole predict path, with the shipped model (or the untrained default when none ships)
and the paper's network in the same run, plus peak memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from ..methods.ms_flair_fcn import MSFlairFCN
from ..models import ModelCard, shipped_model_dir
from ..training import load_trained
from .measure import median_seconds, peak_rss_mb, train_samples_per_second

NAME = "ms-flair"


def _phantom(size_xyz, seed: int = 0) -> sitk.Image:
    """A brain-sized bright ellipsoid (MNI extent) with noise and a few plaques, 1 mm voxels."""
    rng = np.random.default_rng(seed)
    nx, ny, nz = size_xyz
    z, y, x = np.ogrid[:nz, :ny, :nx]
    semi = (max(nz * 0.38, 0.5), ny * 0.39, nx * 0.38)
    r = ((z - nz / 2) / semi[0]) ** 2 + ((y - ny / 2) / semi[1]) ** 2 + ((x - nx / 2) / semi[2]) ** 2
    volume = np.where(r < 1, 100.0, 0.0) + rng.normal(0, 5, (nz, ny, nx))
    volume[(r < 0.3) & (rng.random((nz, ny, nx)) < 0.002)] = 150.0
    return sitk.GetImageFromArray(volume.astype(np.float32))


def _train_rate(method: MSFlairFCN, config: dict, steps: int = 4) -> float:
    model = method.build_model(config)
    channels, tile, batch = 1 + 2 * int(config["context_slices"]), int(config["tile_size"]), int(config["batch_size"])
    images = torch.rand(batch, channels, tile, tile)
    labels = (torch.rand(batch, 1, tile, tile) > 0.9).to(torch.uint8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    return train_samples_per_second(method, model, (images, labels), optimizer, batch, steps)




def run(quick: bool = False) -> dict[str, Any]:
    method, cpu = MSFlairFCN(), torch.device("cpu")
    shipped = shipped_model_dir(method.name)
    if shipped is not None:
        _, model, card, _ = load_trained(shipped, device="cpu")
        model_name = card.model_id
    else:
        model = method.build_model(method.defaults).eval()
        card, model_name = ModelCard(method=method.name, modality=method.modality, config=dict(method.defaults)), \
            "untrained default (no shipped model)"
    paper_config = {**method.defaults, "architecture": "paper", "context_slices": 0, "tile_size": 50,
                    "batch_size": 100, "loss": "mse"}
    paper_card = ModelCard(method=method.name, modality=method.modality, config=paper_config,
                           thresholds=dict(card.thresholds))
    paper_model = method.build_model(paper_config).eval()
    if quick:  # the same measurements on a small head and slice, one repeat each
        volume, one_slice, repeats = _phantom((36, 44, 36)), _phantom((96, 80, 1), seed=1), 1
    else:
        volume, one_slice, repeats = _phantom((182, 218, 182)), _phantom((512, 448, 1), seed=1), 3
    steps = 1 if quick else 4
    results: dict[str, Any] = {"model": model_name, "torch_threads": torch.get_num_threads()}
    method.predict(model, card, one_slice, cpu)  # warm-up
    results["slice_s"] = round(median_seconds(lambda: method.predict(model, card, one_slice, cpu), repeats), 4)
    results["volume_s"] = round(median_seconds(lambda: method.predict(model, card, volume, cpu), min(2, repeats)), 3)
    # test-time augmentation (four in-plane flips, inference option `tta`): its cost
    results["volume_tta_s"] = round(median_seconds(lambda: method.predict(model, card, volume, cpu, tta=True), 1), 3)
    results["train_tiles_per_s"] = round(_train_rate(method, dict(card.config), steps), 1)
    results["paper_slice_s"] = round(median_seconds(lambda: method.predict(paper_model, paper_card, one_slice, cpu),
                                                    repeats), 4)
    results["paper_volume_s"] = round(median_seconds(lambda: method.predict(paper_model, paper_card, volume, cpu), 1),
                                      3)
    results["paper_train_tiles_per_s"] = round(_train_rate(method, paper_config, steps), 1)
    results["peak_rss_mb"] = peak_rss_mb()
    return results
