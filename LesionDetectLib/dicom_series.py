"""The DICOM series check: refuse a series with a damaged, missing, duplicate or foreign slice,
or uneven spacing, naming the slice (ITK would stack it anyway and stretch the gap)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import input_error


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"


def check_dicom_series(folder: Path, files: list[str], series_names: set[str], slice_tags=None,
                       skip_strays: bool = False) -> None:
    """Refuse a series with a damaged, missing, duplicate or foreign slice, or uneven spacing
    (ITK would stack it anyway and stretch the gap), naming the slice.

    `slice_tags(i, tag)`: the text of DICOM tag "gggg|eeee" of slice i, or None, as an
    ImageSeriesReader that read the series with MetaDataDictionaryArrayUpdateOn holds them
    (then no file is opened again: io reads the series, then checks it); without it, each
    slice's header is read with pydicom.  `skip_strays`: the folder's other files were checked
    already (`check_dicom_strays`)."""
    if not skip_strays:
        check_dicom_strays(folder, series_names)
    if len(files) < 2:
        return
    rows = []
    for i, name in enumerate(files):
        try:
            if slice_tags is not None:
                position, orientation, grid = _itk_slice_geometry(slice_tags, i)
            else:
                position, orientation, grid = _pydicom_slice_geometry(name)
        except Exception:  # noqa: BLE001 - pydicom raises many types for a damaged header
            raise input_error(name, f"(a slice of the series in {folder}) has no readable position, orientation or "
                                    "size tags; replace or remove it") from None
        rows.append((Path(name).name, np.array(position), np.array(orientation), grid))
    _check_series_rows(folder, rows)


def _pydicom_slice_geometry(name):
    import pydicom

    ds = pydicom.dcmread(name, stop_before_pixels=True, force=True)
    position = [float(v) for v in ds.ImagePositionPatient]
    orientation = [float(v) for v in ds.ImageOrientationPatient]
    grid = (int(ds.Rows), int(ds.Columns), tuple(round(float(v), 4) for v in ds.get("PixelSpacing", [1, 1])))
    return position, orientation, grid


def _itk_slice_geometry(slice_tags, i):
    def numbers(tag, n=None, default=None):
        text = slice_tags(i, tag)
        if text is None:
            if default is None:
                raise ValueError(tag)
            return default
        values = [float(v) for v in text.strip().split("\\")]
        if n is not None and len(values) != n:
            raise ValueError(tag)
        return values

    position = numbers("0020|0032", 3)
    orientation = numbers("0020|0037", 6)
    rows, columns = int(numbers("0028|0010", 1)[0]), int(numbers("0028|0011", 1)[0])
    spacing = numbers("0028|0030", 2, default=[1.0, 1.0])
    return position, orientation, (rows, columns, tuple(round(v, 4) for v in spacing))


def check_dicom_strays(folder: Path, series_names: set[str]) -> None:
    """Refuse a folder holding DICOM files that belong to no readable series."""
    stray = sorted(e.name for e in folder.iterdir() if e.is_file() and e.name not in series_names
                   and _has_dicom_magic(e))
    if stray:
        raise input_error(folder, f"holds DICOM file(s) that are not part of any readable series ({', '.join(stray[:3])}"
                                  f"{', ...' if len(stray) > 3 else ''}): damaged or foreign slices. Remove or replace "
                                  "them; a series with a bad slice is not read, so that no gap is silently stretched.")


def _check_series_rows(folder: Path, rows: list) -> None:
    """Same grid and orientation in every slice, no duplicate position, even spacing."""
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
