"""Method 004 `ms-flair-fcn`: MS plaques in FLAIR MRI with a fully convolutional filter.

Paper: Stasiak, Tarasiuk, Michalska, Tomczyk, Szczepaniak, "Localization of demyelinating
plaques in MRI using convolutional neural networks", BIOIMAGING 2017 (seed 004).

Pipeline (one path for training, calibration, inference and evaluation):

1. Slicing.  Slices are taken along the image's axial direction whatever its orientation:
   the index axis whose direction is closest to the patient's S axis becomes the slice axis
   (sitk.PermuteAxes keeps the physical geometry).  The volume is resampled (linear) to the
   model's pixel spacing in-plane, and through-plane as well when the model reads
   neighbouring slices as context channels; probabilities are resampled back onto the
   input's own grid, so the result always has the input's geometry.
2. Intensity normalisation, for raw scanner FLAIR (any unit, skull present) and for
   skull-stripped, bias-corrected MNI FLAIR alike: the foreground is what Otsu's threshold
   separates from the background, and intensities are divided by the foreground median
   (brain parenchyma dominates it in both kinds of scan), then clipped to [0, 5].  Training
   multiplies each tile by a random factor (default +-15 %) so the model does not depend on
   the exact scale.
3. Training tiles (the paper's recipe): 50 x 50 pixel tiles (tile_size) from axial slices;
   every 2-D plaque (face-connected component of the slice's mask) gets a tile centred on
   it, so a plaque that would touch a grid tile's edge is shifted into the tile; plaques
   larger than a tile are covered by overlapping tiles, and a plaque already inside a chosen
   tile gets no tile of its own.  Then negative_ratio lesion-free tiles per lesion tile (the
   paper's configs: 0.5, i.e. one third of all tiles; the default model: 1.0), drawn with probability proportional to their
   brightness x contrast (99th percentile x standard deviation), which prefers the bright,
   high-contrast areas (skull, eyes, sinuses, cortex) that cause false positives.  Tiles are
   cut once with a margin and kept in memory; each epoch takes a random crop inside the
   margin and a random flip/transpose.  By default an epoch is one pass over the tiles, so
   the number of optimiser steps follows the training cases' lesion load; tiles_per_epoch
   makes it a fixed number of random draws instead, lesion_tile_fraction of them lesion
   tiles (oversampling).  Measured on the real leave-one-case-out (README) these did not
   beat the default.
4. Networks (`architecture`):
   - "paper": six convolutions 20 (5x5), 20 (7x7), 40 (9x9), 60 (7x7), 20 (5x5), 1 (5x5),
     same padding, PReLU between, sigmoid out, trained with MSE (`Resources/configs/
     ms-flair-fcn/paper-sgd.json` is the paper's SGD lr 1e-5, momentum 0.9, batch 100;
     `paper.json` the same network with Adam).  Measured here (README): in the 30-60 steps
     tried, both stay at or fall into the all-zero output, whose MSE is the lesion fraction.
   - "unet" (the default, the stronger model): a small 2-D U-Net (3 levels, base 16
     channels, batch norm; unet_norm "group" for group norm) reading the slice and its two
     neighbours (context_slices 1), trained with BCE + soft Dice.
5. Threshold: the one maximising pixel F over every pixel of the full training slices (not
   tiles), searched exhaustively over all distinct probability values
   (sklearn.metrics.precision_recall_curve), stored in the model card as thresholds["pixel"].
6. Output: probability volume, mask at the threshold, and one box per 3-D lesion component
   (face connectivity) whose `extra` holds volume (mm^3), centroid (LPS mm) and maximum
   probability: the lesion table.
7. Evaluation: pixel precision/recall/F/Dice and lesion-wise sensitivity/precision/F1 as
   animaSegPerfAnalyzer defines them (metrics/lesionwise.py), per case, mean over cases and
   pooled, with a per-lesion table.
"""

from __future__ import annotations

import math
import resource
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from torch import nn

from ..dataset import Dataset, read_mask
from ..errors import LesionDetectError, input_error
from ..geometry import Geometry
from ..io import read_image
from ..metrics import lesionwise
from ..models import ModelCard
from ..prediction import LesionBox, Prediction, Provenance
from ..progress import progress
from . import register
from .base import Method

PAPER_LAYERS = ((20, 5), (20, 7), (40, 9), (60, 7), (20, 5), (1, 5))  # (channels, kernel) per convolution


# --- networks ---------------------------------------------------------------------------

class PaperFCN(nn.Module):
    """The paper's filter network: six same-padded convolutions, PReLU between, sigmoid out."""

    def __init__(self, in_channels: int = 1):
        super().__init__()
        layers, channels = [], in_channels
        for n, (out, k) in enumerate(PAPER_LAYERS):
            layers.append(nn.Conv2d(channels, out, k, padding=k // 2))
            if n < len(PAPER_LAYERS) - 1:
                layers.append(nn.PReLU(out))
            channels = out
        self.body = nn.Sequential(*layers)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x.contiguous(memory_format=torch.channels_last))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":  # per-image statistics: no train (tiles) / test (whole slices) mismatch
        return nn.GroupNorm(min(8, channels), channels)
    raise LesionDetectError(f"unknown unet_norm {kind!r}; use batch or group")


def _double_conv(cin: int, cout: int, norm: str = "batch") -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), _norm(norm, cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), _norm(norm, cout), nn.ReLU(inplace=True))


class UNet2D(nn.Module):
    """A small 2-D U-Net; inputs of any size (padded to a multiple of 2**depth inside)."""

    def __init__(self, in_channels: int = 3, base: int = 16, depth: int = 3, norm: str = "batch"):
        super().__init__()
        widths = [base * 2 ** d for d in range(depth + 1)]
        self.down = nn.ModuleList([_double_conv(in_channels, widths[0], norm)] +
                                  [_double_conv(widths[d - 1], widths[d], norm) for d in range(1, depth + 1)])
        self.up = nn.ModuleList([nn.ConvTranspose2d(widths[d + 1], widths[d], 2, stride=2) for d in range(depth)])
        self.merge = nn.ModuleList([_double_conv(2 * widths[d], widths[d], norm) for d in range(depth)])
        self.head = nn.Conv2d(widths[0], 1, 1)
        self.multiple = 2 ** depth

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        ph, pw = (-h) % self.multiple, (-w) % self.multiple
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), mode="replicate")
        x = x.contiguous(memory_format=torch.channels_last)
        skips = []
        for d, block in enumerate(self.down):
            x = block(x if d == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips.pop()
        for d in reversed(range(len(self.up))):
            x = self.merge[d](torch.cat([self.up[d](x), skips[d]], dim=1))
        return self.head(x)[..., :h, :w]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(x))


def build_network(config: dict[str, Any]) -> nn.Module:
    """The configured network; it carries its training loss name (`loss`) for batch_loss."""
    channels = 1 + 2 * int(config["context_slices"])
    if config["architecture"] == "paper":
        net = PaperFCN(channels)
    elif config["architecture"] == "unet":
        net = UNet2D(channels, int(config["unet_base"]), int(config["unet_depth"]), config["unet_norm"])
    else:
        raise LesionDetectError(f"unknown architecture {config['architecture']!r}; use paper or unet")
    if config["loss"] not in ("mse", "bce_dice"):
        raise LesionDetectError(f"unknown loss {config['loss']!r}; use mse or bce_dice")
    net.loss = config["loss"]
    # channels-last runs these convolutions 2-4x faster on CPU (measured: 8 -> 34 tiles/s for
    # the paper's network); weights are saved contiguous, so files do not depend on it
    return net.to(memory_format=torch.channels_last)


# --- volumes: axial slicing, model grid, normalisation ------------------------------------

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


def normalise(volume: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(intensities / foreground median clipped to [0, 5], foreground mask) — see the module notes."""
    volume = np.asarray(volume, dtype=np.float32)
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.SetInsideValue(0)
    otsu.SetOutsideValue(1)
    foreground = sitk.GetArrayFromImage(otsu.Execute(sitk.GetImageFromArray(volume))).astype(bool)
    if not foreground.any():
        foreground = volume > volume.min()
    scale = float(np.median(volume[foreground])) if foreground.any() else 0.0
    if not np.isfinite(scale) or scale <= 0:
        scale = float(np.abs(volume).max()) or 1.0
    return np.clip(volume / scale, 0.0, 5.0), foreground


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


# --- training tiles ---------------------------------------------------------------------

class TileSet(torch.utils.data.Dataset):
    """Tiles cut with a margin, kept in memory; random crop + flips per draw when augmenting.

    With `draws` set, an epoch is that many random draws instead of one pass over the tiles
    (so the number of optimiser steps no longer depends on how many lesions the training
    cases happen to hold), and `lesion_fraction` of the draws are lesion tiles whatever
    their share of the stored tiles (lesion oversampling)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, tile: int, augment: bool, intensity: float,
                 draws: int | None = None, lesion_fraction: float | None = None):
        self.images, self.labels = images, labels
        self.tile, self.augment, self.intensity = tile, augment, intensity
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
        return torch.from_numpy(np.ascontiguousarray(image)), torch.from_numpy(np.ascontiguousarray(label))[None]


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


def soft_dice_loss(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    inter = (prob * target).sum()
    return 1 - (2 * inter + 1) / (prob.sum() + target.sum() + 1)


# --- the plug-in --------------------------------------------------------------------------

@register
class MSFlairFCN(Method):
    name = "ms-flair-fcn"
    modality = "MR"
    paper = "004"
    defaults = {
        "architecture": "unet",  # "paper" (six-layer filter) | "unet" (the stronger default)
        "context_slices": 1,  # neighbouring slices on each side read as extra channels
        "unet_base": 16,
        "unet_depth": 3,
        "unet_norm": "batch",  # "batch" | "group"
        "spacing_mm": 1.0,  # model pixel spacing; inputs are resampled to it
        "tile_size": 64,
        "tile_jitter": 8,  # margin for random crops (pixels)
        "negative_ratio": 1.0,  # lesion-free tiles per lesion tile (the paper's 0.5 = one third of all)
        "tiles_per_epoch": None,  # random draws per epoch (a fixed step count); None = one pass over all tiles
        "lesion_tile_fraction": None,  # share of draws that are lesion tiles; None = their share of the tiles
        "intensity_augment": 0.15,
        "loss": "bce_dice",  # "mse" (paper) | "bce_dice"
        "optimizer": "adam",
        "lr": 2e-3,
        "lr_schedule": "cosine",
        "epochs": 10,
        "batch_size": 32,
        "inference_batch": 8,
        "seed": 0,
    }

    # --- model ------------------------------------------------------------------------
    def build_model(self, config, pretrained=False):
        return build_network({**self.defaults, **config})

    # --- training ---------------------------------------------------------------------
    @staticmethod
    def _cases(dataset: Dataset, split: str | None):
        labelled = [c for c in dataset.cases if c.mask is not None]
        if split in (None, "all"):
            return labelled
        chosen = [c for c in labelled if c.split == split]
        if split == "train" and not any(c.split for c in labelled):
            return labelled  # no splits: everything trains
        if split == "test" and not any(c.split for c in labelled):
            return labelled
        return chosen

    def load_case(self, case, config):
        """(model grid, normalised volume, foreground, mask) of a labelled case, on the model grid."""
        image = read_image(case.image)
        grid = ModelGrid(image, config)
        volume, foreground = normalise(grid.image(image))
        mask_img = sitk.GetImageFromArray(read_mask(case.mask))
        mask_img.CopyInformation(image)
        mask = grid.image(mask_img, label=True) > 0.5
        return grid, volume, foreground, mask

    def training_data(self, dataset, config, seed):
        rng = np.random.default_rng(seed)
        train_cases = self._cases(dataset, "train")
        val_cases = [c for c in dataset.cases if c.mask is not None and c.split == "val"]

        def tiles(cases, augment):
            images, labels = [], []
            for case in progress(cases, desc="cutting tiles", unit="case"):
                _, volume, foreground, mask = self.load_case(case, config)
                im, lab = case_tiles(volume, foreground, mask, config, rng)
                images += im
                labels += lab
            if not images:
                size = int(config["tile_size"]) + 2 * int(config["tile_jitter"])
                return TileSet(np.zeros((0, 1, size, size), np.float32), np.zeros((0, size, size), np.uint8),
                               int(config["tile_size"]), augment, 0.0)
            draws = config.get("tiles_per_epoch") if augment else None
            fraction = config.get("lesion_tile_fraction")
            return TileSet(np.stack(images), np.stack(labels), int(config["tile_size"]), augment,
                           float(config["intensity_augment"]) if augment else 0.0,
                           draws=None if draws is None else int(draws),
                           lesion_fraction=None if fraction is None else float(fraction))

        return tiles(train_cases, True), (tiles(val_cases, False) if val_cases else None)

    def batch_loss(self, model, batch, device):
        images, labels = (t.to(device) for t in batch)
        target = labels.float()
        if model.loss == "mse":
            return F.mse_loss(model(images), target)
        logits = model.logits(images)
        return F.binary_cross_entropy_with_logits(logits, target) + soft_dice_loss(torch.sigmoid(logits), target)

    # --- probabilities ---------------------------------------------------------------
    @torch.inference_mode()
    def probability(self, model, config, volume: np.ndarray, foreground: np.ndarray, device) -> np.ndarray:
        """Probability on the model grid: whole slices inside the foreground's bounding box,
        `inference_batch` slices at a time; zero outside the box."""
        context, batch = int(config["context_slices"]), int(config.get("inference_batch", 8))
        box = foreground_box(foreground, margin=16)
        out = np.zeros(volume.shape, dtype=np.float32)
        crop = volume[:, box[1], box[2]]
        zs = np.arange(box[0].start, box[0].stop)
        model.eval()
        for start in range(0, len(zs), batch):
            z = zs[start:start + batch]
            x = torch.from_numpy(np.ascontiguousarray(slice_stack(crop, z, context))).to(device)
            out[z[0]:z[-1] + 1, box[1], box[2]] = model(x)[:, 0].float().cpu().numpy()
        return out

    def probability_map(self, model, config, image: sitk.Image, device) -> np.ndarray:
        """Probability (z, y, x) on the input image's own grid."""
        grid = ModelGrid(image, config)
        volume, foreground = normalise(grid.image(image))
        return np.clip(grid.back(self.probability(model, config, volume, foreground, device)), 0.0, 1.0)

    def calibrate(self, model, dataset, config, device):
        """Exhaustive F-max threshold over all pixels of the full training slices."""
        from sklearn.metrics import precision_recall_curve

        scores, truths = [], []
        for case in progress(self._cases(dataset, "train"), desc="threshold search", unit="case"):
            image = read_image(case.image)
            prob = self.probability_map(model, config, image, device)
            truth = read_mask(case.mask).astype(bool)
            keep = (prob > 0) | truth  # pixels at probability 0 are negative at every threshold > 0
            scores.append(prob[keep])
            truths.append(truth[keep])
        return {"pixel": fmax_threshold(np.concatenate(truths), np.concatenate(scores), precision_recall_curve)}

    # --- use --------------------------------------------------------------------------
    def predict(self, model, card: ModelCard, image, device, threshold: float | None = None, **options):
        config = {**self.defaults, **card.config}
        threshold = float(card.thresholds.get("pixel", 0.5) if threshold is None else threshold)
        geometry = Geometry.of(image)
        probability = self.probability_map(model, config, image, device)
        mask = (probability >= threshold).astype(np.uint8)
        return Prediction(geometry=geometry, probability=probability, mask=mask, threshold=threshold,
                          boxes=lesion_boxes(mask, probability, geometry),
                          provenance=Provenance(method=self.name, model_id=card.model_id, model_version=card.version,
                                                parameters={"threshold": threshold,
                                                            "architecture": config["architecture"]}))

    def evaluate(self, model, card, dataset, device, split="test", threshold=None, **options):
        cases = self._cases(dataset, None if split == "all" else split)
        if not cases:
            raise input_error(dataset.root, f"has no labelled cases in split '{split}'")
        per_case, totals = [], {"tp": 0, "fp": 0, "fn": 0}
        lesion_totals = {"truth": 0, "pred": 0, "detected": 0, "true_pred": 0}
        for case in progress(cases, desc="evaluating", unit="case"):
            image = read_image(case.image)
            pred = self.predict(model, card, image, device, threshold=threshold)
            truth = read_mask(case.mask)
            counts = lesionwise.pixel_counts(truth, pred.mask)
            lesions = lesionwise.lesion_detection(truth, pred.mask, spacing=image.GetSpacing())
            for k in totals:
                totals[k] += counts[k]
            lesion_totals["truth"] += lesions.n_truth
            lesion_totals["pred"] += lesions.n_pred
            lesion_totals["detected"] += int(lesions.truth_detected.sum())
            lesion_totals["true_pred"] += int(lesions.pred_true.sum())
            per_case.append({"case": case.id, **lesionwise.pixel_scores(counts), **lesions.scores(), **counts,
                             "lesions": lesionwise.lesion_rows(lesions, pred.geometry, pred.probability)})
        keys = ("pixel_precision", "pixel_recall", "pixel_f", "dice", "lesion_sensitivity", "lesion_precision",
                "lesion_f1")
        summary = {k: _nanmean([c[k] for c in per_case]) for k in keys}
        sens = lesion_totals["detected"] / lesion_totals["truth"] if lesion_totals["truth"] else math.nan
        prec = lesion_totals["true_pred"] / lesion_totals["pred"] if lesion_totals["pred"] else math.nan
        pooled = {**lesionwise.pixel_scores(totals), "lesion_sensitivity": sens, "lesion_precision": prec,
                  "lesion_f1": lesionwise.f1_score(prec, sens)}
        return {**summary, "threshold": float(card.thresholds.get("pixel", 0.5) if threshold is None else threshold),
                "cases": per_case, "pooled": pooled, "split": split, "model_id": card.model_id}

    def report(self, metrics):
        keys = ("pixel_precision", "pixel_recall", "pixel_f", "dice", "lesion_sensitivity", "lesion_precision",
                "lesion_f1")
        head = ["case", "P", "R", "F", "Dice", "L-sens", "L-prec", "L-F1", "GT", "pred"]
        lines = [f"ms-flair-fcn, threshold {metrics['threshold']:.4f} (paper: best pixel F 0.55)",
                 "  ".join(f"{h:>8s}" if i else f"{h:28s}" for i, h in enumerate(head))]
        for c in metrics["cases"]:
            lines.append(f"{c['case']:28s}  " + "  ".join(f"{c[k]:8.3f}" for k in keys)
                         + f"  {c['truth_lesions']:8d}  {c['predicted_lesions']:8d}")
        lines.append(f"{'mean':28s}  " + "  ".join(f"{metrics[k]:8.3f}" for k in keys))
        lines.append(f"{'pooled':28s}  " + "  ".join(f"{metrics['pooled'][k]:8.3f}" for k in keys))
        return "\n".join(lines)


def _nanmean(values) -> float:
    values = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(values)) if values else math.nan


def fmax_threshold(truth: np.ndarray, score: np.ndarray, pr_curve) -> float:
    """The threshold (predict >= t) maximising F over every given pixel, searched over all
    distinct scores; 0.5 when there is no positive pixel."""
    if not truth.any():
        return 0.5
    precision, recall, thresholds = pr_curve(truth, score)
    f = 2 * precision[:-1] * recall[:-1] / np.clip(precision[:-1] + recall[:-1], 1e-12, None)
    f[thresholds <= 0] = -1  # a zero threshold would mark every pixel of the volume
    return float(thresholds[int(np.argmax(f))])


def lesion_boxes(mask: np.ndarray, probability: np.ndarray, geometry: Geometry) -> list[LesionBox]:
    """One box per face-connected 3-D lesion component: the table of volume, centroid, max probability."""
    image = geometry.image(mask.astype(np.uint8))
    components = sitk.ConnectedComponent(image, False)
    shape = sitk.LabelShapeStatisticsImageFilter()
    shape.Execute(components)
    intensity = sitk.LabelStatisticsImageFilter()
    intensity.Execute(geometry.image(probability.astype(np.float32)), components)
    boxes = []
    for label in shape.GetLabels():
        x0, y0, z0, w, h, d = shape.GetBoundingBox(label)
        boxes.append(LesionBox.from_index_range(
            geometry, (x0, y0, z0), (x0 + w - 1, y0 + h - 1, z0 + d - 1), score=intensity.GetMaximum(label),
            extra={"volume_mm3": round(shape.GetPhysicalSize(label), 3), "voxels": shape.GetNumberOfPixels(label),
                   "centroid_lps": [round(v, 2) for v in shape.GetCentroid(label)],
                   "max_probability": round(intensity.GetMaximum(label), 4)}))
    return sorted(boxes, key=lambda b: -b.extra["volume_mm3"])


# --- benchmark ------------------------------------------------------------------------------

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
    model = method.build_model(config).train()
    channels, tile, batch = 1 + 2 * int(config["context_slices"]), int(config["tile_size"]), int(config["batch_size"])
    images = torch.rand(batch, channels, tile, tile)
    labels = (torch.rand(batch, 1, tile, tile) > 0.9).to(torch.uint8)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        loss = method.batch_loss(model, (images, labels), torch.device("cpu"))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    from ..commands.bench import median_seconds

    step()  # warm-up
    return batch / median_seconds(step, steps)


def benchmark() -> dict[str, Any]:
    """Seconds for a 182x218x182 volume and a 448x512 slice (whole predict path, default model,
    and the paper's network with the same cost), training tiles per second, peak memory."""
    from ..commands.bench import median_seconds
    from ..models import shipped_model_dir
    from ..training import load_trained

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
    volume, one_slice = _phantom((182, 218, 182)), _phantom((512, 448, 1), seed=1)
    results: dict[str, Any] = {"model": model_name, "torch_threads": torch.get_num_threads()}
    method.predict(model, card, one_slice, cpu)  # warm-up
    results["slice_s"] = round(median_seconds(lambda: method.predict(model, card, one_slice, cpu), 3), 4)
    results["volume_s"] = round(median_seconds(lambda: method.predict(model, card, volume, cpu), 2), 3)
    results["train_tiles_per_s"] = round(_train_rate(method, dict(card.config)), 1)
    results["paper_slice_s"] = round(median_seconds(lambda: method.predict(paper_model, paper_card, one_slice, cpu), 3), 4)
    results["paper_volume_s"] = round(median_seconds(lambda: method.predict(paper_model, paper_card, volume, cpu), 1), 3)
    results["paper_train_tiles_per_s"] = round(_train_rate(method, paper_config), 1)
    results["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return results


def _register_benchmark() -> None:
    from ..commands.bench import register_benchmark

    register_benchmark("ms-flair")(benchmark)


_register_benchmark()
