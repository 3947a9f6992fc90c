"""spine-mtl: seconds per slice and per 512 x 512 x 100 CT, training slices per second, peak memory.

The whole predict path (spine centres, crops with bone-area extraction, network, the
built-in vertebra split, the vote) with the shipped model, or the untrained default when none
ships, on a synthetic spine CT of 512 x 512 x 100 at 0.6 x 0.6 x 2.5 mm (quick: 128 x 128 x
16); and the network alone per slice, beside the paper's DenseNet121 at 224 px on the same
slices (the ratio is the speed-up of the CPU-sized default over the paper's network).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

from ..methods.spine_mtl import SpineMTL
from ..methods.spine_mtl.network import PAPER_DENSENET
from ..models import ModelCard, shipped_model_dir
from ..training import load_trained
from .measure import median_seconds, peak_rss_mb, train_samples_per_second

NAME = "spine-mtl"
QUICK_NETWORK = {"blocks": [1, 1, 1, 1], "growth_rate": 4, "init_features": 8, "input_size": 32}


def _ct(slices: int, size: int) -> sitk.Image:
    """A synthetic spine CT of `slices` x `size` x `size` (the generator's full case, repeated
    along z to reach `slices`, and resampled in-plane for the quick run)."""
    from ..synth import make_case

    case = make_case("spine-ct", seed=0, index=0, size="full")
    array = sitk.GetArrayFromImage(case.image)
    array = np.concatenate([array] * int(np.ceil(slices / array.shape[0])))[:slices]
    if size != array.shape[1]:
        step = array.shape[1] // size
        array = array[:, ::step, ::step][:, :size, :size]
    image = sitk.GetImageFromArray(array)
    spacing = case.image.GetSpacing()
    image.SetSpacing((spacing[0] * 512 / size, spacing[1] * 512 / size, spacing[2]))
    image.SetOrigin(case.image.GetOrigin())
    return image


def run(quick: bool = False) -> dict[str, Any]:
    method, cpu = SpineMTL(), torch.device("cpu")
    shipped = shipped_model_dir(method.name)
    if shipped is not None and not quick:
        _, model, card, _ = load_trained(shipped, device="cpu")
    else:
        config = {**method.defaults, **(QUICK_NETWORK if quick else {})}
        model = method.build_model(config).eval()
        card = ModelCard(method=method.name, modality="CT", config=config, thresholds={})
    config = {**method.defaults, **card.config}
    slices, size, repeats = (16, 128, 1) if quick else (100, 512, 3)
    ct = _ct(slices, size)
    method.predict(model, card, ct, cpu)  # warm-up
    results: dict[str, Any] = {"model": card.model_id if shipped and not quick else "untrained default",
                               "torch_threads": torch.get_num_threads(), "ct_size": list(ct.GetSize())}
    results["ct_s"] = round(median_seconds(lambda: method.predict(model, card, ct, cpu), repeats), 3)
    results["per_slice_s"] = round(results["ct_s"] / slices, 4)
    batch = 8 if quick else 32
    x = torch.rand(batch, 1, int(config["input_size"]), int(config["input_size"]))
    with torch.no_grad():
        model(x)
        results["network_slice_ms"] = round(1000 * median_seconds(lambda: model(x), repeats) / batch, 2)
        paper_config = {**method.defaults, **(QUICK_NETWORK if quick else {**PAPER_DENSENET, "input_size": 224})}
        paper = method.build_model(paper_config).eval()
        xp = torch.rand(batch, 1, int(paper_config["input_size"]), int(paper_config["input_size"]))
        paper(xp)
        results["paper_network_slice_ms"] = round(1000 * median_seconds(lambda: paper(xp), repeats) / batch, 2)
    results["paper_over_default"] = float(f"{results['paper_network_slice_ms'] / results['network_slice_ms']:.3g}")
    results["train_slices_per_s"] = round(_train_rate(method, model, x), 1)
    results["peak_rss_mb"] = peak_rss_mb()
    return results


def _train_rate(method: SpineMTL, model, images: torch.Tensor) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    n = len(images)
    batch = (images, torch.randint(0, 4, (n,)), torch.randint(0, 3, (n,)), torch.ones(n), torch.ones(n))
    return train_samples_per_second(method, model, batch, optimizer, n)
