"""Inputs of bone-scan-cls: planar scintigrams as min-max normalised tensors, and the labelled
image sets training draws from (with the paper's augmentations).

A scintigram of any size is scaled to the network's `input_size` (rows, columns) after
min-max normalisation to [0, 1] (the paper's pre-processing); the activation map is scaled
back onto the image's own grid.  Augmentation (training only, torchvision v2): random zoom,
rotation, translation and shear in one affine transform, and horizontal flips.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F

from ...errors import input_error


def planar_array(image: sitk.Image, path=None) -> np.ndarray:
    """(rows, columns) float32 counts of a 2-D image or a one-slice volume."""
    array = sitk.GetArrayFromImage(image).astype(np.float32)
    if array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim != 2:
        raise input_error(path or "input", f"is a {image.GetDimension()}-D image of size {image.GetSize()}; "
                                           "bone-scan-cls reads planar scintigrams (2-D)")
    return array


def normalised(array: np.ndarray) -> np.ndarray:
    """Min-max normalisation to [0, 1] (a constant image becomes all zeros)."""
    lo, hi = float(array.min()), float(array.max())
    return ((array - lo) / (hi - lo) if hi > lo else np.zeros_like(array)).astype(np.float32)


def to_input(array: np.ndarray, input_size) -> torch.Tensor:
    """(1, rows, columns) network input of a planar image: normalised, resized (antialiased)."""
    x = torch.from_numpy(normalised(array))[None, None]
    size = (int(input_size[0]), int(input_size[1]))
    if tuple(x.shape[-2:]) != size:
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x[0].clamp_(0.0, 1.0)


def augmentation(config: dict[str, Any]):
    """The paper's augmentations as one torchvision v2 pipeline on (1, rows, columns) tensors."""
    from torchvision.transforms import v2

    steps = [v2.RandomAffine(degrees=float(config["augment_rotation_deg"]),
                             translate=(float(config["augment_translate"]),) * 2,
                             scale=(1 - float(config["augment_zoom"]), 1 + float(config["augment_zoom"])),
                             shear=float(config["augment_shear_deg"]))]
    if config["augment_flip"]:
        steps.append(v2.RandomHorizontalFlip(0.5))
    return v2.Compose(steps)


class ScanSet(torch.utils.data.Dataset):
    """Labelled network inputs held in memory: (image (1, rows, columns), label, weight).

    `weight` is the sample's class weight, so a batch's loss weighs the rare positives as
    much as all negatives together (`class_weights`)."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor, transform=None,
                 case_ids: list[str] | None = None):
        self.images, self.labels, self.weights, self.transform = images, labels, weights, transform
        self.case_ids = case_ids or []

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = self.images[i]
        if self.transform is not None:
            image = self.transform(image)
        return image, self.labels[i], self.weights[i]


def class_weights(labels: np.ndarray, balance: str) -> dict[int, float]:
    """Per-class sample weights: "loss" makes both classes weigh half of the loss whatever their
    counts (weights mean 1 over the set); "none" weighs every sample 1."""
    if balance == "none":
        return {0: 1.0, 1: 1.0}
    if balance != "loss":
        raise ValueError(f"unknown balance {balance!r}; use loss or none")
    n, positives = len(labels), int(np.sum(labels))
    if positives in (0, n):
        return {0: 1.0, 1: 1.0}
    return {0: n / (2.0 * (n - positives)), 1: n / (2.0 * positives)}
