"""Patches for the bone-lesion classifier: bone mask, lesion centres, sampling, extraction.

A patch is a square of `patch_mm` (15 mm) along the image's two in-plane index axes (i, j)
of one axial slice, sampled at `patch_pixels` x `patch_pixels` (64 x 64) cell centres by
bilinear interpolation (torch `grid_sample`), so its pixel size follows the spacing.  The
patch holds Hounsfield units; the HU -> channel encodings (grey / 3-channel) are the first
layer of the network (network.HUEncoder), so extraction is the same for every model and the
dense parser can encode a resampled slice region exactly as a patch.

Outside the image the CT is taken as air (-1000 HU).
"""

from __future__ import annotations

import math

import numpy as np
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from scipy import ndimage

from ...geometry import Geometry

AIR_HU = -1000.0


# --- bone mask ---------------------------------------------------------------------------------

def _ball(radius_mm: float, spacing_zyx) -> np.ndarray:
    radius = [max(0, int(round(radius_mm / s))) for s in spacing_zyx]
    zz, yy, xx = np.ogrid[-radius[0]:radius[0] + 1, -radius[1]:radius[1] + 1, -radius[2]:radius[2] + 1]
    sz, sy, sx = spacing_zyx
    return ((zz * sz) ** 2 + (yy * sy) ** 2 + (xx * sx) ** 2) <= radius_mm ** 2


def bone_mask_from_hu(hu: np.ndarray, spacing_xyz, threshold_hu: float = 200.0, closing_mm: float = 3.0,
                      min_component_mm3: float = 50.0, margin_mm: float = 0.0) -> np.ndarray:
    """A bone mask for a CT without one (uint8, zyx).

    Voxels >= `threshold_hu` (cortex and trabecular bone), closed with a ball of `closing_mm`
    (bridges cortical gaps, e.g. where a lytic lesion breaks the cortex), holes filled slice
    by slice (marrow and lytic lesions inside a cortical ring are below the threshold but
    belong to the bone), components smaller than `min_component_mm3` dropped (calcified
    vessels, contrast specks, noise), then dilated by `margin_mm` (a lesion that has
    replaced the cortex lies just outside the remaining bone: on the real BLDS patches the
    annotated centres of 4 of 7 lesions are 1-4 mm outside the thresholded bone).
    """
    sx, sy, sz = (float(v) for v in spacing_xyz)
    mask = hu >= threshold_hu
    ball = _ball(closing_mm, (sz, sy, sx))
    if ball.size > 1:
        radius = [n // 2 for n in ball.shape]
        pad = [(r, r) for r in radius]  # closing must not erode at the volume border
        mask = ndimage.binary_closing(np.pad(mask, pad), structure=ball)[
            tuple(slice(r, r + n) for r, n in zip(radius, hu.shape))]
    for z in range(mask.shape[0]):
        mask[z] = ndimage.binary_fill_holes(mask[z])
    labels, n = ndimage.label(mask)
    if n:
        sizes = np.bincount(labels.ravel())[1:] * (sx * sy * sz)
        keep = np.concatenate([[False], sizes >= min_component_mm3])
        mask = keep[labels]
    if margin_mm > 0 and mask.any():
        # the dilation by a ball of margin_mm, as the distance to the bone (the same voxels as
        # binary_dilation with _ball(margin_mm), and faster for radii of several voxels)
        mask = ndimage.distance_transform_edt(~mask, sampling=(sz, sy, sx)) <= margin_mm
    return mask.astype(np.uint8)


def hu_array(image: sitk.Image) -> np.ndarray:
    """The CT as float32 HU, (z, y, x)."""
    return sitk.GetArrayFromImage(image).astype(np.float32, copy=False)


# --- patch geometry ----------------------------------------------------------------------------

def pixel_step(spacing_xyz, patch_mm: float, patch_pixels: int) -> tuple[float, float]:
    """(step_x, step_y): patch pixel size in image pixels along i and j."""
    cell_mm = patch_mm / patch_pixels
    return cell_mm / float(spacing_xyz[0]), cell_mm / float(spacing_xyz[1])


def patch_offsets(patch_pixels: int) -> np.ndarray:
    """Cell-centre offsets of a patch in patch pixels: (k - (P - 1) / 2), k = 0..P-1."""
    return np.arange(patch_pixels, dtype=np.float64) - (patch_pixels - 1) / 2.0


def to_normalized(coord: torch.Tensor, length: int) -> torch.Tensor:
    """Pixel coordinate (pixel centres at integers) -> grid_sample's [-1, 1] (align_corners=False)."""
    return (2.0 * coord + 1.0) / length - 1.0


def sample_slice(slice_hu: torch.Tensor, grid_xy: torch.Tensor) -> torch.Tensor:
    """Bilinear HU samples of one slice (H, W) at pixel coordinates grid_xy (..., Hp, Wp, 2) (x, y).

    Returns (..., Hp, Wp).  Outside the slice the value is air."""
    h, w = slice_hu.shape
    lead = grid_xy.shape[:-3]
    g = grid_xy.reshape(-1, *grid_xy.shape[-3:])
    norm = torch.stack([to_normalized(g[..., 0], w), to_normalized(g[..., 1], h)], dim=-1).to(slice_hu.dtype)
    src = (slice_hu - AIR_HU)[None, None].expand(g.shape[0], 1, h, w)
    out = F.grid_sample(src, norm, mode="bilinear", padding_mode="zeros", align_corners=False) + AIR_HU
    return out[:, 0].reshape(*lead, *grid_xy.shape[-3:-1])


def patch_grids(centres_xy: np.ndarray, steps: tuple[float, float], patch_pixels: int,
                angles: np.ndarray | None = None, mirror: np.ndarray | None = None) -> torch.Tensor:
    """Sampling grids (N, P, P, 2) in slice pixel coordinates for patches centred at
    `centres_xy` (N, 2), optionally rotated by `angles` (radians, in the physical plane) and
    mirrored left-right.  Row r of a patch runs along j, column c along i."""
    n = len(centres_xy)
    off = patch_offsets(patch_pixels)
    u = np.broadcast_to(off[None, :], (patch_pixels, patch_pixels))  # along i (columns)
    v = np.broadcast_to(off[:, None], (patch_pixels, patch_pixels))  # along j (rows)
    u = np.broadcast_to(u, (n, patch_pixels, patch_pixels)).copy()
    v = np.broadcast_to(v, (n, patch_pixels, patch_pixels)).copy()
    if mirror is not None:
        u[np.asarray(mirror, bool)] *= -1
    if angles is not None:
        c, s = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]
        u, v = c * u - s * v, s * u + c * v
    x = centres_xy[:, 0, None, None] + u * steps[0]
    y = centres_xy[:, 1, None, None] + v * steps[1]
    return torch.from_numpy(np.stack([x, y], axis=-1).astype(np.float32))


def extract_patches(hu: np.ndarray, spacing_xyz, centres_zyx: np.ndarray, patch_mm: float, patch_pixels: int,
                    angles: np.ndarray | None = None, mirror: np.ndarray | None = None,
                    batch: int = 4096, context: int = 0) -> torch.Tensor:
    """HU patches (N, 1, P + 2C, P + 2C) at continuous voxel positions (z, y, x): the P x P
    patch plus `context` (C) patch pixels of surrounding image on every side, at the patch's
    pixel size; z is rounded to the nearest slice (patches are axial).  Batched
    `grid_sample`, one call per slice."""
    centres_zyx = np.asarray(centres_zyx, dtype=np.float64).reshape(-1, 3)
    steps = pixel_step(spacing_xyz, patch_mm, patch_pixels)
    patch_pixels += 2 * int(context)
    out = torch.empty((len(centres_zyx), 1, patch_pixels, patch_pixels), dtype=torch.float32)
    z_index = np.clip(np.rint(centres_zyx[:, 0]).astype(int), 0, hu.shape[0] - 1)
    for z in np.unique(z_index):
        rows = np.nonzero(z_index == z)[0]
        slice_hu = torch.from_numpy(np.ascontiguousarray(hu[z], dtype=np.float32))
        for start in range(0, len(rows), batch):
            sel = rows[start:start + batch]
            grids = patch_grids(centres_zyx[sel][:, [2, 1]], steps, patch_pixels,
                                None if angles is None else angles[sel], None if mirror is None else mirror[sel])
            out[sel, 0] = sample_slice(slice_hu, grids)
    return out


# --- lesion centres and training positions -------------------------------------------------------

def lesion_centres_lps(case) -> np.ndarray:
    """Annotated lesion centres (N, 3) LPS: the case's points, else its boxes' centres, else
    the centroids of its lesion mask's connected components."""
    from ... import markups
    from ...dataset import read_mask
    from ...io import read_image

    if case.points is not None:
        return np.array([p.position for p in markups.read_points(case.points)], dtype=float).reshape(-1, 3)
    if case.boxes is not None:
        return np.array([b.center for b in markups.read_boxes(case.boxes)], dtype=float).reshape(-1, 3)
    if case.mask is not None:
        geometry = Geometry.of(read_image(case.image))
        mask = read_mask(case.mask, geometry)
        labels, n = ndimage.label(mask)
        if n == 0:
            return np.zeros((0, 3))
        zyx = np.array(ndimage.center_of_mass(mask, labels, range(1, n + 1)), dtype=float).reshape(-1, 3)
        return geometry.index_to_lps(zyx[:, ::-1])
    return np.zeros((0, 3))


def training_positions(bone: np.ndarray, lesions_zyx: np.ndarray, spacing_xyz, rng: np.random.Generator,
                       augment: int, negatives_per_positive: float, patch_mm: float, exclusion_z_mm: float,
                       shift_mm: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(centres zyx, labels, angles, mirror) for one volume, as the paper samples them.

    Positives: `augment` patches per lesion centre, each rotated by a random angle and
    mirrored with probability 1/2 (the first one is the unaugmented patch); with `shift_mm`
    > 0 (not in the paper) the augmented ones are also moved in-plane by up to that distance
    (uniform in the disc).  Negatives: random bone-mask voxels, as many as
    `negatives_per_positive` x positives, whose 15 mm square does not overlap any positive
    square in-plane on slices within `exclusion_z_mm` of the lesion centre; not augmented.
    """
    pos = np.repeat(np.asarray(lesions_zyx, float).reshape(-1, 3), augment, axis=0)
    angles = rng.uniform(0, 2 * math.pi, len(pos))
    mirror = rng.random(len(pos)) < 0.5
    angles[::augment] = 0.0
    mirror[::augment] = False
    if shift_mm > 0 and len(pos):
        radius, direction = shift_mm * np.sqrt(rng.random(len(pos))), rng.uniform(0, 2 * math.pi, len(pos))
        radius[::augment] = 0.0
        pos[:, 1] += radius * np.sin(direction) / float(spacing_xyz[1])
        pos[:, 2] += radius * np.cos(direction) / float(spacing_xyz[0])
    n_neg = int(round(negatives_per_positive * max(len(pos), 1)))
    candidates = np.argwhere(bone > 0).astype(float)
    candidates = candidates[clear_of_positives(candidates, lesions_zyx, spacing_xyz, patch_mm, exclusion_z_mm,
                                               shift_mm)]
    take = rng.choice(len(candidates), size=min(n_neg, len(candidates)), replace=False) if len(candidates) else []
    neg = candidates[take].reshape(-1, 3)
    centres = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(len(pos), np.float32), np.zeros(len(neg), np.float32)])
    return (centres, labels, np.concatenate([angles, np.zeros(len(neg))]),
            np.concatenate([mirror, np.zeros(len(neg), bool)]))


def clear_of_positives(centres_zyx: np.ndarray, lesions_zyx: np.ndarray, spacing_xyz, patch_mm: float,
                       exclusion_z_mm: float, shift_mm: float = 0.0) -> np.ndarray:
    """Bool per centre: its patch square cannot overlap any positive square (centred up to
    `shift_mm` from a lesion centre) in-plane on slices within `exclusion_z_mm` of the lesion
    centre (where negatives may be taken)."""
    sx, sy, sz = (float(v) for v in spacing_xyz)
    ok = np.ones(len(centres_zyx), bool)
    # squares of side patch_mm overlap iff both in-plane offsets are below patch_mm
    # (a rotated positive square fits in the circle of radius patch_mm / sqrt(2) around it;
    # the axis-aligned test with side patch_mm * sqrt(2) is the safe superset)
    reach = patch_mm * math.sqrt(2) + shift_mm
    for c in np.asarray(lesions_zyx, float).reshape(-1, 3):
        ok &= ~((np.abs(centres_zyx[:, 0] - c[0]) * sz < exclusion_z_mm)
                & (np.abs(centres_zyx[:, 1] - c[1]) * sy < reach)
                & (np.abs(centres_zyx[:, 2] - c[2]) * sx < reach))
    return ok


def rejected_positions(rejected_zyx: np.ndarray, lesions_zyx: np.ndarray, spacing_xyz, rng: np.random.Generator,
                       augment: int, patch_mm: float, exclusion_z_mm: float, shift_mm: float = 0.0
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(centres zyx, labels 0, angles, mirror) of negatives centred on detections a reviewer
    rejected (dataset.hard_negatives; not in the paper): `augment` patches per rejected
    location, rotated and mirrored like the positives (the first one unaugmented), so a
    confirmed false positive weighs as much as a lesion.  A rejected location whose patch
    would overlap a positive's (the random negatives' rule, `clear_of_positives`) is left out:
    it is a duplicate of a lesion, not a lesion-free place."""
    rejected = np.asarray(rejected_zyx, float).reshape(-1, 3)
    rejected = rejected[clear_of_positives(rejected, lesions_zyx, spacing_xyz, patch_mm, exclusion_z_mm, shift_mm)]
    centres, angles, mirror = augmented(rejected, rng, augment)
    return centres, np.zeros(len(centres), np.float32), angles, mirror


def augmented(centres_zyx: np.ndarray, rng: np.random.Generator, augment: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centres, angles, mirror): `augment` patches per location, the first one unaugmented,
    the others rotated by a random angle and mirrored with probability 1/2."""
    augment = max(1, int(augment))
    centres = np.repeat(np.asarray(centres_zyx, float).reshape(-1, 3), augment, axis=0)
    angles = rng.uniform(0, 2 * math.pi, len(centres))
    mirror = rng.random(len(centres)) < 0.5
    angles[::augment] = 0.0
    mirror[::augment] = False
    return centres, angles, mirror


def clear_of_lesion_mask(centres_zyx: np.ndarray, lesion_mask: np.ndarray, spacing_xyz, margin_mm: float
                         ) -> np.ndarray:
    """Bool per centre (integer zyx voxels): at least `margin_mm` from every lesion voxel (the
    negatives' rule of the lesion-mask sampling, `mask_training_positions`)."""
    centres = np.asarray(centres_zyx, int).reshape(-1, 3)
    return lesion_distance_mm(lesion_mask > 0, spacing_xyz, margin_mm)[tuple(centres.T)] >= margin_mm


def lesion_distance_mm(lesion: np.ndarray, spacing_xyz, reach_mm: float) -> np.ndarray:
    """Distance (mm) of every voxel to the nearest voxel of `lesion` (bool, zyx), exact below
    `reach_mm` and inf where it is more: computed only on the box around the lesions that
    reach can matter in (a whole-trunk distance transform per volume is seconds)."""
    sx, sy, sz = (float(v) for v in spacing_xyz)
    distance = np.full(lesion.shape, np.inf, np.float32)
    zyx = np.argwhere(lesion)
    if len(zyx):
        pad = [int(math.ceil(reach_mm / s)) + 1 for s in (sz, sy, sx)]
        box = tuple(slice(max(int(lo) - p, 0), min(int(hi) + p + 1, dim))
                    for lo, hi, p, dim in zip(zyx.min(0), zyx.max(0), pad, lesion.shape))
        distance[box] = ndimage.distance_transform_edt(~lesion[box], sampling=(sz, sy, sx))
    return distance


class PatchSet(torch.utils.data.Dataset):
    """Fixed HU patches (N, 1, P, P) with labels (N,) and where each came from."""

    def __init__(self, patches: torch.Tensor, labels: torch.Tensor, case_ids: list[str]):
        self.patches, self.labels, self.case_ids = patches, labels, case_ids

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        return self.patches[i], self.labels[i]


# --- lesion-mask sampling (not in the paper; `positive_sampling` "mask") -------------------------

def mask_training_positions(bone: np.ndarray, lesion_mask: np.ndarray, spacing_xyz, rng: np.random.Generator,
                            per_lesion: int, negatives_per_positive: float, margin_mm: float,
                            near_fraction: float, near_mm: float
                            ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(centres zyx, labels, angles, mirror) with the label "the patch centre lies inside a
    lesion", so the parsed map reads as a lesion segmentation rather than a lesion-centre
    detector (the paper's rule, `training_positions`).

    Positives: `per_lesion` voxels drawn uniformly inside each connected lesion of
    `lesion_mask` (the whole lesion, edges included), rotated and mirrored at random.
    Negatives: bone voxels at least `margin_mm` from every lesion voxel, as many as
    `negatives_per_positive` x positives; `near_fraction` of them from the shell up to
    `near_mm` beyond that margin (the bone right beside a lesion, where a centre-trained
    classifier still answers "lesion"), the rest anywhere in the bone; also rotated and
    mirrored (a negative's orientation carries no information either)."""
    labels_, n = ndimage.label(lesion_mask > 0)
    pos = []
    for k, where in enumerate(ndimage.find_objects(labels_), start=1):
        if where is None:
            continue
        voxels = np.argwhere(labels_[where] == k) + [s.start for s in where]
        take = rng.choice(len(voxels), size=per_lesion, replace=len(voxels) < per_lesion)
        pos.append(voxels[take].astype(float))
    pos = np.concatenate(pos) if pos else np.zeros((0, 3))
    # distances only matter within margin_mm + near_mm of a lesion
    distance = lesion_distance_mm(labels_ > 0, spacing_xyz, margin_mm + near_mm)
    allowed = (bone > 0) & (distance >= margin_mm)
    near = allowed & (distance < margin_mm + near_mm)
    n_neg = int(round(negatives_per_positive * max(len(pos), 1)))
    n_near = min(int(round(near_fraction * n_neg)), int(near.sum()))
    neg = []
    for pool, count in ((near, n_near), (allowed, n_neg - n_near)):
        idx = np.flatnonzero(pool)
        if len(idx) and count > 0:
            neg.append(np.stack(np.unravel_index(rng.choice(idx, size=min(count, len(idx)), replace=False),
                                                 bone.shape), axis=1).astype(float))
    neg = np.concatenate(neg) if neg else np.zeros((0, 3))
    centres = np.concatenate([pos, neg])
    labels = np.concatenate([np.ones(len(pos), np.float32), np.zeros(len(neg), np.float32)])
    angles = rng.uniform(0, 2 * math.pi, len(centres))
    mirror = rng.random(len(centres)) < 0.5
    return centres, labels, angles, mirror
