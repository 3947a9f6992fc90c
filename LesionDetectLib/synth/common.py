"""Shared pieces of the synthetic-study generators: parameters, seeding, shapes, noise.

Shapes are drawn in "array millimetres": a voxel (z, y, x) sits at (z*sz, y*sy, x*sx) mm.
Only the finished case is placed in physical (LPS) space, by its `Geometry`.  Every shape
is evaluated on its own bounding box, never on the whole volume, so a full-size case with
hundreds of shapes stays fast.

Solid objects (bones, organs, lesions) are described by a *depth* field: millimetres inside
the surface (positive inside, negative outside).  Several primitives are merged with
`paint_max`; a cortex is then simply `0 < depth <= thickness`.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial.transform import Rotation

from ..errors import LesionDetectError
from ..findings import LesionBox, LesionPoint
from ..geometry import Geometry

SIZES = ("small", "full")
OUTSIDE = np.float32(-1e4)  # depth of "far outside every shape"


# --- parameters ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    default: Any
    help: str
    # left out of dataset.json's generator record while at its default, so that the studies made
    # before the parameter existed stay byte-identical (resolve_params fills the default back in)
    quiet: bool = False


# Knobs every kind has, so methods can be tested from easy to hard with the same words.
COMMON_PARAMS = {
    "contrast": Param(1.0, "lesion contrast multiplier (0.3 = faint, 2 = obvious)"),
    "lesion_size": Param(1.0, "lesion size multiplier applied to the kind's size range"),
    "lesion_count": Param(1.0, "multiplier of the mean number of lesions per case"),
    "noise": Param(1.0, "image noise multiplier (0 = noiseless)"),
}


def resolve_params(kind_params: dict[str, Param], overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Defaults of COMMON_PARAMS + the kind's own, with `overrides` converted to each default's type."""
    spec = {**COMMON_PARAMS, **kind_params}
    values = {k: p.default for k, p in spec.items()}
    for key, raw in (overrides or {}).items():
        if key not in spec:
            raise LesionDetectError(f"unknown synth parameter {key!r}; known: {', '.join(sorted(spec))}")
        default = spec[key].default
        try:
            if isinstance(default, bool):
                value = raw if isinstance(raw, bool) else str(raw).strip().lower() in ("1", "true", "yes", "on")
            else:
                value = type(default)(raw)
        except (TypeError, ValueError):
            raise LesionDetectError(f"synth parameter {key}={raw!r}: expected a {type(default).__name__}") from None
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise LesionDetectError(f"synth parameter {key}={raw!r}: must not be negative")
        values[key] = value
    return values


def parse_param_strings(items: list[str] | None) -> dict[str, str]:
    """["contrast=0.5", "skull_stripped=1"] -> {"contrast": "0.5", "skull_stripped": "1"}."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise LesionDetectError(f"--param {item!r}: expected KEY=VALUE")
        out[key.strip()] = value.strip()
    return out


def case_rng(kind: str, seed: int, index: int, stream: int = 0) -> np.random.Generator:
    """A random stream of one case: depends only on (kind, seed, case index, stream)."""
    return np.random.default_rng(np.random.SeedSequence([zlib.crc32(kind.encode()), int(seed), int(index),
                                                          int(stream)]))


def case_id(kind: str, seed: int, index: int) -> str:
    return f"{kind.replace('-', '_')}_{seed}_{index:04d}"


# --- one generated case -------------------------------------------------------------------
@dataclass
class SynthCase:
    """One generated study in memory.

    `image` is a SimpleITK image (3-D, or 2-D for bone scans); `mask` (lesion labels) and
    `roi` (bone/brain/liver mask) are uint8 (z, y, x) arrays on the image grid (2-D arrays
    for 2-D images).  `entry` holds extra dataset.json keys of the case ("label",
    "key_slices", "slices").  `findings` describes every drawn lesion (type, centre voxel
    (z, y, x), radius mm, contrast) for tests and previews.
    """

    id: str
    patient: str
    image: sitk.Image
    mask: np.ndarray | None = None
    roi: np.ndarray | None = None
    points: list[LesionPoint] = field(default_factory=list)
    boxes: list[LesionBox] = field(default_factory=list)
    entry: dict[str, Any] = field(default_factory=dict)
    findings: list[dict[str, Any]] = field(default_factory=list)
    mask_labels: dict[str, str] = field(default_factory=lambda: {"0": "background", "1": "lesion"})

    @property
    def array(self) -> np.ndarray:
        return sitk.GetArrayFromImage(self.image)

    @property
    def geometry(self) -> Geometry:
        return Geometry.of(self.image)


def point_at_voxel(geometry: Geometry, zyx, label: str = "lesion") -> LesionPoint:
    """A lesion point exactly at the centre of voxel (z, y, x)."""
    z, y, x = (int(v) for v in zyx)
    return LesionPoint(position=geometry.index_to_lps([x, y, z]), score=1.0, label=label)


def instance_boxes(geometry: Geometry, instances: np.ndarray, labels: dict[int, str]) -> list[LesionBox]:
    """One axis-aligned box per instance id (1..n) enclosing all its voxels."""
    boxes = []
    for n, sl in enumerate(ndimage.find_objects(instances), start=1):
        if sl is None or n not in labels:
            continue
        lo = [s.start for s in sl][::-1]
        hi = [s.stop - 1 for s in sl][::-1]
        if instances.ndim == 2:
            lo, hi = lo + [0], hi + [0]
        boxes.append(LesionBox.from_index_range(geometry, lo, hi, label=labels[n], extra={"lesion": n}))
    return boxes


# --- shapes on bounding boxes ---------------------------------------------------------------
def region(shape, spacing, center, half) -> tuple[tuple[slice, ...], list[np.ndarray]] | None:
    """Slices of the voxels within `half` mm of `center` (array mm, per axis) and open grids
    of their offsets from the centre in mm; None if the region misses the array."""
    sl, grids = [], []
    for n, (c, h, s, sp) in enumerate(zip(center, half, shape, spacing)):
        lo = max(int(np.floor((c - h) / sp)), 0)
        hi = min(int(np.ceil((c + h) / sp)) + 1, s)
        if hi <= lo:
            return None
        sl.append(slice(lo, hi))
        g = np.arange(lo, hi, dtype=np.float32) * np.float32(sp) - np.float32(c)
        grids.append(g.reshape([-1 if k == n else 1 for k in range(len(shape))]))
    return tuple(sl), grids


def paint_max(volume: np.ndarray, sl, values: np.ndarray) -> None:
    np.maximum(volume[sl], values, out=volume[sl])


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    return Rotation.random(random_state=rng).as_matrix().astype(np.float32)


def lobulation(rng: np.random.Generator, amplitude: float, terms: int = 3) -> Callable[[list[np.ndarray]], np.ndarray]:
    """A smooth random radius factor over directions: 1 + amplitude * sum of cosines of
    (u . d_k), so blobs come out lobulated instead of perfectly ellipsoidal."""
    dirs = rng.normal(size=(terms, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    freq = rng.uniform(2.0, 4.5, terms)
    phase = rng.uniform(0, 2 * np.pi, terms)
    weight = rng.uniform(0.5, 1.0, terms)
    weight /= weight.sum()

    def factor(unit: list[np.ndarray]) -> np.ndarray:
        total = 0.0
        for d, f, p, w in zip(dirs, freq, phase, weight):
            total = total + w * np.cos(f * (unit[0] * d[0] + unit[1] * d[1] + unit[2] * d[2]) + p)
        return 1.0 + amplitude * total

    return factor


def ellipsoid_depth(shape, spacing, center, radii, rotation=None, lobes=None):
    """(slices, depth mm) of a (rotated, optionally lobulated) ellipsoid on its bounding box.

    depth ~ (1 - normalised radius) * smallest radius: exact on the axes, smooth elsewhere,
    positive inside.  `radii` are along the ellipsoid's own axes (z, y, x before rotation).
    """
    radii = np.asarray(radii, dtype=np.float32)
    reach = float(radii.max()) * (1.35 if lobes is not None else 1.0) + max(spacing)
    reg = region(shape, spacing, center, [reach] * len(shape))
    if reg is None:
        return None
    sl, g = reg
    if rotation is not None:
        r = rotation  # local = R^T offset
        g = [sum(g[i] * r[i, k] for i in range(len(g))) for k in range(len(g))]
    q2 = sum((gk / rk) ** 2 for gk, rk in zip(g, radii))
    q = np.sqrt(q2)
    if lobes is not None:
        norm = np.sqrt(sum(gk * gk for gk in g)) + np.float32(1e-6)
        q = q / lobes([gk / norm for gk in g])
    return sl, ((1.0 - q) * radii.min()).astype(np.float32)


def capsule_depth(shape, spacing, p0, p1, r0, r1):
    """(slices, depth mm) of a tapered capsule from p0 (radius r0) to p1 (radius r1), in 2-D or 3-D."""
    p0, p1 = np.asarray(p0, np.float32), np.asarray(p1, np.float32)
    rmax = max(r0, r1) + max(spacing)
    center = (p0 + p1) / 2
    half = np.abs(p1 - p0) / 2 + rmax
    reg = region(shape, spacing, center, half)
    if reg is None:
        return None
    sl, g = reg
    dims = range(len(shape))
    axis = p1 - p0
    length2 = float(axis @ axis) or 1e-6
    # offsets from p0 instead of the centre
    rel = [gk + (center[k] - p0[k]) for k, gk in enumerate(g)]
    t = np.clip(sum(rel[k] * axis[k] for k in dims) / length2, 0.0, 1.0)
    dist = np.sqrt(sum((rel[k] - t * axis[k]) ** 2 for k in dims))
    return sl, (r0 + (r1 - r0) * t - dist).astype(np.float32)


def paint_polyline(volume: np.ndarray, spacing, points, radii, scale: float = 1.0) -> None:
    """Tube along a polyline (array mm points, one radius per point) merged into a depth
    volume; depths are multiplied by `scale` (1 / cortex thickness for cortex units)."""
    for a, b, ra, rb in zip(points[:-1], points[1:], radii[:-1], radii[1:]):
        res = capsule_depth(volume.shape, spacing, a, b, float(ra), float(rb))
        if res is not None:
            paint_max(volume, res[0], res[1] * np.float32(scale))


# --- intensity helpers ----------------------------------------------------------------------
def smooth_noise(rng: np.random.Generator, shape, sigma_vox, std: float) -> np.ndarray:
    """Spatially correlated Gaussian noise with standard deviation `std` (float32)."""
    if std <= 0:
        return np.zeros(shape, np.float32)
    white = rng.standard_normal(size=shape, dtype=np.float32)
    if np.any(np.asarray(sigma_vox) > 0):
        white = ndimage.gaussian_filter(white, sigma_vox, mode="nearest", truncate=3.0)
        white *= np.float32(1.0 / max(float(white.std()), 1e-6))
    return white * np.float32(std)


def coarse_noise(rng: np.random.Generator, shape, spacing, scale_mm: float, std: float) -> np.ndarray:
    """Smooth random field varying over about `scale_mm`: white noise on a coarse grid,
    interpolated up (far cheaper than a wide Gaussian on the full grid)."""
    coarse = [max(int(np.ceil(n * s / scale_mm)) + 2, 2) for n, s in zip(shape, spacing)]
    field_ = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), 0.7, mode="nearest")
    field_ *= np.float32(std / max(float(field_.std()), 1e-6))
    zoom = [n / c for n, c in zip(shape, coarse)]
    out = ndimage.zoom(field_, zoom, order=1, mode="nearest", grid_mode=True)
    return out[tuple(slice(0, n) for n in shape)].astype(np.float32)


def blur_mm(volume: np.ndarray, spacing, sigma_mm) -> np.ndarray:
    """Gaussian blur with a physical sigma (scanner resolution / partial volume)."""
    sigma = np.broadcast_to(np.asarray(sigma_mm, float), (volume.ndim,)) / np.asarray(spacing, float)
    return ndimage.gaussian_filter(volume, sigma, mode="nearest", truncate=3.0)


def smoothstep(edge0: float, edge1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - edge0) / (edge1 - edge0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def log_uniform(rng: np.random.Generator, low: float, high: float, skew: float = 1.0) -> float:
    """A size between low and high, as common per octave (skew 1) or favouring small ones
    (skew > 1)."""
    return float(np.exp(np.log(low) + (np.log(high) - np.log(low)) * rng.random() ** skew))


def overlaps(findings: list[dict], centre_mm, reach_mm: float) -> bool:
    """Whether a new lesion reaching `reach_mm` from `centre_mm` could touch an earlier one
    (findings carry "center_mm" and "reach_mm" while a case is being drawn)."""
    return any(np.linalg.norm(np.asarray(centre_mm) - f["center_mm"]) < reach_mm + f["reach_mm"] for f in findings)
