"""PNG montages of generated cases: the image with its ground truth outlined.

Lesion mask in red (second label, e.g. sclerotic, in yellow), ROI (bone/brain/liver) in
green, lesion points as cyan crosses, boxes as magenta rectangles (or key-slice boxes).
3-D cases show the axial slices with the most lesion voxels plus one coronal reformat.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..files import atomic_path  # noqa: E402
from .common import SynthCase  # noqa: E402

MASK_COLOURS = {1: "red", 2: "yellow", 3: "orange"}


def _outline(ax, mask2d, roi2d):
    if roi2d is not None and roi2d.any():
        ax.contour(roi2d, levels=[0.5], colors="lime", linewidths=0.5)
    if mask2d is not None:
        for value, colour in MASK_COLOURS.items():
            m = mask2d == value
            if m.any():
                ax.contour(m, levels=[0.5], colors=colour, linewidths=0.8)


def _aspect(spacing_row, spacing_col):
    return spacing_row / spacing_col


def save_preview(case: SynthCase, path: str | Path, window: tuple[float, float] | None, title: str = "") -> Path:
    """Write a PNG montage; `window` is (low, high) of the grey scale, or None for a
    scintigram (0 .. 99.5th percentile, inverted grey)."""
    image = case.array
    geometry = case.geometry
    sx, sy, sz = geometry.spacing
    # show anterior at the top whatever the row direction (the MNI grid runs posterior -> anterior)
    anterior_up = geometry.direction[4] >= 0
    if image.ndim == 2:
        fig, ax = plt.subplots(1, 1, figsize=(4, 4 * image.shape[0] / image.shape[1] + 0.4))
        if window is None:
            ax.imshow(image, cmap="gray_r", vmin=0, vmax=max(float(np.percentile(image, 99.5)), 1.0),
                      interpolation="nearest")
        else:
            ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest")
        _outline(ax, case.mask, case.roi)
        _points(ax, case, axis_slice=None)
        ax.set_title(f"{title} {case.id} label={case.entry.get('label')}", fontsize=8)
        ax.axis("off")
    else:
        slices = _interesting_slices(case, 5)
        crop = _content_box(image)
        fig, axes = plt.subplots(2, len(slices) + 1, figsize=(2.8 * (len(slices) + 1), 5.6))
        for col, k in enumerate(slices):
            extra = [s for s in case.entry.get("slices", []) if s["index"] == k]
            label = f" {extra[0]['vertebra']} {extra[0]['bone_quality']}/{extra[0]['posterolateral']}" if extra else ""
            for row in (0, 1):
                ax = axes[row, col]
                ax.imshow(image[k][crop], cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest",
                          aspect=_aspect(sy, sx), extent=_extent(crop))
                if row:
                    _outline(ax, None if case.mask is None else case.mask[k],
                             None if case.roi is None else case.roi[k])
                    _points(ax, case, axis_slice=k)
                    _key_boxes(ax, case, k)
                ax.set_xlim(crop[1].start - 0.5, crop[1].stop - 0.5)
                top, bottom = crop[0].start - 0.5, crop[0].stop - 0.5
                ax.set_ylim((bottom, top) if anterior_up else (top, bottom))
                ax.axis("off")
            axes[0, col].set_title(f"axial {k}{label}", fontsize=7)
        # coronal reformat through the first lesion (or the image centre)
        row = case.findings[0]["center_zyx"][1] if case.findings and "center_zyx" in case.findings[0] \
            else image.shape[1] // 2
        for r in (0, 1):
            ax = axes[r, -1]
            ax.imshow(image[:, row, :], cmap="gray", vmin=window[0], vmax=window[1], origin="lower",
                      interpolation="nearest", aspect=_aspect(sz, sx))
            if r:
                _outline(ax, None if case.mask is None else case.mask[:, row, :],
                         None if case.roi is None else case.roi[:, row, :])
            ax.axis("off")
        axes[0, -1].set_title(f"coronal {row}", fontsize=7)
        fig.suptitle(f"{title} {case.id}  (red/yellow: lesions, green: ROI, cyan +: points, magenta: key-slice boxes)",
                     fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        # no timestamps in the PNG so previews are byte-identical too
        fig.savefig(tmp, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    return Path(path)


def _content_box(image: np.ndarray) -> tuple[slice, slice]:
    """In-plane bounding box of everything brighter than the background, with a margin."""
    lo, hi = float(image.min()), float(image.max())
    rows, cols = np.nonzero((image > lo + 0.05 * (hi - lo)).any(axis=0))
    if rows.size == 0:
        return slice(0, image.shape[1]), slice(0, image.shape[2])
    pad = 2
    return (slice(max(rows.min() - pad, 0), min(rows.max() + pad + 1, image.shape[1])),
            slice(max(cols.min() - pad, 0), min(cols.max() + pad + 1, image.shape[2])))


def _extent(crop):
    """imshow extent that keeps voxel indices as the axes' coordinates."""
    return (crop[1].start - 0.5, crop[1].stop - 0.5, crop[0].stop - 0.5, crop[0].start - 0.5)


def _interesting_slices(case: SynthCase, n: int) -> list[int]:
    """Axial slices with the most lesion voxels (spread out), padded with evenly spaced ones."""
    depth = case.array.shape[0]
    chosen: list[int] = []
    if case.mask is not None and case.mask.any():
        per_slice = (case.mask > 0).reshape(depth, -1).sum(axis=1)
        for k in np.argsort(-per_slice, kind="stable"):
            if per_slice[k] == 0 or len(chosen) == n - 1:
                break
            if all(abs(int(k) - c) > 1 for c in chosen):
                chosen.append(int(k))
    for k in np.linspace(0, depth - 1, n + 2)[1:-1].astype(int):
        if len(chosen) == n:
            break
        if int(k) not in chosen:
            chosen.append(int(k))
    return sorted(chosen)


def _points(ax, case: SynthCase, axis_slice):
    for p in case.points:
        x, y, z = case.geometry.lps_to_index(p.position)
        if axis_slice is None or int(round(z)) == axis_slice:
            ax.plot(x, y, "+", color="cyan", markersize=6, markeredgewidth=1)


def _key_boxes(ax, case: SynthCase, k):
    for ks in case.entry.get("key_slices", []):
        if ks["slice"] == k:
            x0, y0, x1, y1 = ks["box"]
            ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor="magenta",
                                       linewidth=0.8))
