"""Reading and writing images with SimpleITK, geometry and values kept exactly.

Read: NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr), MetaImage (.mha, .mhd), a DICOM series
folder (the series with most slices when there are several), a single DICOM file, and 2-D
PNG / JPEG / TIFF / BMP.  DICOM rescale slope/intercept are applied by GDCM; integer pixel
types are kept unless a caller asks for another.
Write: NIfTI and NRRD (and MetaImage), atomically and never over an existing file unless
asked.

Geometry precision: NRRD and MetaImage keep origin, spacing and direction to double
precision; NIfTI stores them as 32-bit floats (about 1e-6 mm / 1e-7 in direction cosines).

Every problem a user can cause comes out as one `LesionDetectError` naming the file and
saying what to do.
"""

from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import LesionDetectError, input_error
from .files import atomic_path, full_disk_reason
from .gate import check_dicom_series, check_dicom_strays, check_header, check_values, fill_nan, nifti_complete

WRITABLE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".seg.nrrd", ".nhdr", ".mha", ".mhd")
READABLE_FORMATS = ("NIfTI (.nii, .nii.gz), NRRD (.nrrd), MetaImage (.mha, .mhd), DICOM (a file or a folder "
                    "of slices), PNG, JPEG, TIFF, BMP")
_FORMAT_BY_SUFFIX = {".nii.gz": "NIfTI", ".nii": "NIfTI", ".nrrd": "NRRD", ".nhdr": "NRRD", ".mha": "MetaImage",
                     ".mhd": "MetaImage", ".dcm": "DICOM", ".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG",
                     ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}
_FLOAT_TYPES = (sitk.sitkFloat32, sitk.sitkFloat64, sitk.sitkVectorFloat32, sitk.sitkVectorFloat64)


# --- explaining failures ---------------------------------------------------------------------

def _sitk_reason(exc: Exception) -> str:
    """The useful line of an ITK exception, without the C++ file/line noise."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    for ln in reversed(lines):
        low = ln.lower()
        if low.startswith("description:"):
            return ln.split(":", 1)[1].strip()
        if low.startswith(("itk::error", "sitk::error", "itk error")):
            # "ITK ERROR: NrrdImageIO(0x55...): Read: ..." -> "Read: ..."
            return re.sub(r"^\S+ ?error:\s*(\w+\(0x[0-9a-f]+\):\s*)?", "", ln, flags=re.I)
    return lines[-1] if lines else type(exc).__name__


def _format_name(path: Path) -> str | None:
    name = path.name.lower()
    return next((fmt for suffix, fmt in _FORMAT_BY_SUFFIX.items() if name.endswith(suffix)), None)


_TRUNCATION = re.compile(r"expected (\d+) bytes but received (\d+)|ideal = (\d+) : actual = (\d+)|"
                         r"data not read completely|unexpected end|premature end|truncat", re.I)


def _read_failure(path: Path, exc: Exception) -> LesionDetectError:
    """Turn SimpleITK's exception text into a message a radiologist can act on."""
    text = str(exc)
    fmt = _format_name(path)
    if "Unable to determine ImageIO reader" in text:
        what = f"is not a readable {fmt} file" if fmt else "is not in an image format that can be read"
        return input_error(path, f"{what}: it is damaged or not an image at all. Supported: {READABLE_FORMATS}. "
                                 "Export or copy the image again.")
    if _TRUNCATION.search(text):
        return input_error(path, "is truncated (the file ends before all of its voxel data); the copy or download "
                                 "was probably interrupted. Copy or export it again.")
    if "File cannot be read" in text:  # MetaImage says this (with a wrong 'No such file' reason) for short data
        return input_error(path, "is damaged or truncated: its voxel data cannot be read. Copy or export it again.")
    return input_error(path, f"cannot be read as an image ({_sitk_reason(exc)}). "
                             "The file may be damaged; copy or export it again.")


@contextlib.contextmanager
def _itk_warnings_off():
    """Silence ITK's stderr warnings (e.g. GDCM's 'No Series were found') for one call."""
    was_on = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(was_on)


# --- reading -------------------------------------------------------------------------------

def dicom_series_files(folder: str | os.PathLike, check: bool = True) -> list[str]:
    """File names of the DICOM series with most slices in `folder` (sorted by position).

    Raises a `LesionDetectError` that says what the folder holds instead when there is no
    DICOM series in it, and (`check`) for a series `gate.check_dicom_series` refuses; without
    `check`, only for DICOM files that belong to no series (the caller checks the slices).
    """
    folder = Path(folder)
    with _itk_warnings_off():
        ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    if not ids:
        entries = sorted(folder.iterdir())
        files = [e.name for e in entries if e.is_file() and not e.name.startswith(".")]
        subfolders = [e.name for e in entries if e.is_dir()]
        if not files and not subfolders:
            raise input_error(folder, "is an empty folder; give an image file or a folder holding one DICOM series")
        if not files:
            raise input_error(folder, f"holds no DICOM files, only sub-folders ({_some(subfolders)}); give the "
                                      "folder that holds the DICOM slices themselves")
        raise input_error(folder, f"is a folder without DICOM images ({len(files)} other file(s): {_some(files)}); "
                                  "give an image file, or a folder holding the DICOM slices of one series")
    series = [sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), sid) for sid in ids]
    chosen = list(max(series, key=len))
    names = {Path(f).name for files in series for f in files}  # of every series in the folder
    if check:
        check_dicom_series(folder, chosen, names)
    else:
        check_dicom_strays(folder, names)
    return chosen


def _some(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names)} in all)" if len(names) > n else "")


def _read_dicom_folder(folder: Path) -> sitk.Image:
    """The series, checked (gate.check_dicom_series) on the tags the reader collected of
    every slice; a series ITK cannot stack is checked from the files, to name the slice."""
    files = dicom_series_files(folder, check=False)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOff()
    names = {Path(f).name for f in files}  # strays were checked by dicom_series_files
    try:
        image = reader.Execute()
    except RuntimeError:
        check_dicom_series(folder, files, names, skip_strays=True)  # names the slice at fault
        raise
    check_dicom_series(folder, files, names, slice_tags=_slice_tags(reader), skip_strays=True)
    # carry the first slice's tags (Modality etc.) on the volume, as for single files; the
    # reader goes first: while it holds the voxel buffer too, SetMetaData copies the volume
    tags = {key: reader.GetMetaData(0, key) for key in reader.GetMetaDataKeys(0)}
    del reader
    for key, value in tags.items():
        image.SetMetaData(key, value)
    return image


def _slice_tags(reader: sitk.ImageSeriesReader):
    """tag text of slice i, or None: what gate.check_dicom_series reads a series' geometry from."""
    return lambda i, tag: reader.GetMetaData(i, tag) if reader.HasMetaDataKey(i, tag) else None


def read_image(path: str | os.PathLike, pixel_type: int | None = None, allow_folder: bool = True) -> sitk.Image:
    """Read an image file or (if `allow_folder`) a DICOM series folder.

    `pixel_type` (a `sitk.sitkFloat32`-style constant) converts the values; by default the
    stored type is kept.  Raises `LesionDetectError` for a missing, unreadable, empty,
    truncated, corrupt or non-image path.
    """
    path = Path(path)
    try:
        if not path.exists():
            raise input_error(path, "does not exist; check the spelling and the folder")
        if not os.access(path, os.R_OK):
            raise input_error(path, "is not readable (permission denied); ask for read access or copy it")
        if path.is_dir():
            if not allow_folder:
                raise input_error(path, "is a folder; an image file is needed here")
            image = _read_dicom_folder(path)
        else:
            if path.stat().st_size == 0:
                raise input_error(path, "is empty (0 bytes); the copy or export failed. Copy or export it again.")
            verify = check_header(path)  # before any voxel is read: see gate.py
            image = sitk.ReadImage(str(path))
            nan_at = verify(image) if verify is not None else None  # NIfTI: complete, intact, finite?
            image = fill_nan(image, path, nan_at)  # only under gate.allow_nan_fill
    except LesionDetectError:
        raise
    except RuntimeError as exc:
        raise _read_failure(path, exc) from None
    except OSError as exc:
        raise input_error(path, f"cannot be opened ({exc.strerror or exc})") from None
    if pixel_type is not None and image.GetPixelID() != pixel_type:
        try:
            image = sitk.Cast(image, pixel_type)
        except RuntimeError as exc:
            raise input_error(path, f"has pixel type {image.GetPixelIDTypeAsString()} with "
                                    f"{image.GetNumberOfComponentsPerPixel()} component(s), which cannot be converted "
                                    f"to {sitk.GetPixelIDValueAsString(pixel_type)} ({_sitk_reason(exc)})") from None
    return image


# --- checks ----------------------------------------------------------------------------------

def require_scalar_volume(image: sitk.Image, path: str | os.PathLike | None = None,
                          allow_2d: bool = False) -> sitk.Image:
    """Check that `image` is a scalar 3-D volume (or 2-D if allowed) with finite values.

    A 4-D image, a vector/RGB/complex image or NaN/Inf voxels are errors naming `path`
    (`gate.check_values`).
    """
    check_values(image, path, dimensions=(2, 3) if allow_2d else (3,))
    return image


def check_finite(image: sitk.Image, path: str | os.PathLike | None = None) -> None:
    """Raise if a floating-point image holds NaN or Inf voxels (saying how many and where)."""
    if image.GetPixelID() not in _FLOAT_TYPES:
        return
    arr = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(arr)
    if finite.all():
        return
    bad = int(finite.size - np.count_nonzero(finite))
    first = np.argwhere(~finite)[0]
    if image.GetNumberOfComponentsPerPixel() > 1:
        first = first[:-1]  # drop the component axis
    index = tuple(int(v) for v in first[::-1])  # (z, y, x) -> SimpleITK's (x, y, z)
    raise input_error(path, f"has {bad} NaN or infinite voxel value(s) (first at voxel index {index}); the "
                            "image was probably saved from a failed computation. Fix or re-export it.")


def read_volume(path: str | os.PathLike, pixel_type: int | None = None, allow_2d: bool = False) -> sitk.Image:
    """`read_image` plus the checks every method needs: scalar, 3-D (or 2-D if allowed), finite."""
    return require_scalar_volume(read_image(path, pixel_type), path, allow_2d=allow_2d)


# --- writing ---------------------------------------------------------------------------------

def write_image(image: sitk.Image, path: str | os.PathLike, overwrite: bool = False, compress: bool = True) -> Path:
    """Write atomically; refuses to replace an existing file unless overwrite=True.

    On any failure nothing is left at `path` (and an existing file there is untouched).
    """
    path = Path(path)
    if path.is_dir():
        raise input_error(path, "is a folder; give a file name to write, e.g. "
                                f"{path / 'image.nii.gz'}")
    if not path.name.lower().endswith(WRITABLE_SUFFIXES):
        raise input_error(path, f"unsupported output format; use a name ending in {', '.join(WRITABLE_SUFFIXES)}")
    with atomic_path(path, overwrite=overwrite) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), useCompression=compress)
        except RuntimeError as exc:  # ITK says "failed to write" for a full disk: say which it was
            raise input_error(path, f"cannot be written ({full_disk_reason(tmp) or _sitk_reason(exc)})") from None
        if path.name.lower().endswith((".nii", ".nii.gz")) and not nifti_complete(tmp):  # ITK does not raise
            raise input_error(path, f"cannot be written ({full_disk_reason(tmp) or 'the file came out incomplete'})")
    return path


# --- describing ------------------------------------------------------------------------------

def modality_guess(image: sitk.Image) -> str:
    """"CT", "MR", "NM" or "PT": from DICOM's Modality tag when present, otherwise a guess
    from the image (2-D: planar scintigraphy; CT has air at about -1000 HU)."""
    if image.HasMetaDataKey("0008|0060"):
        tag = image.GetMetaData("0008|0060").strip().upper()
        if tag in ("CT", "MR", "NM", "PT"):
            return tag
    if image.GetDimension() == 2:
        return "NM"
    if image.GetNumberOfComponentsPerPixel() != 1:
        return "unknown"
    lo, hi = value_range(image)
    if lo <= -500 and hi >= 100:
        return "CT"
    return "MR"


def value_range(image: sitk.Image) -> tuple[float, float]:
    """(minimum, maximum) of the finite voxel values of a scalar image of any dimension."""
    values = sitk.GetArrayViewFromImage(image)
    if image.GetPixelID() in _FLOAT_TYPES:
        values = values[np.isfinite(values)]
    if values.size == 0:
        return float("nan"), float("nan")
    return float(values.min()), float(values.max())


def image_info(image: sitk.Image) -> dict:
    """What `lesiondetect info --json` prints: SimpleITK's own view of the image."""
    info = {
        "size": list(image.GetSize()),
        "spacing": list(image.GetSpacing()),
        "origin": list(image.GetOrigin()),
        "direction": list(image.GetDirection()),
        "dimension": image.GetDimension(),
        "pixel_type": image.GetPixelIDTypeAsString(),
        "components": image.GetNumberOfComponentsPerPixel(),
        "modality_guess": modality_guess(image),
    }
    if image.GetNumberOfComponentsPerPixel() == 1:
        info["value_range"] = list(value_range(image))
    return info
