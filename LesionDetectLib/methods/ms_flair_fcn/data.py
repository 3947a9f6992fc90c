"""Preprocessing and training samples of ms-flair-fcn.

Slices are taken along the image's axial direction whatever its storage order, resampled to
the model's spacing (ModelGrid, which also maps probabilities back onto the input's grid).
Intensities are divided by the median of the Otsu foreground (brain dominates it in raw and
skull-stripped FLAIR alike) or, with `normalisation: wm_peak`, by its white-matter peak; strong
intensity (gamma, contrast, bias field, blur, noise) and spatial (rotation, scaling) augmentation
of the tiles is optional (config augment_*).  Training tiles follow the paper: one tile centred on every 2-D
plaque, plus lesion-free tiles drawn by brightness x contrast (the areas that cause false
positives); tiles are cut once with a margin and randomly cropped and flipped per draw.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk
import torch

FLAIR_UPPER_SHARE_MIN = 0.05  # see flair_check


def axial_axis(image: sitk.Image) -> int:
    """The index axis (0=x, 1=y, 2=z) whose direction is closest to the patient's S axis."""
    direction = np.asarray(image.GetDirection(), dtype=float).reshape(3, 3)
    return int(np.argmax(np.abs(direction[2, :])))  # LPS row 2 = S component of each index axis


class ModelGrid:
    """An image brought to the model's slicing and spacing, and the way back to its grid."""

    def __init__(self, image: sitk.Image, config: dict[str, Any]):
        if image.GetDimension() != 3:
            raise ValueError("ms-flair-fcn works on 3-D volumes")
        self.original = image
        axis = axial_axis(image)
        self.order = [a for a in range(3) if a != axis] + [axis]
        permuted = sitk.PermuteAxes(image, self.order) if self.order != [0, 1, 2] else image
        target = float(config["spacing_mm"])
        spacing = list(permuted.GetSpacing())
        wanted = [target, target, target if int(config["context_slices"]) > 0 else spacing[2]]
        self.resampled = any(abs(s - w) > 0.02 * w for s, w in zip(spacing, wanted))
        if self.resampled:
            size = [max(1, int(round(n * s / w))) for n, s, w in zip(permuted.GetSize(), spacing, wanted)]
            self.reference = sitk.Image(size, sitk.sitkUInt8)
            self.reference.SetSpacing(wanted)
            self.reference.SetOrigin(permuted.GetOrigin())
            self.reference.SetDirection(permuted.GetDirection())
        else:
            self.reference = permuted
        self.permuted = permuted

    def image(self, image: sitk.Image, label: bool = False) -> np.ndarray:
        """An image on the input's grid (the input itself or its mask) as a model-grid array (z, y, x)."""
        if self.order != [0, 1, 2]:
            image = sitk.PermuteAxes(image, self.order)
        if self.resampled:
            image = sitk.Resample(image, self.reference, sitk.Transform(),
                                  sitk.sitkNearestNeighbor if label else sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        return sitk.GetArrayFromImage(image).astype(np.float32)

    def back(self, array: np.ndarray) -> np.ndarray:
        """A model-grid float array back on the input's grid (z, y, x)."""
        if not self.resampled and self.order == [0, 1, 2]:
            return array
        img = sitk.GetImageFromArray(np.ascontiguousarray(array, dtype=np.float32))
        img.CopyInformation(self.reference)
        if self.resampled:
            out = sitk.Resample(img, self.original, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        else:
            out = sitk.PermuteAxes(img, [int(i) for i in np.argsort(self.order)])
        return sitk.GetArrayFromImage(out)


def _otsu_foreground(volume: np.ndarray) -> np.ndarray:
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetInsideValue(0)
    otsu.SetOutsideValue(1)
    foreground = sitk.GetArrayFromImage(otsu.Execute(sitk.GetImageFromArray(volume))).astype(bool)
    if not foreground.any():
        foreground = volume > volume.min()
    return foreground


def histogram_peak(values: np.ndarray, bins: int = 256) -> float:
    """The mode of `values` (smoothed histogram between their 1st and 99th percentiles): in
    FLAIR the white-matter peak, white matter being the largest tissue of a brain or head."""
    from scipy.ndimage import gaussian_filter1d

    values = np.asarray(values, dtype=np.float32)
    if values.size == 0:
        return 0.0
    low, high = np.percentile(values, [1, 99])
    if not high > low:
        return float(np.median(values))
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    smooth = gaussian_filter1d(counts.astype(float), 3)
    k = int(np.argmax(smooth))
    return float(0.5 * (edges[k] + edges[k + 1]))


def normalise(volume: np.ndarray, mode: str = "median") -> tuple[np.ndarray, np.ndarray]:
    """(intensities / reference clipped to [0, 5], foreground mask), the foreground being the
    Otsu foreground of the volume (the brain of a skull-stripped scan, the head of a raw one).

    mode "median": the reference is the foreground median (the original recipe).
    mode "wm_peak": the reference is the white-matter peak, the mode of the foreground
    histogram (`histogram_peak`), so normal white matter lands at 1.0 whatever the scanner,
    the skull stripping and the lesion load (the median moves with both)."""
    volume = np.asarray(volume, dtype=np.float32)
    foreground = _otsu_foreground(volume)
    if mode not in ("median", "wm_peak"):
        raise ValueError(f"unknown normalisation {mode!r}; use median or wm_peak")
    scale = 0.0
    if foreground.any():
        values = volume[foreground]
        scale = float(np.median(values)) if mode == "median" else histogram_peak(values)
    if not np.isfinite(scale) or scale <= 0:
        scale = float(np.abs(volume).max()) or 1.0
    return np.clip(volume / scale, 0.0, 5.0), foreground


def flair_check(volume: np.ndarray, foreground: np.ndarray) -> dict[str, Any]:
    """Does a normalised volume (white-matter peak 1) look like FLAIR?  In FLAIR grey matter,
    plaques, scalp fat are brighter than white matter, so a good share of the foreground lies
    above the peak (`upper_share`: foreground fraction above 1.15x the peak; 0.08-0.35
    measured on the shared FLAIR cases, the raw scanner FLAIR and synthetic heads), while in
    T1 white matter is the brightest tissue and almost nothing lies above it.  Returns
    {"upper_share", "looks_like_flair", "warning"}.  Scale-invariant: `volume` may be scaled
    by any positive factor."""
    sub = (slice(None, None, 2),) * volume.ndim  # every 8th voxel is plenty for a histogram
    volume, foreground = volume[sub], foreground[sub]
    values = volume[foreground] if foreground.any() else volume.ravel()
    peak = histogram_peak(values) if values.size else 0.0
    upper = float(np.mean(values > 1.15 * peak)) if values.size and peak > 0 else 0.0
    ok = upper >= FLAIR_UPPER_SHARE_MIN
    warning = "" if ok else (
        f"the intensities do not look like FLAIR: only {100 * upper:.1f} % of the foreground is brighter than "
        f"white matter (FLAIR: {100 * FLAIR_UPPER_SHARE_MIN:.0f} % or more; grey matter and plaques are brighter "
        "than white matter in FLAIR, not in T1); check that the input is a FLAIR series - the lesion map is "
        "unreliable")
    return {"upper_share": round(upper, 4), "looks_like_flair": ok, "warning": warning}


def foreground_box(foreground: np.ndarray, margin: int) -> tuple[slice, slice, slice]:
    """The (z, y, x) bounding box of the foreground, widened in-plane by `margin` pixels."""
    if not foreground.any():
        return tuple(slice(0, n) for n in foreground.shape)
    box = []
    for axis, n in enumerate(foreground.shape):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.nonzero(foreground.any(axis=other))[0]
        pad = 0 if axis == 0 else margin
        box.append(slice(max(0, idx[0] - pad), min(n, idx[-1] + 1 + pad)))
    return tuple(box)


def slice_stack(volume: np.ndarray, z: np.ndarray | list[int], context: int) -> np.ndarray:
    """(len(z), 1 + 2*context, y, x): each slice with its neighbours (edges repeated)."""
    z = np.asarray(z)
    offsets = np.arange(-context, context + 1)
    idx = np.clip(z[:, None] + offsets[None, :], 0, volume.shape[0] - 1)
    return volume[idx]


class TileSet(torch.utils.data.Dataset):
    """Tiles cut with a margin, kept in memory; random crop + flips per draw when augmenting.

    With `draws` set, an epoch is that many random draws instead of one pass over the tiles
    (so the number of optimiser steps no longer depends on how many lesions the training
    cases happen to hold), and `lesion_fraction` of the draws are lesion tiles whatever
    their share of the stored tiles (lesion oversampling)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, tile: int, augment: bool, intensity: float,
                 draws: int | None = None, lesion_fraction: float | None = None, strong: dict | None = None):
        self.images, self.labels = images, labels
        self.tile, self.augment, self.intensity = tile, augment, intensity
        self.strong = {k: float(v) for k, v in (strong or {}).items() if v}  # see augment_tile
        self.draws, self.lesion_fraction = draws, lesion_fraction
        has_lesion = labels.reshape(len(labels), -1).any(axis=1) if len(labels) else np.zeros(0, bool)
        self.positive, self.negative = np.nonzero(has_lesion)[0], np.nonzero(~has_lesion)[0]

    def __len__(self) -> int:
        return len(self.images) if self.draws is None or not len(self.images) else int(self.draws)

    def _pick(self, i: int) -> int:
        if self.draws is None:
            return i
        if self.lesion_fraction is None or not len(self.positive) or not len(self.negative):
            pool = np.arange(len(self.images))
        else:
            pool = self.positive if np.random.rand() < self.lesion_fraction else self.negative
        return int(pool[np.random.randint(len(pool))])

    def __getitem__(self, i: int):
        i = self._pick(i)
        image, label = self.images[i], self.labels[i]
        margin = (image.shape[-1] - self.tile) // 2
        if self.augment and self.strong.get("spatial"):
            image, label = spatial_augment(image, label, self.strong["spatial"])
        if self.augment:
            oy, ox = np.random.randint(0, 2 * margin + 1, size=2)
        else:
            oy = ox = margin
        image = image[:, oy:oy + self.tile, ox:ox + self.tile]
        label = label[oy:oy + self.tile, ox:ox + self.tile]
        if self.augment:
            if np.random.rand() < 0.5:
                image, label = image[:, :, ::-1], label[:, ::-1]
            if np.random.rand() < 0.5:
                image, label = image[:, ::-1, :], label[::-1, :]
            if np.random.rand() < 0.5:
                image, label = image.transpose(0, 2, 1), label.T
            image = image * np.float32(1 + np.random.uniform(-self.intensity, self.intensity))
            if self.strong:
                image = intensity_augment(image, self.strong)
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(np.ascontiguousarray(label))[None]


def spatial_augment(image: np.ndarray, label: np.ndarray, amount: float) -> tuple[np.ndarray, np.ndarray]:
    """A random in-plane rotation (up to 45 x `amount` degrees) and scaling (1 +- 0.3 x
    `amount`) of a (channels, y, x) tile and its label, about the tile centre."""
    from scipy.ndimage import affine_transform

    angle = np.deg2rad(np.random.uniform(-45, 45) * amount)
    scale = 1 + np.random.uniform(-0.3, 0.3) * amount
    c, s_ = np.cos(angle), np.sin(angle)
    matrix = np.array([[c, -s_], [s_, c]]) / scale
    centre = (np.asarray(label.shape, float) - 1) / 2
    offset = centre - matrix @ centre
    out = np.stack([affine_transform(ch, matrix, offset, order=1, mode="constant", cval=0.0) for ch in image])
    lab = affine_transform(label.astype(np.float32), matrix, offset, order=1, mode="constant", cval=0.0) > 0.5
    return out.astype(np.float32), lab.astype(np.uint8)


def intensity_augment(image: np.ndarray, strong: dict) -> np.ndarray:
    """Scanner- and centre-like intensity changes of a normalised (white matter ~1) tile,
    each drawn independently:
        gamma: x -> x ** g, log g uniform in +-gamma (changes plaque and grey-matter contrast
               while white matter stays near 1);
        contrast: (x - 1) * c + 1 inside the tissue, c in 1 +- contrast;
        bias: a smooth multiplicative field (a random linear + quadratic ramp, +- bias);
        blur: with probability 0.3, an in-plane Gaussian blur of sigma up to `blur` pixels
              (thicker slices, other resolution);
        noise: Gaussian noise of standard deviation up to `noise`."""
    from scipy.ndimage import gaussian_filter

    image = np.asarray(image, dtype=np.float32)
    tissue = image > 0.05
    if strong.get("gamma"):
        g = np.float32(np.exp(np.random.uniform(-strong["gamma"], strong["gamma"])))
        image = np.power(np.clip(image, 0, None), g)
    if strong.get("contrast"):
        c = np.float32(1 + np.random.uniform(-strong["contrast"], strong["contrast"]))
        image = np.where(tissue, (image - 1) * c + 1, image)
    if strong.get("bias"):
        h, w = image.shape[-2:]
        yy, xx = np.meshgrid(np.linspace(-1, 1, h, dtype=np.float32), np.linspace(-1, 1, w, dtype=np.float32),
                             indexing="ij")
        a = np.random.uniform(-1, 1, 5).astype(np.float32)
        field = a[0] * yy + a[1] * xx + a[2] * yy * yy + a[3] * xx * xx + a[4] * xx * yy
        field = 1 + strong["bias"] * field / max(1e-6, float(np.abs(field).max()))
        image = image * field[None]
    if strong.get("blur") and np.random.rand() < 0.3:
        sigma = np.random.uniform(0.3, strong["blur"])
        image = np.stack([gaussian_filter(ch, sigma) for ch in image])
    if strong.get("noise"):
        image = image + np.random.normal(0, np.random.uniform(0, strong["noise"]), image.shape).astype(np.float32)
    return np.clip(image, 0.0, 5.0).astype(np.float32)


def _crop(stack: np.ndarray, cy: int, cx: int, size: int) -> np.ndarray:
    """A (channels, size, size) crop of a (channels, y, x) stack centred on (cy, cx), zero outside."""
    out = np.zeros((stack.shape[0], size, size), dtype=np.float32)
    y0, x0 = cy - size // 2, cx - size // 2
    ys, xs = slice(max(0, y0), min(stack.shape[1], y0 + size)), slice(max(0, x0), min(stack.shape[2], x0 + size))
    out[:, ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0] = stack[:, ys, xs]
    return out


def lesion_tile_centres(mask_slice: np.ndarray, tile: int) -> list[tuple[int, int]]:
    """Tile centres covering every face-connected plaque of one slice: one centred tile per
    plaque that fits, overlapping tiles over the bounding box of larger ones."""
    image = sitk.GetImageFromArray(mask_slice.astype(np.uint8))
    components = sitk.ConnectedComponent(image, False)
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(components)
    centres: list[tuple[int, int]] = []
    inner = tile - 4  # keep two pixels of context round a plaque

    def covered(y0, x0, h, w):  # the plaque already lies inside a chosen tile
        return any(cy - inner // 2 <= y0 and y0 + h <= cy + inner // 2 and cx - inner // 2 <= x0
                   and x0 + w <= cx + inner // 2 for cy, cx in centres)

    for label in sorted(stats.GetLabels(), key=lambda lab: -stats.GetNumberOfPixels(lab)):
        x0, y0, w, h = stats.GetBoundingBox(label)
        if covered(y0, x0, h, w):
            continue
        ys = [y0 + h // 2] if h <= inner else list(range(y0 + inner // 2, y0 + h + inner // 2, inner // 2))
        xs = [x0 + w // 2] if w <= inner else list(range(x0 + inner // 2, x0 + w + inner // 2, inner // 2))
        centres += [(min(cy, y0 + h - 1), min(cx, x0 + w - 1)) for cy in ys for cx in xs]
    return sorted(set(centres))


def case_tiles(volume: np.ndarray, foreground: np.ndarray, mask: np.ndarray, config: dict, rng: np.random.Generator
               ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Positive and negative tiles (with margins) of one normalised case on the model grid."""
    tile, margin, context = int(config["tile_size"]), int(config["tile_jitter"]), int(config["context_slices"])
    size = tile + 2 * margin
    images, labels = [], []
    for z in np.nonzero(mask.any(axis=(1, 2)))[0]:
        for cy, cx in lesion_tile_centres(mask[z], tile):
            images.append(_crop(slice_stack(volume, [z], context)[0], cy, cx, size))
            labels.append(_crop(mask[z][None].astype(np.float32), cy, cx, size)[0].astype(np.uint8))
    n_negative = int(round(len(images) * float(config["negative_ratio"])))
    candidates, scores = [], []
    step = tile // 4
    for z in np.nonzero(foreground.any(axis=(1, 2)))[0]:
        for cy in range(tile // 2, volume.shape[1] - tile // 2 + 1, step):
            for cx in range(tile // 2, volume.shape[2] - tile // 2 + 1, step):
                ys, xs = slice(cy - size // 2, cy + size // 2), slice(cx - size // 2, cx + size // 2)
                if mask[z, max(0, ys.start):ys.stop, max(0, xs.start):xs.stop].any():
                    continue
                fg = foreground[z, cy - tile // 2:cy + tile // 2, cx - tile // 2:cx + tile // 2]
                if fg.mean() < 0.25:
                    continue
                patch = volume[z, cy - tile // 2:cy + tile // 2, cx - tile // 2:cx + tile // 2]
                candidates.append((z, cy, cx))
                scores.append(float(np.percentile(patch, 99) * patch.std()) + 1e-6)
    if candidates and n_negative:
        p = np.asarray(scores) / np.sum(scores)
        picks = rng.choice(len(candidates), size=min(n_negative, len(candidates)), replace=False, p=p)
        for k in picks:
            z, cy, cx = candidates[k]
            images.append(_crop(slice_stack(volume, [z], context)[0], cy, cx, size))
            labels.append(np.zeros((size, size), dtype=np.uint8))
    return images, labels


def tiles_at(volume: np.ndarray, mask: np.ndarray, centres_zyx: np.ndarray, config: dict
             ) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Tiles (with margins) centred on given model-grid positions (z, y, x), labelled by the
    lesion mask as it is there: the tiles round detections a reviewer rejected (lesion-free
    unless a real plaque lies in the tile, which keeps its label).  Positions off the volume
    are skipped."""
    tile, margin, context = int(config["tile_size"]), int(config["tile_jitter"]), int(config["context_slices"])
    size = tile + 2 * margin
    images, labels = [], []
    for z, cy, cx in np.rint(np.asarray(centres_zyx, float).reshape(-1, 3)).astype(int):
        if not (0 <= z < volume.shape[0] and 0 <= cy < volume.shape[1] and 0 <= cx < volume.shape[2]):
            continue
        images.append(_crop(slice_stack(volume, [z], context)[0], cy, cx, size))
        labels.append(_crop(mask[z][None].astype(np.float32), cy, cx, size)[0].astype(np.uint8))
    return images, labels
