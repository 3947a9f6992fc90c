"""The one documented exception to "NaN voxels are refused": `lesiondetect infer --nan-fill VALUE`.

`io.read_image` calls `fill_nan` on every image it reads; within an `allow_nan_fill(VALUE)`
block (infer runs its reading in one) the NaN voxels of a float image are replaced by VALUE
(a finite number, or "min": the smallest of the image's other voxels), at most
NAN_FILL_MAX_FRACTION (1 %) of the voxels; infinite values are left for `gate.check_values`
to refuse.  What was replaced is kept in the image's metadata (`nan_fill_record`), and infer
writes it into the prediction's provenance as parameters["nan_fill"].  Outside such a block
nothing changes: NaN voxels are refused by the gate.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import math

import numpy as np
import SimpleITK as sitk

from .errors import input_error

NAN_FILL_MAX_FRACTION = 0.01  # --nan-fill replaces NaN in at most 1 % of the voxels
_NAN_FILL: contextvars.ContextVar = contextvars.ContextVar("lesiondetect_nan_fill", default=None)
_NAN_FILL_HINT = (" (or, to run a method on it anyway, `lesiondetect infer --nan-fill VALUE` replaces NaN voxels, "
                  f"at most {NAN_FILL_MAX_FRACTION:.0%} of them, by VALUE and records it in the result)")
NAN_FILL_METADATA = "LesionDetect.nan_fill"  # image metadata key: what fill_nan did (JSON)


def nan_fill_value(text: str) -> float | str:
    """The argument of `--nan-fill`: a finite number (e.g. -1000 for air in a CT, 0 for an MR
    background) or "min" (the smallest value of the image's other voxels)."""
    import argparse

    if str(text).strip().lower() == "min":
        return "min"
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r}: give a finite number (e.g. -1000 for air in a CT, 0 for an MR "
                                         "background) or 'min' (the image's smallest other value)")
    return value


@contextlib.contextmanager
def allow_nan_fill(value: float | str | None):
    """Within this block `io.read_image` replaces the NaN voxels of a float image by `value`
    (`fill_nan`) instead of leaving them to be refused; None changes nothing.  `lesiondetect
    infer --nan-fill VALUE` runs its reading in such a block."""
    token = _NAN_FILL.set(value)
    try:
        yield
    finally:
        _NAN_FILL.reset(token)


def fill_nan(image: sitk.Image, path=None, nan_at: np.ndarray | None = None) -> sitk.Image:
    """Under `allow_nan_fill(value)`: `image` with its NaN voxels set to `value` (a number, or
    "min": the smallest of its other voxels), the replacement recorded in the image's metadata
    (`nan_fill_record`).  `nan_at`: flat indices of NaN voxels the reader lost (NIfTI: ITK reads
    NaN as 0).  Refuses an image with more than NAN_FILL_MAX_FRACTION NaN voxels.  Infinite
    values are left alone (`check_values` refuses them).  Outside such a block, or for an image
    without NaN, returns `image` itself."""
    value = _NAN_FILL.get()
    if value is None or image.GetNumberOfComponentsPerPixel() != 1:
        return image
    if image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64) and nan_at is None:
        return image
    arr = sitk.GetArrayFromImage(image)
    flat = arr.reshape(-1)
    if nan_at is not None:
        nan_at = nan_at[nan_at < flat.size]
        if arr.dtype.kind != "f" and nan_at.size:
            arr = arr.astype(np.float32)
            flat = arr.reshape(-1)
        flat[nan_at] = np.nan
    isnan = np.isnan(flat) if arr.dtype.kind == "f" else np.zeros(flat.shape, bool)
    count = int(np.count_nonzero(isnan))
    if count == 0:
        return image
    fraction = count / flat.size
    if fraction > NAN_FILL_MAX_FRACTION:
        raise input_error(path, f"has {count} NaN voxels of {flat.size} ({fraction:.2%}); --nan-fill replaces NaN in "
                                f"at most {NAN_FILL_MAX_FRACTION:.0%} of the voxels, beyond that the image itself is "
                                "damaged. Fix or re-export it.")
    rule = "min" if value == "min" else "value"
    if value == "min":
        others = flat[~isnan & np.isfinite(flat)]
        value = float(others.min())
    flat[isnan] = value
    filled = sitk.GetImageFromArray(arr)
    filled.CopyInformation(image)
    for key in image.GetMetaDataKeys():
        filled.SetMetaData(key, image.GetMetaData(key))
    filled.SetMetaData(NAN_FILL_METADATA, json.dumps({"value": float(value), "rule": rule, "voxels": count,
                                                      "fraction": round(fraction, 6)}))
    return filled


def nan_fill_record(image: sitk.Image) -> dict | None:
    """What `fill_nan` did to `image` ({"value", "rule", "voxels", "fraction"}), or None:
    `infer` puts it into the prediction's provenance as parameters["nan_fill"]."""
    if not image.HasMetaDataKey(NAN_FILL_METADATA):
        return None
    return json.loads(image.GetMetaData(NAN_FILL_METADATA))
