"""Volume parsing: the lesion probability of the 15 mm patch at every bone voxel.

The paper classifies one patch per bone voxel (12 h for a 512 x 512 x 100 CT here).  This
module computes the same map densely, slice by slice:

1. Output grid.  Per axial slice, grid nodes every S patch pixels (S = `parse_stride`,
   16 -> 3.75 mm for the 64 px / 15 mm paper model), anchored at pixel (0, 0).  Only nodes
   next to a bone voxel are needed (the four that surround it).
2. Regions.  The needed nodes are covered by rectangles (`DenseParser.regions`): the rows
   are cut into bands of at most `parse_tile` node rows, each band's run of needed node
   columns is one rectangle, and the cuts are chosen by dynamic programming to compute the
   fewest pixels, since every rectangle costs its area plus one window and the model's
   context of overhang (a compact pelvis becomes one rectangle, a rib cage's empty middle
   is left out).  The slice under a rectangle's patches is resampled once with
   `grid_sample` onto the patch pixel grid (the exact sample points the per-patch
   extraction uses) and the network runs on it as a fully convolutional net
   (network.DenseNet).  Nodes away from bone cost nothing.
3. Map.  Node probabilities are interpolated bilinearly to every bone voxel; outside the
   bone mask the map is 0.  The map has the CT's geometry.

Memory is bounded by one slice plus one band region.  Differences from patch-by-patch
evaluation (measured by `lesiondetect bench bone-ct-parse`, results in the README): at the
nodes, VGG's zero padding beyond a context-free patch is real image inside a region (none
for a model with `context_pixels` >= 90, network.py); between nodes the map is
interpolated; `parse_precision` bfloat16 runs the network in bfloat16.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

from ...errors import LesionDetectError
from ...geometry import Geometry
from ...prediction import LesionPoint
from ...progress import progress
from .network import DenseNet, PatchNet, dense_flops
from .data import extract_patches, pixel_step, sample_slice


@dataclass
class ParseSettings:
    patch_mm: float = 15.0
    patch_pixels: int = 64
    stride: int = 16  # patch pixels between grid nodes
    tile: int = 8  # most node rows per band, which bounds memory (see DenseParser.regions)
    context: int = 0  # the classifier's context (patch pixels on every side), network.PatchNet
    precision: str = "float32"  # or "bfloat16": 1.5-1.8x faster here (a CPU with AVX-512 BF16)

    @property
    def window(self) -> int:
        """Input pixels one node's classifier sees: its patch and the context on both sides."""
        return self.patch_pixels + 2 * self.context

    @classmethod
    def of(cls, config: dict, **override) -> "ParseSettings":
        s = cls(patch_mm=float(config["patch_mm"]), patch_pixels=int(config["patch_pixels"]),
                stride=int(config["parse_stride"]), tile=int(config["parse_tile"]),
                context=int(config.get("context_pixels", 0)), precision=str(config.get("parse_precision", "float32")))
        for k, v in override.items():
            setattr(s, k, type(getattr(s, k))(v))
        if s.precision not in ("float32", "bfloat16"):
            raise LesionDetectError(f"parse_precision must be float32 or bfloat16, not {s.precision!r}")
        if s.tile < 1:
            raise LesionDetectError(f"parse_tile must be at least 1 node row, not {s.tile}")
        return s


def node_spacing(spacing_xyz, settings: ParseSettings) -> tuple[float, float]:
    """Grid node spacing (gx, gy) in image pixels."""
    sx, sy = pixel_step(spacing_xyz, settings.patch_mm, settings.patch_pixels)
    return settings.stride * sx, settings.stride * sy


def needed_nodes(bone_slice: np.ndarray, gx: float, gy: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(need (na, nb) bool, bone ys, bone xs): the nodes surrounding every bone pixel."""
    h, w = bone_slice.shape
    na, nb = int((h - 1) // gy) + 2, int((w - 1) // gx) + 2
    ys, xs = np.nonzero(bone_slice)
    need = np.zeros((na, nb), bool)
    ca, cb = (ys / gy).astype(int), (xs / gx).astype(int)
    for da in (0, 1):
        for db in (0, 1):
            need[ca + da, cb + db] = True
    return need, ys, xs


class DenseParser:
    """Dense evaluation of a trained PatchNet over bone masks (see the module docstring)."""

    def __init__(self, model: PatchNet, settings: ParseSettings, device: torch.device):
        self.settings, self.device = settings, device
        # channels-last: oneDNN's faster convolution layout (1.3-1.4x here, float32 and bfloat16)
        self.net = DenseNet(model, settings.stride, settings.patch_pixels).to(
            device, memory_format=torch.channels_last).eval()
        self.flops = 0.0  # executed by the dense network so far (for benchmarks)

    def regions(self, need: np.ndarray) -> list[tuple[int, int, int, int]]:
        """Rectangles of nodes (a0, a1, b0, b1), inclusive, covering every needed node with few
        input pixels.  The needed rows are cut into bands of at most `tile` rows (which bounds
        memory) and each band's runs of needed columns become one rectangle each, rows shrunk
        to the run; the band cuts are chosen by dynamic programming to minimise the pixels
        computed, by rows and by columns, whichever is cheaper.  So a compact pelvis is one
        rectangle and a rib cage's wide empty middle is not computed."""
        by_rows = self._banded(need)
        by_cols = [(a0, a1, b0, b1) for b0, b1, a0, a1 in self._banded(need.T)]
        return min(by_rows, by_cols, key=lambda plan: sum(self.region_pixels(*r) for r in plan))

    def region_pixels(self, a0: int, a1: int, b0: int, b1: int) -> int:
        """Input pixels the network runs on for the node rectangle (a0, a1, b0, b1), inclusive:
        the nodes' span plus one window and its context of overhang."""
        s = self.settings
        return ((a1 - a0) * s.stride + s.window) * ((b1 - b0) * s.stride + s.window)

    def _merge_gap(self) -> int:
        # a gap of columns is computed rather than split at when that costs less than a
        # second region's overhang (one window and its context)
        s = self.settings
        return max(1, s.window // s.stride - 1)

    def _runs(self, cols: np.ndarray) -> list[tuple[int, int]]:
        """Runs (c0, c1) of needed columns, merged across gaps cheaper to compute than to split at."""
        idx = np.flatnonzero(cols)
        if len(idx) == 0:
            return []
        breaks = np.flatnonzero(np.diff(idx) > self._merge_gap())
        return list(zip(idx[np.r_[0, breaks + 1]].tolist(), idx[np.r_[breaks, len(idx) - 1]].tolist()))

    def _band_pixels(self, columns: np.ndarray) -> np.ndarray:
        """Pixels of bands 1, 2, ... k rows high whose needed columns are `columns` (k, w):
        per run, the region_pixels of its rectangle (rows not shrunk), summed (vectorised)."""
        s = self.settings
        k = len(columns)
        r, c = np.nonzero(columns)
        d = np.diff(c)
        joined = (r[1:] == r[:-1]) & (d <= self._merge_gap())
        span = np.bincount(r[1:][joined], weights=d[joined], minlength=k)
        runs = np.bincount(r, minlength=k) - np.bincount(r[1:][joined], minlength=k)
        return (np.arange(k) * s.stride + s.window) * (span * s.stride + runs * s.window)

    def _banded(self, need: np.ndarray) -> list[tuple[int, int, int, int]]:
        rows = np.flatnonzero(need.any(axis=1))
        if len(rows) == 0:
            return []
        r0, n = int(rows[0]), int(rows[-1] - rows[0] + 1)
        # best[j]: fewest pixels covering rows r0 .. r0 + j - 1; cut[j]: where its last band starts
        best, cut = np.zeros(n + 1), np.zeros(n + 1, int)
        for j in range(1, n + 1):
            starts = np.arange(j - 1, max(j - self.settings.tile, 0) - 1, -1)  # band heights 1, 2, ...
            columns = np.logical_or.accumulate(need[r0 + starts], axis=0)
            cost = best[starts] + self._band_pixels(columns)
            cut[j] = starts[np.argmin(cost)]
            best[j] = cost.min()
        out, j = [], n
        while j > 0:
            band = need[r0 + cut[j]:r0 + j]
            for c0, c1 in self._runs(band.any(axis=0)):
                used = np.flatnonzero(band[:, c0:c1 + 1].any(axis=1))
                out.append((r0 + cut[j] + int(used[0]), r0 + cut[j] + int(used[-1]), c0, c1))
            j = cut[j]
        return out[::-1]

    @torch.no_grad()
    def slice_nodes(self, slice_hu: np.ndarray, need: np.ndarray, steps: tuple[float, float]) -> np.ndarray:
        """Logits at the needed nodes of one slice (NaN where not computed), (na, nb)."""
        s = self.settings
        S, M, P = s.stride, s.context, s.patch_pixels  # M: a multiple of 32, so of S
        out = np.full(need.shape, np.nan, np.float32)
        gx, gy = S * steps[0], S * steps[1]
        src = torch.from_numpy(np.ascontiguousarray(slice_hu, dtype=np.float32)).to(self.device)
        crop = M // S
        for a0, a1, b0, b1 in self.regions(need):
            h, w = (a1 - a0) * S + s.window, (b1 - b0) * S + s.window
            # patch-pixel sample points: node (a, b)'s window starts M + (a - a0) * S samples in,
            # so every window has at least its M pixels of context around it
            ys = a0 * gy + (torch.arange(h, dtype=torch.float64) - M - (P - 1) / 2.0) * steps[1]
            xs = b0 * gx + (torch.arange(w, dtype=torch.float64) - M - (P - 1) / 2.0) * steps[0]
            yy, xx = torch.meshgrid(ys, xs, indexing="ij")
            grid = torch.stack([xx, yy], dim=-1).to(torch.float32).to(self.device)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=s.precision == "bfloat16"):
                logits = self.net(sample_slice(src, grid[None])[:, None])[0]
            out[a0:a1 + 1, b0:b1 + 1] = logits[crop:crop + a1 - a0 + 1, crop:crop + b1 - b0 + 1].float().cpu().numpy()
            self.flops += dense_flops(self.net, h, w)
        return out

    def parse_slice(self, slice_hu: np.ndarray, bone_slice: np.ndarray, spacing_xyz) -> np.ndarray:
        """Probability (H, W) float32 at every bone pixel of one slice, 0 elsewhere."""
        return self.parse_slice_with_nodes(slice_hu, bone_slice, spacing_xyz)[0]

    def parse_slice_with_nodes(self, slice_hu: np.ndarray, bone_slice: np.ndarray, spacing_xyz
                               ) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
        """(probability map (H, W), node probabilities (na, nb) with NaN where not computed,
        node spacing (gx, gy) in pixels: node (a, b) lies at pixel (y, x) = (a * gy, b * gx))."""
        steps = pixel_step(spacing_xyz, self.settings.patch_mm, self.settings.patch_pixels)
        gx, gy = node_spacing(spacing_xyz, self.settings)
        prob = np.zeros(bone_slice.shape, np.float32)
        if not bone_slice.any():
            return prob, np.zeros((0, 0), np.float32), (gx, gy)
        need, ys, xs = needed_nodes(bone_slice, gx, gy)
        nodes = 1.0 / (1.0 + np.exp(-self.slice_nodes(slice_hu, need, steps)))
        prob[ys, xs] = ndimage.map_coordinates(np.nan_to_num(nodes, nan=0.0), [ys / gy, xs / gx], order=1,
                                               mode="nearest")
        return prob, nodes, (gx, gy)

    def parse_volume(self, hu: np.ndarray, bone: np.ndarray, spacing_xyz, desc: str = "volume parsing"
                     ) -> np.ndarray:
        """Probability map (z, y, x) float32 of a whole CT, streamed slice by slice."""
        prob = np.zeros(hu.shape, np.float32)
        for z in progress(range(hu.shape[0]), desc=desc, unit="slice"):
            prob[z] = self.parse_slice(hu[z], bone[z], spacing_xyz)
        return prob


@torch.no_grad()
def per_patch_probabilities(model: PatchNet, hu: np.ndarray, spacing_xyz, centres_zyx: np.ndarray,
                            settings: ParseSettings, device: torch.device, batch: int = 256) -> np.ndarray:
    """The paper's volume parsing at given voxel positions: extract each patch (with the
    model's context), classify it."""
    out = np.empty(len(centres_zyx), np.float32)
    model = model.eval()
    for start in range(0, len(centres_zyx), batch):
        patches = extract_patches(hu, spacing_xyz, centres_zyx[start:start + batch], settings.patch_mm,
                                  settings.patch_pixels, context=settings.context)
        out[start:start + batch] = torch.sigmoid(model(patches.to(device))).float().cpu().numpy()
    return out


def local_maxima(prob: np.ndarray, spacing_xyz, min_score: float, radius_mm: float, max_count: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(voxel indices zyx (n, 3), scores (n,)) of the map's local maxima (within `radius_mm`)
    scoring >= min_score, one per plateau, highest first, at most `max_count`."""
    sx, sy, sz = spacing_xyz
    size = [2 * max(1, int(round(radius_mm / s))) + 1 for s in (sz, sy, sx)]
    peaks = (prob >= min_score) & (prob > 0) & (prob == ndimage.maximum_filter(prob, size=size, mode="constant"))
    labels, n = ndimage.label(peaks)
    if n == 0:
        return np.zeros((0, 3), int), np.zeros(0, np.float32)
    positions = np.array(ndimage.maximum_position(prob, labels, range(1, n + 1)), dtype=int).reshape(-1, 3)
    scores = prob[tuple(positions.T)]
    order = np.argsort(-scores, kind="stable")[:max_count]
    return positions[order], scores[order]


def find_candidates(prob: np.ndarray, geometry: Geometry, min_score: float, radius_mm: float,
                    max_candidates: int) -> list[LesionPoint]:
    """Lesion candidates: the map's local maxima (`local_maxima`) as points with scores."""
    positions, scores = local_maxima(prob, geometry.spacing, min_score, radius_mm, max_candidates)
    if len(positions) == 0:
        return []
    lps = geometry.index_to_lps(positions[:, ::-1].astype(float))
    return [LesionPoint(position=p, score=float(s)) for p, s in zip(lps, scores)]


def lesion_components(prob: np.ndarray, spacing_xyz, threshold: float, min_mm3: float, score: str = "max"
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(kept-component mask (z, y, x) uint8, centres zyx (n, 3) continuous, scores (n,)) of the
    map's connected regions >= `threshold` (face connectivity) of at least `min_mm3`, each
    scored by the `score` ("max" or "mean") of its probabilities and placed at its
    probability-weighted centroid; highest score first."""
    if score not in ("max", "mean"):
        raise LesionDetectError(f"component_score must be max or mean, not {score!r}")
    sx, sy, sz = (float(v) for v in spacing_xyz)
    labels, n = ndimage.label(prob >= threshold)
    if n == 0:
        return np.zeros(prob.shape, np.uint8), np.zeros((0, 3)), np.zeros(0, np.float32)
    index = np.arange(1, n + 1)
    volume = np.bincount(labels.ravel(), minlength=n + 1)[1:] * (sx * sy * sz)
    keep = volume >= float(min_mm3)
    reduce = ndimage.maximum if score == "max" else ndimage.mean
    scores = np.asarray(reduce(prob, labels, index), np.float32).reshape(-1)
    centres = np.array(ndimage.center_of_mass(prob, labels, index), dtype=float).reshape(-1, 3)
    mask = np.concatenate([[False], keep])[labels].astype(np.uint8)
    order = np.argsort(-scores[keep], kind="stable")
    return mask, centres[keep][order], scores[keep][order]


def find_component_candidates(prob: np.ndarray, geometry: Geometry, threshold: float, min_mm3: float,
                              score: str, max_candidates: int) -> tuple[list[LesionPoint], np.ndarray]:
    """(lesion points, kept-component mask): `lesion_components` as points in LPS, at most
    `max_candidates`."""
    mask, centres, scores = lesion_components(prob, geometry.spacing, threshold, min_mm3, score)
    centres, scores = centres[:max_candidates], scores[:max_candidates]
    if len(centres) == 0:
        return [], mask
    lps = geometry.index_to_lps(centres[:, ::-1])
    return [LesionPoint(position=p, score=float(s)) for p, s in zip(lps, scores)], mask
