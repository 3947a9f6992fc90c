"""Planar scintigrams (bone scans) read as 2-D images, one per view.

Bone scintigraphy arrives as JPEG/PNG/TIFF exports, 2-D NRRD/MHA/NIfTI, or DICOM NM: one
frame, or one multi-frame whole-body file holding the anterior and posterior views.
`read_views` turns any of these into float32 2-D SimpleITK images with their pixel size, and
refuses colour pictures, volumes, blank, empty and non-finite images in one line naming the
file.  `as_volume` gives the one-slice 3-D form (as `Geometry.of` sees a 2-D image) for the
writers that need 3-D.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import LesionDetectError, input_error
from .geometry import Geometry
from .io import check_finite, read_image

# JPEG (JFIF density) and BMP state dots per inch for printing, not the detector's pixel size:
# spacing 1 mm.  PNG's sCAL chunk and TIFF's resolution tags are read as SimpleITK reads them.
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".bmp")
PLANAR_SUFFIXES = PHOTO_SUFFIXES + (".png", ".tif", ".tiff")
_HEADER_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd", ".nii", ".nii.gz")
_NEEDED = "bone-scan-cls reads planar scintigrams: give one 2-D image (or a DICOM NM planar/whole-body file)"
# DICOM CID 26 (Nuclear Medicine Projection): SNOMED CT and the older SNOMED RT codes
_VIEW_CODES = {"399321004": "anterior", "G-5215": "anterior", "399001007": "posterior", "G-5216": "posterior"}


# --- which reader ----------------------------------------------------------------------------

def _is_dicom(path: Path) -> bool:
    if path.name.lower().endswith(".dcm"):
        return True
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False


def _dicom_is_volume(ds) -> bool:
    """NM Image Type value 3 TOMO / GATED TOMO / RECON TOMO...: SPECT frames, i.e. slices."""
    kind = ds.get("ImageType")
    values = [str(v).upper() for v in kind] if kind is not None and not isinstance(kind, str) else [str(kind)]
    return len(values) > 2 and "TOMO" in values[2]


def is_planar_file(path: str | os.PathLike) -> bool:
    """Whether `path` holds a planar image, from its name or header alone (no pixels read).

    True for PNG/JPEG/BMP/TIFF, DICOM with Modality NM that is not tomographic (SPECT), and
    NRRD/MetaImage/NIfTI headers of a 2-D or one-slice image.  Unreadable files give False.
    """
    path = Path(path)
    name = path.name.lower()
    if name.endswith(PLANAR_SUFFIXES):
        return True
    if not path.is_file():
        return False
    if _is_dicom(path):
        import pydicom

        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, force=True, specific_tags=["Modality", "ImageType"])
        except Exception:  # noqa: BLE001 - pydicom raises many types for a damaged header
            return False
        return str(ds.get("Modality", "")).strip().upper() == "NM" and not _dicom_is_volume(ds)
    if name.endswith(_HEADER_SUFFIXES):
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        try:
            reader.ReadImageInformation()
        except RuntimeError:
            return False
        size = reader.GetSize()
        return len(size) == 2 or (len(size) == 3 and size[2] == 1)
    return False


# --- reading ---------------------------------------------------------------------------------

def read_views(path: str | os.PathLike) -> list[tuple[str, sitk.Image]]:
    """The planar views in `path`: [(view name, float32 2-D image)].

    Spacing in mm: from PixelSpacing (else ImagerPixelSpacing) in DICOM, the resolution tags
    of TIFF, the header of NRRD/MetaImage/NIfTI/PNG; 1 mm when the file has none, and for
    JPEG/BMP (their dpi is a print size).  Origin (0, 0) for DICOM and picture formats.

    The name is "" for a single image; "anterior"/"posterior" (else "frame1", "frame2", ...)
    for the frames of a multi-frame DICOM NM file.  Raises `LesionDetectError` naming the
    file for an unreadable file, a volume, a colour picture, an empty, blank (all pixels
    equal) or non-finite image, and vector or complex pixels.
    """
    path = Path(path)
    if path.is_file() and os.access(path, os.R_OK) and path.stat().st_size and _is_dicom(path):
        return _dicom_views(path)
    return _image_views(read_image(path), path)


def _image_views(image: sitk.Image, path: Path) -> list[tuple[str, sitk.Image]]:
    """A SimpleITK-read image (PNG, JPEG, TIFF, NRRD, MetaImage, NIfTI, DICOM folder)."""
    dim, size = image.GetDimension(), image.GetSize()
    if "complex" in image.GetPixelIDTypeAsString():
        raise input_error(path, f"has complex pixel values ({image.GetPixelIDTypeAsString()}); a real-valued "
                                "greyscale scintigram is needed")
    if 0 in size:
        raise _empty(path, size)
    if dim == 3 and size[2] > 1:
        raise input_error(path, f"is a 3-D volume ({size[2]} slices); {_NEEDED}")
    if dim not in (2, 3):
        raise input_error(path, f"is a {dim}-D image ({' x '.join(map(str, size))}); {_NEEDED}")
    frames = sitk.GetArrayFromImage(image).reshape(1, size[1], size[0], image.GetNumberOfComponentsPerPixel())
    if path.name.lower().endswith(PHOTO_SUFFIXES):
        return _views(path, frames, [""], (1.0, 1.0))
    d = image.GetDirection()
    direction = np.array([[d[0], d[1]], [d[dim], d[dim + 1]]])
    if not np.allclose(direction @ direction.T, np.eye(2), atol=1e-6):
        direction = np.eye(2)  # a one-slice oblique volume: its in-plane axes are not a 2-D frame
    return _views(path, frames, [""], image.GetSpacing()[:2], image.GetOrigin()[:2], direction.ravel())


def _empty(path: Path, size) -> Exception:
    return input_error(path, f"is an empty image ({' x '.join(map(str, size))} pixels); the export failed. "
                             "Export the scintigram again.")


def _dicom_views(path: Path) -> list[tuple[str, sitk.Image]]:
    """A DICOM file: NM single- and multi-frame, or any single-frame image (pydicom; GDCM decodes
    compressed pixel data)."""
    import pydicom

    try:
        ds = pydicom.dcmread(path, force=True)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many types for a damaged file
        raise input_error(path, f"cannot be read as DICOM ({_one_line(exc)}); it is damaged or truncated. "
                                "Copy or export it again.") from None
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        raise input_error(path, "is a DICOM file without an image (no Pixel Data); give the scintigram itself")
    rows, cols = _number(ds, "Rows", 0), _number(ds, "Columns", 0)
    n, samples = _number(ds, "NumberOfFrames", 1), _number(ds, "SamplesPerPixel", 1)
    modality = str(ds.get("Modality", "")).strip().upper()
    if n > 1 and (modality != "NM" or _dicom_is_volume(ds)):
        raise input_error(path, f"is a 3-D volume ({n} slices); {_NEEDED}")
    if 0 in (rows, cols, n):
        raise _empty(path, (cols, rows) if n == 1 else (cols, rows, n))
    pixels = _gdcm_pixels(ds, path)
    if pixels is None:
        try:
            pixels = ds.pixel_array
        except Exception as exc:  # noqa: BLE001 - ValueError, EOFError, RuntimeError (no decoder), ...
            raise input_error(path, f"has pixel data that cannot be decoded ({_one_line(exc)}); the file is "
                                    "truncated, damaged or compressed in an unsupported way. Copy or export it "
                                    "again.") from None
        slope, intercept = _number(ds, "RescaleSlope", 1.0, float), _number(ds, "RescaleIntercept", 0.0, float)
        with np.errstate(over="ignore", invalid="ignore"):
            pixels = pixels.astype(np.float64) * slope + intercept
    pixels = np.asarray(pixels)
    if pixels.size != n * rows * cols * samples:
        raise input_error(path, f"is truncated or damaged: it holds {pixels.size} pixel values where its header "
                                f"promises {n} x {rows} x {cols} x {samples}. Copy or export it again.")
    frames = pixels.reshape(n, rows, cols, samples)
    names = [""] if n == 1 else _view_names(ds, n)
    return _views(path, frames, names, _dicom_spacing(ds, path))


def _gdcm_pixels(ds, path: Path) -> np.ndarray | None:
    """Compressed pixel data through GDCM (SimpleITK), which decodes every DICOM compression
    and applies the rescale itself; None when uncompressed or when GDCM fails (pydicom tries)."""
    try:
        if not ds.file_meta.TransferSyntaxUID.is_compressed:
            return None
        return sitk.GetArrayFromImage(read_image(path))
    except (AttributeError, ValueError, LesionDetectError):
        return None


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _number(ds, keyword: str, default, kind=int):
    value = ds.get(keyword)
    try:
        return default if value is None or value == "" else kind(value)
    except (TypeError, ValueError):
        return default


def _dicom_spacing(ds, path: Path) -> tuple[float, float]:
    """(column, row) pixel size in mm from PixelSpacing or ImagerPixelSpacing, else 1 mm."""
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = ds.get(keyword)
        if value is None or value == "":
            continue
        try:
            row, col = (float(v) for v in value)
        except (TypeError, ValueError):
            raise input_error(path, f"has an unusable {keyword} ({value}); it needs two sizes in mm") from None
        if not (np.isfinite([row, col]).all() and row > 0 and col > 0):
            raise input_error(path, f"has an impossible {keyword} ({row:g}, {col:g} mm); pixel sizes must be "
                                    "positive")
        return col, row
    return 1.0, 1.0


def _view_names(ds, n: int) -> list[str]:
    """Each frame's view from the Detector Information Sequence (via Detector Vector)."""
    items = list(ds.get("DetectorInformationSequence") or [])
    vector = ds.get("DetectorVector")
    try:
        detectors = [int(v) for v in (vector if hasattr(vector, "__iter__") else [vector])]
    except (TypeError, ValueError):  # absent or unusable: frame k is detector k
        detectors = list(range(1, n + 1))
    names = []
    for i in range(n):
        d = detectors[i] if i < len(detectors) else i + 1
        view = _view_of(items[d - 1]) if 1 <= d <= len(items) else ""
        names.append(view or f"frame{i + 1}")
    if len(set(names)) < n:  # e.g. two energy windows of the same view: keep the names unique
        names = [f"frame{i + 1}" for i in range(n)]
    return names


def _view_of(item) -> str:
    """ "anterior", "posterior" or "" from one detector's View Code or Image Orientation."""
    for code in item.get("ViewCodeSequence") or []:
        value = str(code.get("CodeValue", "")).strip()
        meaning = str(code.get("CodeMeaning", "")).strip().lower().removesuffix(" projection")
        if value in _VIEW_CODES:
            return _VIEW_CODES[value]
        if meaning in ("anterior", "posterior"):
            return meaning
    try:
        row, col = np.asarray(item.get("ImageOrientationPatient"), dtype=float).reshape(2, 3)
    except (TypeError, ValueError):
        return ""
    # the viewing direction (row x column) points from the camera into the patient (LPS y:
    # +posterior), so a camera in front (anterior view) looks towards +y
    look = np.cross(row, col)
    if abs(look[1]) > 0.9 * np.linalg.norm(look) > 0:
        return "anterior" if look[1] > 0 else "posterior"
    return ""


# --- checks and the images -------------------------------------------------------------------

def _greyscale(path: Path, frames: np.ndarray) -> np.ndarray:
    """(n, rows, cols, channels) -> (n, rows, cols): one channel of a grey picture."""
    channels = frames.shape[-1]
    if channels in (3, 4):  # RGB(A): a grey picture saved in colour has equal R, G, B
        rgb = frames[..., :3]
        if not ((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 0] == rgb[..., 2]).all()):
            raise input_error(path, "is a colour image, not a greyscale scintigram (its red, green and blue channels "
                                    "differ); give the original greyscale image, not a coloured rendering")
    elif channels != 1:
        raise input_error(path, f"has {channels} values per pixel (a vector image); a single-channel greyscale "
                                "scintigram is needed")
    return frames[..., 0]


def _views(path: Path, frames: np.ndarray, names: list[str], spacing, origin=(0.0, 0.0),
           direction=(1.0, 0.0, 0.0, 1.0)) -> list[tuple[str, sitk.Image]]:
    """Check (n, rows, cols, channels) values and make one float32 image per view."""
    with np.errstate(over="ignore", invalid="ignore"):
        values = _greyscale(path, frames).astype(np.float32)
    check_finite(sitk.GetImageFromArray(values), path)  # float64 beyond float32's range is Inf here too
    views = []
    for name, frame in zip(names, values):
        if frame.min() == frame.max():
            what = f"its {name} view" if name else "it"
            raise input_error(path, f"is blank: {what} has the same value ({frame.flat[0]:g}) in all "
                                    f"{frame.size} pixels, so no counts to read. Export the acquired image again.")
        image = sitk.GetImageFromArray(frame)
        image.SetSpacing(tuple(float(s) for s in spacing))
        image.SetOrigin(tuple(float(o) for o in origin))
        image.SetDirection(tuple(float(d) for d in direction))
        views.append((name, image))
    return views


def as_volume(image: sitk.Image) -> sitk.Image:
    """A 2-D image as a one-slice 3-D volume: z spacing 1 mm, z origin 0, as `Geometry.of` says."""
    if image.GetDimension() != 2:
        raise ValueError(f"as_volume needs a 2-D image, not {image.GetDimension()}-D")
    geometry = Geometry.of(image)
    volume = sitk.JoinSeries(image)
    volume.SetSpacing(geometry.spacing)
    volume.SetOrigin(geometry.origin)
    volume.SetDirection(geometry.direction)
    return volume
