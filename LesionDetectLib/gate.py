"""The input gate: what every image passes before any work is done on it.

1. From the header alone, before any voxel is read (`check_header`, called by
   `io.read_image`): the size is not zero and the voxel data fits the memory limit
   (`MAX_IMAGE_GB`, 8 GiB; `LESIONDETECT_MAX_IMAGE_GB` changes it), spacing is finite and
   at least `MIN_SPACING_MM`, the origin is finite, the direction is orthonormal, an
   uncompressed file holds the bytes its header promises and a compressed one could.  NIfTI
   headers are read byte by byte as well, because ITK silently turns pixdim 0/NaN/Inf into 1
   and NaN voxels into 0: bad sizeof_hdr/magic, pixdim, qform/sform, scale slope, complex
   voxels and NaN/Inf float voxels are refused there.
2. From the voxels (`check_values`): scalar (one component, not complex), the dimension a
   method needs, finite values (all-NaN/Inf and some NaN refused, the latter with the count).
3. The method's modality (`modality_problem`): CT methods want Hounsfield units (values within
   CT_RANGE, a range of at least 100, and no background at 0 without negative values, which
   is an MR magnitude image or a CT without its rescale), MR (FLAIR) methods a magnitude
   image (no air at -1000), and a DICOM Modality tag must not contradict the method.
   `Method.check_input` runs 2 and 3; `--force` overrides only 3, and the prediction's
   provenance records it.
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import input_error

MAX_IMAGE_GB = 8.0  # default limit on the voxel data an image may declare
MIN_SPACING_MM = 1e-3  # one micrometre: below this a header's spacing is garbage (e.g. pixdim 1e-9)
MAX_SPACING_MM = 1e5
MAX_ORIGIN_MM = 1e7
GZIP_MAX_RATIO = 1100  # deflate cannot compress better than about 1032:1
# CT in Hounsfield units: air -1000, fat about -100, padding -1024 .. -32768 (outside the FOV), metal a few 10^4
CT_RANGE = (-32768.0, 40000.0)
_NIFTI_COMPLEX = {32: "complex64", 1792: "complex128", 2048: "complex256"}
_NIFTI_FLOAT = {16: np.float32, 64: np.float64}


def max_image_bytes() -> int:
    """The limit: LESIONDETECT_MAX_IMAGE_GB (GiB) when set, else MAX_IMAGE_GB."""
    try:
        return int(float(os.environ.get("LESIONDETECT_MAX_IMAGE_GB", MAX_IMAGE_GB)) * 2**30)
    except ValueError:
        return int(MAX_IMAGE_GB * 2**30)


# --- 1. the header ---------------------------------------------------------------------------

def check_header(path: str | os.PathLike) -> None:
    """Refuse an image file whose header alone shows it cannot be a valid image (see module
    docstring).  Files ITK cannot parse at all are left to the reader, which explains them."""
    path = Path(path)
    name = path.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        check_nifti(path)
    _check_jpeg_end(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    was_on = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return  # the reader names the problem
    finally:
        sitk.ProcessObject.SetGlobalWarningDisplay(was_on)
    size, components = reader.GetSize(), reader.GetNumberOfComponents()
    check_geometry(path, size, reader.GetSpacing(), reader.GetOrigin(), reader.GetDirection())
    item = sitk.GetPixelIDValueAsString(reader.GetPixelID())
    declared = math.prod(size) * components * _component_bytes(reader.GetPixelID())
    if declared > max_image_bytes():
        raise input_error(path, f"declares {' x '.join(map(str, size))} voxels of {item} ({declared / 2**30:.1f} "
                                f"GiB), more than the {max_image_bytes() / 2**30:.0f} GiB limit; the header is damaged "
                                "or the image is far larger than a detector input (set LESIONDETECT_MAX_IMAGE_GB to "
                                "raise the limit)")
    _check_stored_bytes(path, declared)


def _check_jpeg_end(path: Path) -> None:
    """A JPEG cut short is read without complaint (libjpeg fills the missing rows with grey):
    refuse one with no end-of-image marker after the start of its image data (the segments
    before it, e.g. an EXIF thumbnail with markers of its own, are skipped by their lengths;
    bytes after the marker, e.g. a vendor trailer, are allowed)."""
    with open(path, "rb") as f:
        if f.read(3) != b"\xff\xd8\xff":
            return
        f.seek(0)
        data = f.read(max_image_bytes() + 2**20)
    pos = 2  # the first marker after SOI
    while True:
        if pos + 3 >= len(data) or data[pos] != 0xFF:
            return  # a damaged or cut header: the reader explains it
        marker = data[pos + 1]
        if marker == 0xDA:  # start of scan: the image data follows
            break
        if marker == 0xFF:
            pos += 1  # fill byte
        elif marker == 0x01 or 0xD0 <= marker <= 0xD8:
            pos += 2  # markers without a length
        else:
            pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    if data.find(b"\xff\xd9", pos) < 0:
        raise input_error(path, "is a truncated JPEG file: its image data stops before the end-of-image marker (the "
                                "copy or export was cut short). Copy or export it again.")


def check_geometry(path, size, spacing, origin, direction) -> None:
    """Size, spacing, origin and direction of a header: the problems as one error."""
    if any(s <= 0 for s in size):
        unit = "pixels" if len(size) == 2 else "voxels"
        raise input_error(path, f"is an empty image ({' x '.join(map(str, size))} {unit}); the export failed. "
                                "Export it again.")
    bad = [s for s in spacing if not math.isfinite(s) or not MIN_SPACING_MM <= s <= MAX_SPACING_MM]
    if bad:
        raise input_error(path, f"has voxel spacing {_fmt(spacing)} mm; every spacing must be finite and between "
                                f"{MIN_SPACING_MM:g} and {MAX_SPACING_MM:g} mm. The header is damaged; export the "
                                "image again.")
    if not all(math.isfinite(o) and abs(o) <= MAX_ORIGIN_MM for o in origin):
        raise input_error(path, f"has origin {_fmt(origin)} mm; it must be finite (and within {MAX_ORIGIN_MM:g} mm). "
                                "The header is damaged; export the image again.")
    dim = len(size)
    d = np.asarray(direction, dtype=float).reshape(dim, dim)
    if not np.all(np.isfinite(d)) or not np.allclose(d.T @ d, np.eye(dim), atol=1e-3):
        raise input_error(path, f"has direction cosines {_fmt(direction)} that are not orthonormal (or not "
                                "finite): the orientation in its header is damaged. Export the image again.")


def _check_stored_bytes(path: Path, declared: int) -> None:
    """An uncompressed file must hold the declared voxel bytes, a compressed one could; the
    numbers of a MetaImage header must be finite (ITK reads 'nan' there as 0)."""
    name = path.name.lower()
    size = path.stat().st_size
    if name.endswith(".nrrd"):
        head = _text_head(path)
        encoding = re.search(r"^encoding:\s*(\S+)", head, re.M | re.I)
        compressed = encoding is None or encoding.group(1).lower() not in ("raw",)
        if re.search(r"^data ?file:", head, re.M | re.I):
            return
    elif name.endswith((".mha", ".mhd")):
        head = _text_head(path)
        for key, values in re.findall(r"^(Offset|Origin|Position|ElementSpacing|TransformMatrix|Orientation|Rotation)"
                                      r"\s*=\s*(.*)$", head, re.M | re.I):
            try:
                finite = all(math.isfinite(float(v)) for v in values.split())
            except ValueError:
                finite = False
            if not finite:
                raise input_error(path, f"has {key} = {values.strip()} in its header; every value must be a finite "
                                        "number (ITK would silently read it as 0). Export the image again.")
        if name.endswith(".mhd"):
            return
        compressed = re.search(r"^CompressedData\s*=\s*True", head, re.M | re.I) is not None
        if not re.search(r"^ElementDataFile\s*=\s*LOCAL", head, re.M | re.I):
            return
    elif name.endswith(".nii.gz"):
        compressed, head = True, ""
    else:
        return
    if compressed and declared > size * GZIP_MAX_RATIO:
        raise input_error(path, f"declares {declared} bytes of voxel data but the file ({size} bytes) cannot hold "
                                "that much even compressed: the header is damaged or the file truncated. Copy or "
                                "export it again.")
    if not compressed and size - len(head.encode("latin-1")) < declared:
        raise input_error(path, f"is truncated: its header promises {declared} bytes of voxel data but the file holds "
                                f"{size} bytes in all. Copy or export it again.")


def _text_head(path: Path) -> str:
    """The text header of an NRRD (up to the blank line) or MetaImage (up to ElementDataFile)."""
    with open(path, "rb") as f:
        head = f.read(1 << 16)
    end = re.search(rb"\n\n|ElementDataFile\s*=\s*LOCAL\r?\n", head)
    return head[:end.end()].decode("latin-1") if end else head.decode("latin-1")


def _component_bytes(pixel_id: int) -> int:
    name = sitk.GetPixelIDValueAsString(pixel_id)
    bits = re.search(r"(\d+)-bit", name)
    return int(bits.group(1)) // 8 if bits else 1  # ITK counts a complex pixel as 2 components


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


# --- NIfTI, byte by byte -------------------------------------------------------------------------

def _nifti_header(header: bytes):
    """(endian, version, dims, datatype, bitpix, pixdim, vox_offset, fields) or None."""
    for endian in "<>":
        if len(header) >= 348 and struct.unpack(endian + "i", header[:4])[0] == 348:
            f = {"magic": header[344:348], "qform": struct.unpack(endian + "h", header[252:254])[0],
                 "sform": struct.unpack(endian + "h", header[254:256])[0],
                 "quatern": struct.unpack(endian + "6f", header[256:280]),
                 "srow": struct.unpack(endian + "12f", header[280:328]),
                 "scl": struct.unpack(endian + "2f", header[112:120])}
            return (endian, 1, struct.unpack(endian + "8h", header[40:56]), struct.unpack(endian + "h", header[70:72])[0],
                    struct.unpack(endian + "h", header[72:74])[0], struct.unpack(endian + "8f", header[76:108]),
                    int(struct.unpack(endian + "f", header[108:112])[0]), f)
        if len(header) >= 540 and struct.unpack(endian + "i", header[:4])[0] == 540:
            f = {"magic": header[4:12], "qform": struct.unpack(endian + "i", header[344:348])[0],
                 "sform": struct.unpack(endian + "i", header[348:352])[0],
                 "quatern": struct.unpack(endian + "6d", header[352:400]),
                 "srow": struct.unpack(endian + "12d", header[400:496]),
                 "scl": struct.unpack(endian + "2d", header[176:192])}
            return (endian, 2, struct.unpack(endian + "8q", header[16:80]), struct.unpack(endian + "h", header[12:14])[0],
                    struct.unpack(endian + "h", header[14:16])[0], struct.unpack(endian + "8d", header[104:168]),
                    struct.unpack(endian + "q", header[168:176])[0], f)
    return None


def check_nifti(path: Path) -> None:
    """Header fields ITK would silently "repair", completeness, and NaN/Inf float voxels."""
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"  # gzip magic; the extension alone can lie
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
            header = f.read(540)
            parsed = _nifti_header(header)
            if parsed is None:
                raise input_error(path, "is not a readable NIfTI file: its header size field is neither 348 nor "
                                        "540 in either byte order, so it is damaged or not NIfTI. Export it again.")
            endian, version, dims, datatype, bitpix, pixdim, vox_offset, fields = parsed
            _check_nifti_fields(path, version, dims, datatype, bitpix, pixdim, fields)
            if fields["magic"][1:2] == b"i":  # "ni1"/"ni2": a header whose voxels live in a separate .img
                return
            voxels = math.prod(int(d) for d in dims[1:dims[0] + 1])
            expected = vox_offset + voxels * bitpix // 8
            if voxels * bitpix // 8 > max_image_bytes():
                return  # check_header's size limit says so, without reading anything
            have, bad = len(header), 0
            dtype = _NIFTI_FLOAT.get(datatype)
            if dtype is not None or compressed:
                f.seek(0)
                data = f.read(vox_offset) if dtype is not None else b""
                have = len(data)
                tail = b""
                while chunk := f.read(1 << 22):
                    have += len(chunk)
                    if dtype is not None:
                        buf = tail + chunk
                        usable = len(buf) - len(buf) % np.dtype(dtype).itemsize
                        values = np.frombuffer(buf[:usable], dtype=np.dtype(dtype).newbyteorder(endian))
                        bad += int(values.size - np.count_nonzero(np.isfinite(values)))
                        tail = buf[usable:]
            if not compressed:
                have = path.stat().st_size
    except EOFError:
        raise input_error(path, "is truncated (the compressed data stops early); the copy or download was probably "
                                "interrupted. Copy or export it again.") from None
    except (gzip.BadGzipFile, zlib.error):
        raise input_error(path, "is damaged: its compressed data is corrupt. Copy or export it again.") from None
    if have < expected:
        raise input_error(path, f"is truncated: its header promises {expected} bytes but the file holds {have}. "
                                "Copy or export it again.")
    if bad:
        raise input_error(path, f"has {bad} NaN or infinite voxel value(s) of {voxels}; the image was probably saved "
                                "from a failed computation. Fix or re-export it.")


def _check_nifti_fields(path, version, dims, datatype, bitpix, pixdim, f) -> None:
    magic_ok = f["magic"][:3] in (b"n+1", b"ni1") if version == 1 else f["magic"][:3] in (b"n+2", b"ni2")
    if not magic_ok or (version == 1 and f["magic"][3:4] != b"\0"):
        raise input_error(path, f"has a damaged NIfTI header (magic {f['magic']!r}, expected b'n+{version}'); "
                                "export the image again")
    if not 1 <= dims[0] <= 7 or any(int(d) < 1 for d in dims[1:dims[0] + 1]) or bitpix <= 0:
        raise input_error(path, f"has a damaged NIfTI header (dim {list(dims)}, bitpix {bitpix}); export it again")
    if datatype in _NIFTI_COMPLEX:
        raise input_error(path, f"holds complex voxels ({_NIFTI_COMPLEX[datatype]}); a real-valued (magnitude) "
                                "image is needed. Save the magnitude image instead.")
    spatial = pixdim[1:min(dims[0], 3) + 1]
    if not all(math.isfinite(p) and MIN_SPACING_MM <= abs(p) <= MAX_SPACING_MM for p in spatial):
        raise input_error(path, f"has voxel sizes (pixdim) {_fmt(spatial)}; each must be finite and between "
                                f"{MIN_SPACING_MM:g} and {MAX_SPACING_MM:g} mm (ITK would silently read 1 mm). "
                                "The header is damaged; export the image again.")
    if f["qform"] > 0 and not all(map(math.isfinite, f["quatern"])):
        raise input_error(path, f"has a qform with non-finite values {_fmt(f['quatern'])}: its orientation is "
                                "damaged. Export the image again.")
    if f["sform"] > 0:
        srow = np.asarray(f["srow"], dtype=float).reshape(3, 4)
        if not np.all(np.isfinite(srow)) or abs(np.linalg.det(srow[:, :3])) < MIN_SPACING_MM ** 3:
            raise input_error(path, f"has an sform that is not finite or is singular ({_fmt(f['srow'])}): its "
                                    "orientation is damaged. Export the image again.")
    slope, inter = f["scl"]
    if not (math.isfinite(slope) and math.isfinite(inter)):
        raise input_error(path, f"has a non-finite intensity scaling (scl_slope {slope}, scl_inter {inter}); the "
                                "header is damaged. Export the image again.")


# --- 2. the voxels -------------------------------------------------------------------------------

def check_values(image: sitk.Image, path=None, dimensions: tuple[int, ...] = (3,)) -> None:
    """Scalar, one of `dimensions`, real-valued and finite: else one error naming `path`."""
    dim, size = image.GetDimension(), image.GetSize()
    wanted = " or ".join(f"{d}-D" for d in dimensions)
    pixel = image.GetPixelIDTypeAsString()
    if "complex" in pixel:
        raise input_error(path, f"holds complex voxels ({pixel}); a real-valued {wanted} greyscale image is needed. "
                                "Save the magnitude image instead.")
    if image.GetNumberOfComponentsPerPixel() != 1:
        components = image.GetNumberOfComponentsPerPixel()
        kind = "colour (RGB)" if components in (3, 4) else "vector"
        raise input_error(path, f"is a {kind} image with {components} values per voxel; a single-channel {wanted} "
                                "greyscale image is needed. Export the original greyscale image instead.")
    if dim not in dimensions:
        needed = "a 3-D volume" if dimensions == (3,) else f"a {wanted} image"
        if dim < min(dimensions):
            raise input_error(path, f"is a {dim}-D image; {needed} is needed (give the whole series or volume, not "
                                    "one slice or a screenshot)")
        raise input_error(path, f"is a {dim}-D image ({' x '.join(map(str, size))}); {needed} is needed. Save one "
                                "time point, echo or channel as its own file first.")
    if image.GetPixelID() not in (sitk.sitkFloat32, sitk.sitkFloat64):
        return
    arr = sitk.GetArrayViewFromImage(image)
    finite = np.isfinite(arr)
    good = int(np.count_nonzero(finite))
    if good == finite.size:
        return
    if good == 0:
        raise input_error(path, f"holds no finite value at all (all {finite.size} voxels are NaN or infinite); the "
                                "image was saved from a failed computation. Fix or re-export it.")
    index = tuple(int(v) for v in np.argwhere(~finite)[0][::-1])
    raise input_error(path, f"has {finite.size - good} NaN or infinite voxel value(s) (first at voxel index {index}) "
                            f"among its {finite.size} voxels; the image was probably saved from a failed computation. Fix or "
                            "re-export it.")


# --- 3. the modality ---------------------------------------------------------------------------

def dicom_modality(image: sitk.Image) -> str | None:
    return image.GetMetaData("0008|0060").strip().upper() if image.HasMetaDataKey("0008|0060") else None


def modality_problem(image: sitk.Image, modality: str) -> str | None:
    """Why `image` does not look like `modality` ("CT", "MR", "NM"), or None."""
    tag = dicom_modality(image)
    if tag and modality and tag != modality and tag in ("CT", "MR", "NM", "PT"):
        return f"is tagged as a {tag} image (DICOM Modality) but a {modality} image is needed"
    if modality not in ("CT", "MR"):
        return None
    values = sitk.GetArrayViewFromImage(image)
    lo, hi = float(np.min(values)), float(np.max(values))
    if lo == hi:
        return f"is blank (every voxel is {lo:g}); a {modality} image with contrast is needed"
    if modality == "CT":
        if lo < CT_RANGE[0] or hi > CT_RANGE[1]:
            return (f"has values {lo:g} .. {hi:g}, outside the CT range of Hounsfield units ({CT_RANGE[0]:g} .. "
                    f"{CT_RANGE[1]:g}); a CT in HU is needed")
        if 0 <= lo < 1:  # background at 0: MR magnitude, or stored CT values (air 0) without the HU rescale
            return (f"has no negative values and its background at {lo:g}: not a CT in Hounsfield units (air is "
                    "-1000 HU, fat about -100 HU); it looks like an MR image or a CT stored without its HU rescale. "
                    "A CT in HU is needed")
        if hi - lo < 100:
            return (f"has values {lo:g} .. {hi:g}, a range far narrower than the Hounsfield units of a CT (soft "
                    "tissue to bone spans hundreds); it looks like a normalised image. A CT in HU is needed")
    elif lo <= -500 and hi >= 100:
        return (f"has values {lo:g} .. {hi:g}: it looks like a CT in Hounsfield units (air at -1000 HU), not an MR "
                "(FLAIR) magnitude image, which has no strongly negative values. An MR FLAIR image is needed")
    return None


# --- DICOM series ----------------------------------------------------------------------------------

def check_dicom_series(folder: Path, files: list[str], series_names: set[str]) -> None:
    """Refuse a series with a damaged, missing, duplicate or foreign slice, or uneven spacing
    (ITK would stack it anyway and stretch the gap), naming the slice."""
    import pydicom

    stray = sorted(e.name for e in folder.iterdir() if e.is_file() and e.name not in series_names
                   and _has_dicom_magic(e))
    if stray:
        raise input_error(folder, f"holds DICOM file(s) that are not part of any readable series ({', '.join(stray[:3])}"
                                  f"{', ...' if len(stray) > 3 else ''}): damaged or foreign slices. Remove or replace "
                                  "them; a series with a bad slice is not read, so that no gap is silently stretched.")
    if len(files) < 2:
        return
    rows = []
    for name in files:
        try:
            ds = pydicom.dcmread(name, stop_before_pixels=True, force=True)
            position = [float(v) for v in ds.ImagePositionPatient]
            orientation = [float(v) for v in ds.ImageOrientationPatient]
            grid = (int(ds.Rows), int(ds.Columns), tuple(round(float(v), 4) for v in ds.get("PixelSpacing", [1, 1])))
        except Exception:  # noqa: BLE001 - pydicom raises many types for a damaged header
            raise input_error(name, f"(a slice of the series in {folder}) has no readable position, orientation or "
                                    "size tags; replace or remove it") from None
        rows.append((Path(name).name, np.array(position), np.array(orientation), grid))
    first_name, _, first_orient, first_grid = rows[0]
    for name, _, orient, grid in rows[1:]:
        if grid != first_grid or not np.allclose(orient, first_orient, atol=1e-4):
            raise input_error(folder, f"slice {name} has rows x columns x pixel spacing {grid} and orientation "
                                      f"{_fmt(orient)} but slice {first_name} has {first_grid} and {_fmt(first_orient)}: "
                                      "it belongs to another acquisition. Remove it.")
    normal = np.cross(first_orient[:3], first_orient[3:])
    z = np.array([pos @ normal for _, pos, _, _ in rows])
    order = np.argsort(z)
    gaps = np.diff(z[order])
    if np.any(gaps < 1e-3):
        k = int(np.argmin(gaps))
        raise input_error(folder, f"slices {rows[order[k]][0]} and {rows[order[k + 1]][0]} lie at the same position "
                                  f"({z[order[k]]:.3f} mm along the slice normal): a duplicate slice. Remove one.")
    typical = float(np.median(gaps))
    off = np.abs(gaps - typical) > max(0.05 * typical, 0.01)
    if np.any(off):
        k = int(np.argmax(off))
        raise input_error(folder, f"has uneven slice spacing: {gaps[k]:.3f} mm between slices {rows[order[k]][0]} and "
                                  f"{rows[order[k + 1]][0]} but {typical:.3f} mm elsewhere (a missing or damaged "
                                  "slice?). It is not read, so the gap is not silently stretched; complete the series.")


def _has_dicom_magic(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(132)[128:132] == b"DICM"
    except OSError:
        return False
