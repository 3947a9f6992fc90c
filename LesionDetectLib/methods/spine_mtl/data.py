"""Inputs of spine-mtl: axial CT slices cropped around the spine, with the bone area extracted.

The paper crops each 512 x 512 slice to 224 x 224 around the bone found by an HU threshold.
Here the crop is physical, so it works for any field of view and pixel spacing: a square of
`crop_mm` around the spine, resampled to `input_size` pixels, anterior up and the patient's
right on the left whatever the stored orientation (the crop grid is laid out in LPS and
mapped into each slice through the image's direction).

Where the spine is (`spine_centres`): bone is HU >= `bone_hu`.  Across the slices the spinal
column is the bone that is there in almost every slice near the body's left-right middle
(ribs, sternum, pelvis and arms come and go or lie lateral), so the peak of the smoothed bone
occupancy, weighted towards the body's midline, is the column's centre for the volume.  Each
slice then takes the centroid of the bone within `centre_radius_mm` of it (the vertebra as
it is in that slice), smoothed along z with a running median.

Bone-area extraction ("threshold extraction", the paper's ref. [3]): inside the crop, bone
(HU >= `bone_hu`) is closed, hole-filled (so lytic lesions inside a vertebra stay in) and
dilated by `bone_margin_mm`; the HU window [`window`] scaled to [0, 1] is kept there and set
to 0 elsewhere, so soft tissue does not dilute the fine bone cues.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy import ndimage

from ...errors import input_error
from ...geometry import Geometry

BONE_QUALITY = ("normal", "blastic", "mixed", "lytic")
POSTEROLATERAL = ("normal", "unilateral", "bilateral")
# the posterolateral classes as the user reads them (and as `is_negative_class` knows "no ...")
PI_NAMES = {"normal": "no posterolateral involvement", "unilateral": "unilateral", "bilateral": "bilateral"}


def check_axial(image: sitk.Image, path=None) -> Geometry:
    """The geometry of an axial 3-D image; refuses 2-D and non-axial images (the slices'
    normal must be the patient's head-foot axis within 30 degrees)."""
    if image.GetDimension() != 3:
        raise input_error(path or "input", f"is a {image.GetDimension()}-D image; spine-mtl reads axial CT volumes")
    geometry = Geometry.of(image)
    normal = np.asarray(geometry.direction, float).reshape(3, 3)[:, 2]
    if abs(normal[2]) < np.cos(np.radians(30)):
        axis = "LPS"[int(np.argmax(np.abs(normal)))]
        raise input_error(path or "input", f"is not an axial CT: its slices are stacked along {axis} "
                                           f"(direction column {np.round(normal, 3).tolist()}); spine-mtl needs axial "
                                           "slices (resample it to an axial grid first)")
    return geometry


def axial_volume(image: sitk.Image, path=None) -> tuple[np.ndarray, Geometry]:
    """(HU array (z, y, x) float32, geometry) of an axial 3-D CT (`check_axial`)."""
    geometry = check_axial(image, path)
    return sitk.GetArrayFromImage(image).astype(np.float32), geometry


def _inplane(geometry: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """(2x2 matrix from in-plane index offsets (i, j) to LPS (x, y) mm, its z column (x, y))."""
    m = geometry.matrix
    return m[:2, :2], m[:2, 2]


def spine_centres(hu: np.ndarray, geometry: Geometry, config: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """((z, 2) LPS (x, y) mm of the spinal column's centre in every slice, (z,) bool: whether
    the slice holds the column (at least 1 cm^2 of bone near it); module docstring."""
    bone_hu, radius = float(config["bone_hu"]), float(config["centre_radius_mm"])
    sx, sy = geometry.spacing[0], geometry.spacing[1]
    bone = hu >= bone_hu
    body = hu > -300.0
    occupancy = ndimage.gaussian_filter(bone.mean(axis=0).astype(np.float32), sigma=(8.0 / sy, 8.0 / sx))
    columns = np.nonzero(body.any(axis=(0, 1)))[0]
    middle = (columns.min() + columns.max()) / 2 if len(columns) else hu.shape[2] / 2
    xs = (np.arange(hu.shape[2]) - middle) * sx
    occupancy = occupancy * np.exp(-0.5 * (xs / 30.0) ** 2)[None, :]
    if occupancy.max() <= 0:
        raise input_error("input", f"holds no bone (no voxel at or above {bone_hu:g} HU); spine-mtl needs a CT "
                                   "through the spine")
    j0, i0 = np.unravel_index(int(np.argmax(occupancy)), occupancy.shape)
    jj, ii = np.mgrid[0:hu.shape[1], 0:hu.shape[2]]
    near = ((jj - j0) * sy) ** 2 + ((ii - i0) * sx) ** 2 <= radius ** 2
    centres = np.empty((hu.shape[0], 2))
    found = np.zeros(hu.shape[0], bool)
    for k in range(hu.shape[0]):
        sel = bone[k] & near
        found[k] = sel.sum() * sx * sy >= 100.0  # at least 1 cm^2 of bone: this slice's vertebra
        centres[k] = (ii[sel].mean(), jj[sel].mean()) if found[k] else (i0, j0)
    if len(centres) >= 3:
        centres = ndimage.median_filter(centres, size=(min(5, len(centres) | 1), 1), mode="nearest")
    matrix, zcol = _inplane(geometry)
    lps = centres @ matrix.T + np.asarray(geometry.origin[:2]) + np.arange(hu.shape[0])[:, None] * zcol[None, :]
    return lps, found


def crop_slices(hu: np.ndarray, geometry: Geometry, centres: np.ndarray, config: dict[str, Any],
                slices: list[int] | None = None) -> torch.Tensor:
    """(n, 1, S, S) float32 network inputs of the chosen slices (default all): the `crop_mm`
    square around each slice's centre, resampled to S = `input_size` pixels, bone area kept."""
    slices = list(range(hu.shape[0])) if slices is None else list(slices)
    size, crop_mm = int(config["input_size"]), float(config["crop_mm"])
    if not slices:
        return torch.zeros((0, 1, size, size))
    step = crop_mm / size
    offsets = (np.arange(size) - (size - 1) / 2) * step
    matrix, zcol = _inplane(geometry)
    inverse = np.linalg.inv(matrix)
    grids = []
    for k in slices:
        # LPS (x, y) of every crop pixel: x (patient's left) along columns, y (posterior) down rows
        xy = np.stack(np.meshgrid(offsets, offsets, indexing="xy"), axis=-1) + centres[k]
        ij = (xy - np.asarray(geometry.origin[:2]) - k * zcol) @ inverse.T
        grids.append(np.stack([2 * ij[..., 0] / max(hu.shape[2] - 1, 1) - 1,
                               2 * ij[..., 1] / max(hu.shape[1] - 1, 1) - 1], axis=-1))
    volume = torch.from_numpy(hu[slices])[:, None]
    grid = torch.from_numpy(np.stack(grids).astype(np.float32))
    crops = F.grid_sample(volume, grid, mode="bilinear", padding_mode="border", align_corners=True)[:, 0].numpy()
    return torch.from_numpy(bone_area_input(crops, step, config))[:, None]


def bone_area_input(crops: np.ndarray, pixel_mm: float, config: dict[str, Any]) -> np.ndarray:
    """HU crops (n, S, S) -> [0, 1] windowed values inside the extracted bone area, 0 outside."""
    lo, hi = (float(v) for v in config["window"])
    scaled = np.clip((crops - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    if not config["bone_area"]:
        return scaled
    close = max(1, int(round(3.0 / pixel_mm)))
    grow = max(1, int(round(float(config["bone_margin_mm"]) / pixel_mm)))
    disk = ndimage.generate_binary_structure(2, 1)
    out = np.empty_like(scaled)
    for n, crop in enumerate(crops):
        area = ndimage.binary_closing(crop >= float(config["bone_hu"]), disk, iterations=close)
        area = ndimage.binary_dilation(ndimage.binary_fill_holes(area), disk, iterations=grow)
        out[n] = scaled[n] * area
    return out


def slice_targets(case) -> tuple[list[int], list[int], list[int], list[str]]:
    """(slice indices, bone-quality class ids, posterolateral class ids, vertebra names) of a
    case's labelled slices (dataset entry "slices", as the spine-ct generator writes it)."""
    entries = case.extra.get("slices")
    if not isinstance(entries, list) or not entries:
        raise input_error(case.image, f'case "{case.id}" has no per-slice labels ("slices": [{{"index", '
                                      '"vertebra", "bone_quality", "posterolateral"}, ...]) for spine-mtl')
    index, quality, side, vertebra = [], [], [], []
    for s in entries:
        try:
            index.append(int(s["index"]))
            quality.append(BONE_QUALITY.index(s["bone_quality"]))
            side.append(POSTEROLATERAL.index(s.get("posterolateral", "normal")))
            vertebra.append(str(s.get("vertebra", "")))
        except (KeyError, ValueError, TypeError):
            raise input_error(case.image, f'case "{case.id}" has a slice label that is not {{"index", '
                                          f'"bone_quality" in {list(BONE_QUALITY)}, "posterolateral" in '
                                          f'{list(POSTEROLATERAL)}}}: {s!r}') from None
    return index, quality, side, vertebra


class SliceSet(torch.utils.data.Dataset):
    """Labelled slice crops in memory: (image (1, S, S), bone quality id, posterolateral id,
    bone-quality class weight, posterolateral class weight).  Training augmentation: left-right
    flips (labels unchanged: unilateral stays unilateral), shifts of up to `augment_shift`
    pixels and a small intensity scaling."""

    def __init__(self, images: torch.Tensor, quality: torch.Tensor, side: torch.Tensor, augment: dict | None = None,
                 keys: list[tuple[str, int, str]] | None = None, weights: tuple[dict, dict] | None = None):
        self.images, self.quality, self.side, self.augment = images, quality, side, augment
        self.keys = keys or []  # (case id, slice index, vertebra) of each sample
        self.weights = weights or ({}, {})  # {class id: weight} of bone quality and of posterolateral

    def __len__(self) -> int:
        return len(self.quality)

    def __getitem__(self, i: int):
        image = self.images[i].float()
        if self.augment:
            if torch.rand(()) < 0.5:
                image = image.flip(-1)
            shift = int(self.augment["augment_shift"])
            if shift:
                dy, dx = (int(v) for v in torch.randint(-shift, shift + 1, (2,)))
                image = torch.roll(image, (dy, dx), dims=(-2, -1))
            image = image * (1 + float(self.augment["augment_intensity"]) * (2 * torch.rand(()) - 1))
        q, s = int(self.quality[i]), int(self.side[i])
        return image, self.quality[i], self.side[i], self.weights[0].get(q, 1.0), self.weights[1].get(s, 1.0)


def class_weights(labels: np.ndarray, classes: int, balance: str) -> dict[int, float]:
    """{class id: weight}: "loss" weighs every class present equally in the loss (n / (K n_c),
    mean 1 over the samples), so the rare mixed and posterolateral classes are learnt too;
    "none" weighs every sample 1."""
    if balance == "none":
        return {}
    if balance != "loss":
        raise ValueError(f"unknown class_balance {balance!r}; use loss or none")
    counts = np.bincount(np.asarray(labels, int), minlength=classes)
    present = int((counts > 0).sum())
    return {c: len(labels) / (present * int(n)) for c, n in enumerate(counts) if n > 0}
