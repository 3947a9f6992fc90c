"""Reading and writing images with SimpleITK, geometry and values kept exactly.

Read: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), a DICOM series
folder (the series with most slices when there are several), a single DICOM file, and 2-D
PNG / JPEG / TIFF / BMP.  DICOM rescale slope/intercept are applied by GDCM; integer pixel
types are kept unless a caller asks for another.
Write: NIfTI and NRRD (and anything else SimpleITK knows by extension), atomically and never
over an existing file unless asked.

Every problem a user can cause comes out as one `LesionDetectError` naming the file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import LesionDetectError, input_error
from .files import atomic_path

WRITABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".nhdr", ".mha", ".mhd")


def _sitk_reason(exc: Exception) -> str:
    """The useful last line of an ITK exception, without the C++ file/line noise."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.lower().startswith(("description:", "itk::error")):
            return ln.split(":", 1)[1].strip() if ln.lower().startswith("description:") else ln
    return lines[-1] if lines else type(exc).__name__


def dicom_series_files(folder: str | os.PathLike) -> list[str]:
    """File names of the DICOM series with most slices in `folder` (sorted by position)."""
    folder = Path(folder)
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        raise input_error(folder, "no DICOM series found in this folder")
    series = [sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in ids]
    return list(max(series, key=len))


def read_image(path: str | os.PathLike, pixel_type: int | None = None) -> sitk.Image:
    """Read an image file or a DICOM series folder.

    `pixel_type` (a `sitk.sitkFloat32`-style constant) converts the values; by default the
    stored type is kept.  Raises `LesionDetectError` for a missing, unreadable, empty or
    non-image path.
    """
    path = Path(path)
    if not path.exists():
        raise input_error(path, "does not exist")
    if not os.access(path, os.R_OK):
        raise input_error(path, "is not readable (permission denied)")
    try:
        if path.is_dir():
            files = dicom_series_files(path)
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(files)
            reader.MetaDataDictionaryArrayUpdateOn()
            reader.LoadPrivateTagsOff()
            image = reader.Execute()
            # carry the first slice's tags (Modality etc.) on the volume, as for single files
            for key in reader.GetMetaDataKeys(0):
                image.SetMetaData(key, reader.GetMetaData(0, key))
        else:
            if path.stat().st_size == 0:
                raise input_error(path, "is empty (0 bytes)")
            reader = sitk.ImageFileReader()
            reader.SetFileName(str(path))
            image = reader.Execute()
    except LesionDetectError:
        raise
    except RuntimeError as exc:
        raise input_error(path, f"cannot be read as an image: {_sitk_reason(exc)}") from None
    if pixel_type is not None:
        image = sitk.Cast(image, pixel_type)
    return image


def write_image(image: sitk.Image, path: str | os.PathLike, overwrite: bool = False, compress: bool = True) -> Path:
    """Write atomically; refuses to replace an existing file unless overwrite=True."""
    path = Path(path)
    if not path.name.lower().endswith(WRITABLE_SUFFIXES):
        raise input_error(path, f"unsupported output format; use one of {', '.join(WRITABLE_SUFFIXES)}")
    with atomic_path(path, overwrite=overwrite) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=compress)
        except RuntimeError as exc:
            raise input_error(path, f"cannot be written: {_sitk_reason(exc)}") from None
    return path


def require_scalar_volume(image: sitk.Image, path: str | os.PathLike | None = None,
                          allow_2d: bool = False) -> sitk.Image:
    """Check that `image` is a scalar 3-D volume (or 2-D if allowed) with finite values.

    A 4-D image, a vector/RGB image or NaN/Inf voxels are errors naming `path`.
    """
    dim = image.GetDimension()
    if dim == 4 or dim > 4:
        raise input_error(path, f"is a {dim}-D image; a 3-D volume is needed (take one time point or channel first)")
    if dim == 2 and not allow_2d:
        raise input_error(path, "is a 2-D image; a 3-D volume is needed")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise input_error(path, f"has {image.GetNumberOfComponentsPerPixel()} components per voxel "
                                "(vector or colour image); a scalar image is needed")
    check_finite(image, path)
    return image


def check_finite(image: sitk.Image, path: str | os.PathLike | None = None) -> None:
    """Raise if a floating-point image holds NaN or Inf voxels."""
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64, sitk.sitkVectorFloat32, sitk.sitkVectorFloat64):
        arr = sitk.GetArrayViewFromImage(image)
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        if bad:
            raise input_error(path, f"has {bad} NaN or infinite voxel value(s)")


def read_volume(path: str | os.PathLike, pixel_type: int | None = None, allow_2d: bool = False) -> sitk.Image:
    """`read_image` plus the checks every method needs: scalar, 3-D (or 2-D if allowed), finite."""
    return require_scalar_volume(read_image(path, pixel_type), path, allow_2d=allow_2d)


def modality_guess(image: sitk.Image) -> str:
    """"CT", "MR" or "NM" (planar scintigraphy): from DICOM's Modality tag when present,
    otherwise from the value range (CT has air at about -1000 HU)."""
    if image.HasMetaDataKey("0008|0060"):
        tag = image.GetMetaData("0008|0060").strip().upper()
        if tag in ("CT", "MR", "NM", "PT"):
            return tag
    if image.GetDimension() == 2:
        return "NM"
    if image.GetNumberOfComponentsPerPixel() != 1:
        return "unknown"
    stats = sitk.MinimumMaximumImageFilter()
    stats.Execute(image)
    lo, hi = stats.GetMinimum(), stats.GetMaximum()
    if lo <= -500 and hi >= 100:
        return "CT"
    return "MR"


def image_info(image: sitk.Image) -> dict:
    """What `lesiondetect info --json` prints: SimpleITK's own view of the image."""
    return {
        "size": list(image.GetSize()),
        "spacing": list(image.GetSpacing()),
        "origin": list(image.GetOrigin()),
        "direction": list(image.GetDirection()),
        "dimension": image.GetDimension(),
        "pixel_type": image.GetPixelIDTypeAsString(),
        "components": image.GetNumberOfComponentsPerPixel(),
        "modality_guess": modality_guess(image),
    }
