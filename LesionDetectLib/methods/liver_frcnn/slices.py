"""The paper's input: a key slice and its two neighbours as three channels, HU-windowed to [0, 255].

Neighbours sit a fixed physical distance (`neighbour_mm`) above and below the key slice, so
a 1 mm and a 5 mm series give the network the same anatomical context; where that distance
falls between slices the neighbour is linearly interpolated along z.  The stack is kept as
uint8 in [0, 255] (the DeepLesion PNG-style scaling the paper uses) at the image's own
in-plane resolution; the network's transform scales it to `image_size`.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np


def window_to_uint8(hu: np.ndarray, window: Sequence[float]) -> np.ndarray:
    """HU -> [0, 255]: `window` = (lowest, highest) HU mapped to 0 and 255, values outside clipped."""
    lo, hi = float(window[0]), float(window[1])
    if hi <= lo:
        raise ValueError(f"HU window {window} must have lowest < highest")
    scaled = (np.asarray(hu, dtype=np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def neighbour_offset(slice_spacing_mm: float, neighbour_mm: float | None) -> float:
    """Distance of a neighbour from the key slice in (fractional) slices.  None: adjacent slices."""
    if neighbour_mm is None:
        return 1.0
    return float(neighbour_mm) / float(slice_spacing_mm)


def interpolated_slice(volume: np.ndarray, z: float) -> np.ndarray:
    """Slice at fractional index z of a (z, y, x) array, linear along z, clamped to the volume."""
    z = min(max(float(z), 0.0), volume.shape[0] - 1.0)
    lo = int(np.floor(z))
    hi = min(lo + 1, volume.shape[0] - 1)
    t = np.float32(z - lo)
    if t == 0 or hi == lo:
        return np.asarray(volume[lo], dtype=np.float32)
    return (1 - t) * volume[lo].astype(np.float32) + t * volume[hi].astype(np.float32)


def three_slice_stack(volume_hu: np.ndarray, k: int, offset: float, window: Sequence[float]) -> np.ndarray:
    """uint8 (3, y, x): the slice `offset` slices below k, slice k, the slice `offset` above."""
    planes = [interpolated_slice(volume_hu, k - offset), np.asarray(volume_hu[k], dtype=np.float32),
              interpolated_slice(volume_hu, k + offset)]
    return window_to_uint8(np.stack(planes), window)


def stacks(volume_hu: np.ndarray, slices: Sequence[int], offset: float, window: Sequence[float],
           chunk: int) -> Iterator[tuple[list[int], np.ndarray]]:
    """Yield (slice indices, uint8 (n, 3, y, x)) for `slices`, `chunk` at a time, so only a few
    stacks exist at once whatever the volume's length."""
    for start in range(0, len(slices), max(1, chunk)):
        part = list(slices[start:start + chunk])
        yield part, np.stack([three_slice_stack(volume_hu, k, offset, window) for k in part])


def parse_slice_range(value, n_slices: int) -> list[int]:
    """Slice indices to process: None / "all" -> all; "a:b" -> a..b inclusive (either side may be
    empty); [a, b] likewise.  Out-of-volume ends are clipped; an empty range is an error."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "all")):
        return list(range(n_slices))
    if isinstance(value, str):
        first, sep, last = value.partition(":")
        if not sep:
            first = last = value
        bounds = [int(first) if first.strip() else 0, int(last) if last.strip() else n_slices - 1]
    else:
        bounds = [int(v) for v in value]
    lo, hi = max(0, bounds[0]), min(n_slices - 1, bounds[1])
    if hi < lo:
        raise ValueError(f"slice range {value!r} selects no slice of a {n_slices}-slice volume")
    return list(range(lo, hi + 1))
