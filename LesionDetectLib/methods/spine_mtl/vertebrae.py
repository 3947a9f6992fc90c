"""Which slices belong to which vertebra, and the paper's vertebra-level vote.

Vertebra identity comes, in this order, from
- the dataset's labels ("slices" entries name their vertebra) when training and evaluating;
- a vertebra segmentation the user gives on a new CT: TotalSegmentator's multilabel file
  (its class numbers, v2 by default), a folder of its per-vertebra files
  (`vertebrae_L1.nii.gz`, ...), or a Slicer segmentation (`.seg.nrrd`) with one segment per
  vertebra named like `vertebrae_L1` or `L1`; it must lie on the CT's grid;
- else the built-in split along z (`split_along_z`): the mean HU in an 8 mm disc at the
  vertebral body (the largest hole-filled bone region near the column's centre) dips at every
  intervertebral disc, so the disc levels are the minima of that profile at soft-tissue values
  (at most `disc_hu`, 40 HU below their neighbours) at least `vertebra_min_height_mm` apart,
  within each run of slices that hold the column (a lytic lesion filling a body's middle can
  split it in two; thick slices blur discs, see `split_along_z`).  Those vertebrae are numbered V1, V2, ... from the head down (their names
  are unknown).

The vote (`vote`): per vertebra count the slices predicted blastic, mixed and lytic; the type
with the largest count is the vertebra's when the count is at least the fraction
`vertebra_min_fraction` of the vertebra's slices (a fraction, so one threshold serves any
slice thickness; chosen on the training data), else the vertebra is normal.  Posterolateral
involvement is voted the same way over unilateral and bilateral with `vertebra_pi_min_fraction`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from scipy import ndimage, signal

from ...errors import input_error
from ...geometry import Geometry
from .data import BONE_QUALITY, PI_NAMES, POSTEROLATERAL

SPINE_ORDER = [f"C{n}" for n in range(1, 8)] + [f"T{n}" for n in range(1, 13)] + [f"L{n}" for n in range(1, 6)] + \
    ["S1"]
# TotalSegmentator "total" task class numbers of the vertebrae: v2 (2023-) and v1
TOTALSEGMENTATOR = {
    "v2": {26: "S1", **{27 + n: f"L{5 - n}" for n in range(5)}, **{32 + n: f"T{12 - n}" for n in range(12)},
           **{44 + n: f"C{7 - n}" for n in range(7)}},
    "v1": {**{18 + n: f"L{5 - n}" for n in range(5)}, **{23 + n: f"T{12 - n}" for n in range(12)},
           **{35 + n: f"C{7 - n}" for n in range(7)}},
}
NAME = re.compile(r"^(?:vertebrae?[_ ]?)?([CTLS])(\d{1,2})$", re.IGNORECASE)


@dataclass
class Vertebra:
    name: str
    slices: list[int]
    centre: tuple[float, float, float] | None = None  # LPS mm of the vertebral body's centre
    mask: np.ndarray | None = field(default=None, repr=False)  # (z, y, x) bool when segmented


def vertebra_name(text: str) -> str | None:
    """"L1" for "vertebrae_L1", "L1", "vertebra L1" ...; None for other names."""
    m = NAME.match(text.strip().replace(".nii.gz", "").replace(".nii", "").replace(".nrrd", ""))
    return f"{m.group(1).upper()}{int(m.group(2))}" if m else None


def read_segmentation(path, geometry: Geometry, labels: str = "v2") -> list[Vertebra]:
    """The vertebrae of a user's segmentation on the CT's grid (module docstring)."""
    path = Path(path)
    if not path.exists():
        raise input_error(path, "not found (the vertebra segmentation)")
    masks: dict[str, np.ndarray] = {}
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if vertebra_name(p.name.split(".")[0]) and
                       p.name.endswith((".nii.gz", ".nii", ".nrrd")))
        for f in files:
            masks[vertebra_name(f.name.split(".")[0])] = _on_grid(f, geometry) > 0
    elif path.name.endswith(".seg.nrrd"):
        from ...segnrrd import read_segmentation as read_seg

        seg = read_seg(path)
        if seg.geometry is not None and not seg.geometry.same_grid(geometry, tol=1e-3):
            raise input_error(path, "lies on another grid than the CT (size, spacing, origin or direction differ); "
                                    "export the segmentation with the CT as its reference geometry")
        for s in seg.segments:
            name = vertebra_name(s.name)
            if name:
                masks[name] = seg.mask(s.id, geometry) > 0
    else:
        values = _on_grid(path, geometry)
        table = TOTALSEGMENTATOR.get(labels)
        if table is None:
            raise input_error(path, f"unknown vertebra label table {labels!r}; use v2 or v1 (TotalSegmentator)")
        for value, name in table.items():
            inside = values == value
            if inside.any():
                masks[name] = inside
    masks = {k: v for k, v in masks.items() if v.any()}
    if not masks:
        raise input_error(path, "holds no vertebra labels (TotalSegmentator class numbers, files or segments named "
                                "like vertebrae_L1 / L1)")
    out = []
    for name, mask in masks.items():
        zs = np.nonzero(mask.any(axis=(1, 2)))[0]
        centre = np.argwhere(mask).mean(axis=0)  # (z, y, x)
        out.append(Vertebra(name, [int(z) for z in zs], tuple(geometry.index_to_lps(centre[::-1])), mask))
    return _assign_shared_slices(out)


def _on_grid(path: Path, geometry: Geometry) -> np.ndarray:
    from ...io import read_image

    image = read_image(path)
    if image.GetDimension() != 3 or not Geometry.of(image).same_grid(geometry, tol=1e-3):
        raise input_error(path, f"lies on another grid than the CT (size {image.GetSize()} vs {geometry.size}, or "
                                "spacing, origin or direction differ); give the segmentation made on this CT")
    return sitk.GetArrayFromImage(image)


def _assign_shared_slices(vertebrae: list[Vertebra]) -> list[Vertebra]:
    """A slice two vertebrae touch (end plates) goes to the one with more voxels in it."""
    owner: dict[int, tuple[int, str]] = {}
    for v in vertebrae:
        for z in v.slices:
            count = int(v.mask[z].sum()) if v.mask is not None else 1
            if z not in owner or count > owner[z][0]:
                owner[z] = (count, v.name)
    for v in vertebrae:
        v.slices = [z for z in v.slices if owner[z][1] == v.name]
    order = {n: i for i, n in enumerate(SPINE_ORDER)}
    return sorted([v for v in vertebrae if v.slices], key=lambda v: order.get(v.name, len(order)))


def split_along_z(hu: np.ndarray, geometry: Geometry, centres_lps: np.ndarray, found: np.ndarray,
                  config: dict) -> list[Vertebra]:
    """The built-in split of the spine into vertebrae at the disc levels (module docstring),
    over the slices where the column was found."""
    dz = abs(float(geometry.matrix[2, 2]))
    idx = geometry.lps_to_index(np.c_[centres_lps, np.zeros(len(centres_lps))])[:, :2]
    body = np.full((hu.shape[0], 2), np.nan)  # (i, j) of the vertebral body in each slice
    profile = np.full(hu.shape[0], np.nan)
    grid = np.mgrid[0:hu.shape[1], 0:hu.shape[2]]  # (j, i) of every pixel of a slice
    for k in np.nonzero(found)[0]:
        body[k], profile[k] = _body_profile(hu[k], geometry, idx[k], grid, config)
    min_height = float(config["vertebra_min_height_mm"])
    out = []
    for run in _runs(np.isfinite(profile)):
        values = profile[run]
        if len(values) >= 3 and dz < 2.0:  # thin slices: smooth out noise below a disc's thickness
            values = ndimage.gaussian_filter1d(values, sigma=2.0 / dz, mode="nearest")
        # a disc is a dip (40 HU below its neighbours, one per `vertebra_min_height_mm`) to
        # soft-tissue values (at most `disc_hu`; the bodies' own end-plate to mid-body variation
        # does not go that low); thick slices average a disc with its end plates, so a long run
        # of column (over 60 mm) without such a dip takes its dips as discs whatever their value
        dips, _ = signal.find_peaks(-values, distance=max(1, int(round(min_height / dz))), prominence=40.0)
        discs = [d for d in dips if values[d] <= float(config["disc_hu"])]
        if not discs and len(run) * dz > 60.0:
            discs = list(dips)
        bounds = [0, *[int(d) for d in discs], len(run)]
        for lo, hi in zip(bounds[:-1], bounds[1:]):
            if (hi - lo) * dz < 0.4 * min_height:  # a sliver at the column's end is not a vertebra
                continue
            slices = [int(k) for k in run[lo:hi]]
            i, j = np.nanmean(body[slices], axis=0)
            out.append(Vertebra("", slices, tuple(float(v) for v in geometry.index_to_lps([i, j, np.mean(slices)]))))
    out.sort(key=lambda v: -v.centre[2])  # from the head down: LPS z grows towards the head
    for n, v in enumerate(out, 1):
        v.name = f"V{n}"
    return out


def _body_profile(hu_slice: np.ndarray, geometry: Geometry, centre_ij, grid, config) -> tuple[np.ndarray, float]:
    """((i, j) of the vertebral body, mean HU (clipped to -100..400) in an 8 mm disc at it): the
    body is the largest closed, hole-filled bone region near the column's centre; discs are dark.
    `grid` is np.mgrid over the slice, (j, i)."""
    sx, sy = geometry.spacing[0], geometry.spacing[1]
    jj, ii = grid
    near = ((ii - centre_ij[0]) * sx) ** 2 + ((jj - centre_ij[1]) * sy) ** 2 <= float(config["centre_radius_mm"]) ** 2
    bone = ndimage.binary_closing((hu_slice >= float(config["bone_hu"])) & near, iterations=max(1, round(3 / sx)))
    labels, n = ndimage.label(ndimage.binary_fill_holes(bone))
    if n:
        largest = 1 + int(np.argmax(ndimage.sum(labels > 0, labels, range(1, n + 1))))
        cj, ci = np.argwhere(labels == largest).mean(axis=0)
    else:
        ci, cj = centre_ij
    disc = ((ii - ci) * sx) ** 2 + ((jj - cj) * sy) ** 2 <= 8.0 ** 2
    return np.array([ci, cj]), float(np.clip(hu_slice[disc], -100, 400).mean())


def _runs(flags: np.ndarray) -> list[np.ndarray]:
    """Index arrays of the runs of consecutive True values."""
    labels, n = ndimage.label(flags)
    return [np.nonzero(labels == r)[0] for r in range(1, n + 1)]


def vote(quality: np.ndarray, side: np.ndarray, min_fraction: float, pi_min_fraction: float
         ) -> tuple[str, str, dict[str, float]]:
    """(bone quality, posterolateral involvement, vote fractions) of one vertebra from its
    slices' predicted class ids (module docstring)."""
    n = max(1, len(quality))
    counts = {c: int(np.sum(quality == i)) for i, c in enumerate(BONE_QUALITY)}
    lesion = max(BONE_QUALITY[1:], key=lambda c: (counts[c], -BONE_QUALITY.index(c)))
    decided = lesion if counts[lesion] > 0 and counts[lesion] >= min_fraction * n else "normal"
    sides = {c: int(np.sum(side == i)) for i, c in enumerate(POSTEROLATERAL)}
    involved = max(POSTEROLATERAL[1:], key=lambda c: sides[c])
    pi = involved if sides[involved] > 0 and sides[involved] >= pi_min_fraction * n else "normal"
    fractions = {c: counts[c] / n for c in BONE_QUALITY}
    fractions.update({PI_NAMES[c]: sides[c] / n for c in POSTEROLATERAL})
    return decided, pi, fractions
