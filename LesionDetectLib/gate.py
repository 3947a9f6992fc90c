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
   The one documented exception: `lesiondetect infer --nan-fill VALUE` reads the image under
   `allow_nan_fill(VALUE)`, and `fill_nan` (nanfill.py) replaces its NaN voxels (at most
   NAN_FILL_MAX_FRACTION, 1 %, of them; infinite values are still refused) by VALUE or by the
   image's minimum ("min"); the prediction's provenance records value, rule and count.
3. The method's modality (`modality_problem`): CT methods want Hounsfield units (values within
   CT_RANGE, a range of at least 100, and no background at 0 without negative values, which
   is an MR magnitude image or a CT without its rescale), MR (FLAIR) methods a magnitude
   image (no air at -1000), and a DICOM Modality tag must not contradict the method.
   `Method.check_input` runs 2 and 3; `--force` overrides only 3, and the prediction's
   provenance records it.
DICOM series are checked slice by slice by dicom_series.py (re-exported here).
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .dicom_series import check_dicom_series, check_dicom_strays  # noqa: F401  (the gate's API, used by io)
from .errors import input_error
from .nanfill import (_NAN_FILL, _NAN_FILL_HINT, NAN_FILL_MAX_FRACTION, allow_nan_fill, fill_nan,  # noqa: F401
                      nan_fill_record, nan_fill_value)

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

def check_header(path: str | os.PathLike):
    """Refuse an image file whose header alone shows it cannot be a valid image (see module
    docstring).  Files ITK cannot parse at all are left to the reader, which explains them.
    Returns None, or (NIfTI) `verify(image)`, to be called with the image ITK then reads from
    the file: it checks what needs the voxels (`check_nifti`) and returns the flat indices of
    NaN voxels under `allow_nan_fill` (ITK reads them as 0, so `fill_nan` needs them), else None."""
    path = Path(path)
    name = path.name.lower()
    verify = None
    if name.endswith((".nii", ".nii.gz")):
        verify = check_nifti(path)
    _check_jpeg_end(path)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    was_on = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return verify  # the reader names the problem
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
    return verify


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


_NIFTI_DTYPE = {2: np.uint8, 4: np.int16, 8: np.int32, 16: np.float32, 64: np.float64, 256: np.int8,
                512: np.uint16, 768: np.uint32, 1024: np.int64, 1280: np.uint64}


def check_nifti(path: Path):
    """Header fields ITK would silently "repair", completeness, and NaN/Inf float voxels.

    The header is checked here; what needs the voxels is left to a `verify(image)` returned
    for the image ITK reads from the file, so that the voxel data is not decompressed twice:
    for a gzip file whose trailer gives the expected size, verify computes the CRC-32 of the
    header and ITK's voxels and compares it with the file's (it matches only when the data is
    complete and intact and ITK changed no value: ITK reads NaN and Inf as 0, which breaks the
    match).  Only when it does not match (or cannot be computed: scaled, big-endian or vector
    data) is the file decompressed and scanned again (`_scan_nifti`) to say exactly what is
    wrong.  Uncompressed files are checked by size and their float voxels scanned through a
    memory map.  Returns `verify`, or None when nothing is left to check.  Under
    `allow_nan_fill` NaN voxels are not refused: verify returns their flat indices (infinite
    ones are refused all the same)."""
    with open(path, "rb") as raw:
        compressed = raw.read(2) == b"\x1f\x8b"  # gzip magic; the extension alone can lie
    try:
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
            header = f.read(540)
    except EOFError:
        header = b""  # shorter than a header: said below
    except (gzip.BadGzipFile, zlib.error, OSError):
        raise input_error(path, "is damaged: its compressed data is corrupt. Copy or export it again.") from None
    parsed = _nifti_header(header)
    if parsed is None:
        raise input_error(path, "is not a readable NIfTI file: its header size field is neither 348 nor "
                                "540 in either byte order, so it is damaged or not NIfTI. Export it again.")
    endian, version, dims, datatype, bitpix, pixdim, vox_offset, fields = parsed
    _check_nifti_fields(path, version, dims, datatype, bitpix, pixdim, fields)
    if fields["magic"][1:2] == b"i":  # "ni1"/"ni2": a header whose voxels live in a separate .img
        return None
    voxels = math.prod(int(d) for d in dims[1:dims[0] + 1])
    data_bytes = voxels * bitpix // 8
    if data_bytes > max_image_bytes():
        return None  # check_header's size limit says so, without reading anything
    layout = (endian, datatype, vox_offset, voxels, vox_offset + data_bytes)
    if not compressed:
        nan_at = _scan_nifti(path, False, layout)
        return (lambda image: nan_at) if nan_at is not None else None
    with open(path, "rb") as raw:
        raw.seek(-8, os.SEEK_END)
        crc, isize = struct.unpack("<II", raw.read(8))
    if isize != layout[4] % 2**32:  # the gzip trailer does not give the size the header promises
        nan_at = _scan_nifti(path, True, layout)  # says why (truncated, ...), or finds all well
        return (lambda image: nan_at) if nan_at is not None else None

    def verify(image: sitk.Image) -> np.ndarray | None:
        if _same_crc(path, image, layout, crc):
            return None
        return _scan_nifti(path, True, layout)

    return verify


def nifti_complete(path: Path) -> bool:
    """Whether a NIfTI file just written holds all the voxel bytes its header promises: the
    file size, or for gzip the size in its trailer.  (ITK's NIfTI writer only prints "NWAD:
    wrote only 0 of N bytes" when the disk is full, and leaves a truncated file.)"""
    try:
        with open(path, "rb") as raw:
            compressed = raw.read(2) == b"\x1f\x8b"
        with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
            parsed = _nifti_header(f.read(540))
        if parsed is None:
            return False
        _, _, dims, _, bitpix, _, vox_offset, fields = parsed
        if fields["magic"][1:2] == b"i":
            return True
        expected = vox_offset + math.prod(int(d) for d in dims[1:dims[0] + 1]) * bitpix // 8
        if not compressed:
            return path.stat().st_size >= expected
        with open(path, "rb") as raw:
            raw.seek(-8, os.SEEK_END)
            return struct.unpack("<I", raw.read(8)[4:])[0] == expected % 2**32
    except (OSError, EOFError, zlib.error, struct.error):
        return False


def _same_crc(path: Path, image: sitk.Image, layout, crc: int) -> bool:
    """Whether the header bytes and ITK's voxels, as stored, have the gzip trailer's CRC-32."""
    endian, datatype, vox_offset, voxels, _ = layout
    dtype = _NIFTI_DTYPE.get(datatype)
    if dtype is None or (endian == ">") != (sys.byteorder == "big") or image.GetNumberOfComponentsPerPixel() != 1:
        return False
    values = sitk.GetArrayViewFromImage(image)
    if values.dtype != np.dtype(dtype) or values.size != voxels or not values.flags.c_contiguous:
        return False  # ITK scaled or converted the values: compare them the slow way
    with gzip.open(path, "rb") as f:
        prefix = f.read(vox_offset)
    return zlib.crc32(memoryview(values).cast("B"), zlib.crc32(prefix)) == crc


def _scan_nifti(path: Path, compressed: bool, layout) -> np.ndarray | None:
    """Read the whole file: refuse it if it is truncated, its compressed data corrupt, or it
    holds NaN/Inf float voxels; under `allow_nan_fill`, return the flat indices of NaN voxels."""
    endian, datatype, vox_offset, voxels, expected = layout
    filling = _NAN_FILL.get() is not None
    dtype = _NIFTI_FLOAT.get(datatype)
    nan_found: list[np.ndarray] = []
    nan_count = bad = 0

    def scan(values: np.ndarray, start: int) -> None:
        nonlocal bad, nan_count
        nonfinite = int(values.size - np.count_nonzero(np.isfinite(values)))
        if nonfinite:
            bad += nonfinite
            isnan = np.isnan(values)
            nan_count += int(np.count_nonzero(isnan))
            if filling:
                nan_found.append(np.flatnonzero(isnan) + start)

    try:
        if not compressed:
            have = path.stat().st_size
            if dtype is not None and have >= expected:
                values = np.memmap(path, dtype=np.dtype(dtype).newbyteorder(endian), mode="r", offset=vox_offset,
                                   shape=(voxels,))
                for start in range(0, voxels, 1 << 22):
                    scan(np.asarray(values[start:start + (1 << 22)]), start)
                del values
        else:
            with gzip.open(path, "rb") as f:
                have, seen, tail = len(f.read(vox_offset)), 0, b""
                while chunk := f.read(1 << 22):
                    have += len(chunk)
                    if dtype is not None:
                        buf = tail + chunk
                        usable = len(buf) - len(buf) % np.dtype(dtype).itemsize
                        values = np.frombuffer(buf[:usable], dtype=np.dtype(dtype).newbyteorder(endian))
                        values = values[:max(0, voxels - seen)]  # bytes after the voxels are not voxels
                        scan(values, seen)
                        seen += values.size
                        tail = buf[usable:]
    except EOFError:
        raise input_error(path, "is truncated (the compressed data stops early); the copy or download was probably "
                                "interrupted. Copy or export it again.") from None
    except (gzip.BadGzipFile, zlib.error):
        raise input_error(path, "is damaged: its compressed data is corrupt. Copy or export it again.") from None
    if have < expected:
        raise input_error(path, f"is truncated: its header promises {expected} bytes but the file holds {have}. "
                                "Copy or export it again.")
    if bad and filling and bad == nan_count:
        return np.concatenate(nan_found)
    if bad:
        if filling:
            raise input_error(path, f"has {bad - nan_count} infinite voxel value(s) of {voxels}; --nan-fill replaces "
                                    "NaN voxels only. Fix or re-export the image.")
        raise input_error(path, f"has {bad} NaN or infinite voxel value(s) of {voxels}; the image was probably saved "
                                f"from a failed computation. Fix or re-export it{_NAN_FILL_HINT if nan_count == bad else ''}.")
    return None


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
    only_nan = not np.any(np.isinf(arr))
    raise input_error(path, f"has {finite.size - good} NaN or infinite voxel value(s) (first at voxel index {index}) "
                            f"among its {finite.size} voxels; the image was probably saved from a failed computation. Fix or "
                            f"re-export it{_NAN_FILL_HINT if only_nan else ''}.")


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
