"""input-gate: seconds the input checks add per input (header, values, modality) against reading it alone.

Four inputs as infer meets them, written fresh into a temporary folder (so read from the page
cache, as a second look at a file is): a 512 x 512 x 100 CT (int16 NIfTI, gzip) for
bone-ct-patch, the same CT as a DICOM series of 100 slices for liver-frcnn, a 182 x 218 x 182
FLAIR (float32 NIfTI, gzip) for ms-flair-fcn and a two-view planar bone scan (NM DICOM,
2 x 1024 x 256) for bone-scan-cls.  Per input: `read_s` (SimpleITK / pydicom reading and
nothing else), `header_s` (gate.check_header and the CRC check of the voxels ITK read for
NIfTI; gate.check_dicom_series on the tags the series reader collected; for the planar file,
what read_views spends beyond reading, as its checks cannot be timed apart), `values_s` (the
method's check_input: scalar, dimension, finite values, modality) and `gate_s` = header_s +
values_s, the cost of the checks; `total_s` is what infer spends reading and checking
(method.read_inputs + check_input) and `overhead_s` = total_s - read_s, everything LesionDetect
adds to a plain read.  Target: gate_s <= 0.2 s per input.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from .measure import median_seconds, peak_rss_mb

NAME = "input-gate"
TARGET_S = 0.2


# --- the inputs ------------------------------------------------------------------------------------

def _ct_array(shape, seed: int = 0) -> np.ndarray:
    """Air, a body of soft tissue with noise, a spine of bone: int16 Hounsfield units."""
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    y, x = np.ogrid[:ny, :nx]
    body = ((y - ny / 2) / (ny * 0.38)) ** 2 + ((x - nx / 2) / (nx * 0.45)) ** 2 < 1
    spine = ((y - ny * 0.7) / (ny * 0.06)) ** 2 + ((x - nx / 2) / (nx * 0.05)) ** 2 < 1
    vol = np.full(shape, -1000, np.int16)
    vol[:, body] = 40
    vol[:, spine] = 700
    vol += rng.normal(0, 12, shape).astype(np.int16)
    return vol


def _flair_array(shape, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    z, y, x = np.ogrid[:nz, :ny, :nx]
    r = ((z - nz / 2) / (nz * 0.38)) ** 2 + ((y - ny / 2) / (ny * 0.39)) ** 2 + ((x - nx / 2) / (nx * 0.38)) ** 2
    return (np.where(r < 1, 100.0, 0.0) + np.abs(rng.normal(0, 5, shape))).astype(np.float32)


def _write_nifti(arr: np.ndarray, path: Path, spacing) -> Path:
    image = sitk.GetImageFromArray(arr)
    image.SetSpacing(spacing)
    sitk.WriteImage(image, str(path), useCompression=True)
    return path


def _dicom_base(sop_class, modality: str):
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = modality, "BENCH"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def _write_dicom_series(hu: np.ndarray, folder: Path, spacing_z: float = 2.5) -> Path:
    """One CT series, uint16 stored values with RescaleIntercept -1024."""
    from pydicom.uid import CTImageStorage, generate_uid

    folder.mkdir(parents=True)
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    stored = (hu.astype(np.int32) + 1024).clip(0, 65535).astype(np.uint16)
    for k in range(hu.shape[0]):
        ds = _dicom_base(CTImageStorage, "CT")
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-180.0, -180.0, spacing_z * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.7, 0.7]
        ds.SliceThickness = spacing_z
        ds.Rows, ds.Columns = hu.shape[1:]
        ds.RescaleSlope, ds.RescaleIntercept = 1.0, -1024.0
        ds.PixelData = stored[k].tobytes()
        ds.save_as(folder / f"slice{k:04d}.dcm", enforce_file_format=True)
    return folder


def _write_planar(path: Path, rows: int, cols: int, seed: int = 2) -> Path:
    """A two-frame NM file (anterior, posterior) of counts."""
    from pydicom.uid import NuclearMedicineImageStorage

    rng = np.random.default_rng(seed)
    frames = rng.poisson(20, (2, rows, cols)).astype(np.uint16)
    frames[:, rows // 3:rows // 3 + 8, cols // 2:cols // 2 + 8] += 200  # a hot spot
    ds = _dicom_base(NuclearMedicineImageStorage, "NM")
    ds.NumberOfFrames = 2
    ds.Rows, ds.Columns = rows, cols
    ds.PixelSpacing = [2.4, 2.4]
    ds.PixelData = frames.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# --- reading alone ----------------------------------------------------------------------------------

def _read_file(path: Path):
    return sitk.ReadImage(str(path))


def _read_series(folder: Path):
    reader = sitk.ImageSeriesReader()
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0]))
    return reader.Execute()


def _read_planar(path: Path):
    import pydicom

    return pydicom.dcmread(path).pixel_array


# --- the measurement -----------------------------------------------------------------------------------

def _measure(method_name: str, path: Path, read_alone, make_check, repeats: int) -> dict[str, float]:
    from ..methods import get_method

    method = get_method(method_name)
    read_alone(path)  # warm-up: libraries loaded, file in the page cache
    views = method.read_inputs(path)
    for _, image in views:
        method.check_input(image, path)
    check = make_check(path) if make_check else None

    def checked():
        for _, img in method.read_inputs(path):
            method.check_input(img, path)

    read_s = median_seconds(lambda: read_alone(path), repeats)
    header_s = median_seconds(check, repeats) if check else 0.0
    values_s = median_seconds(lambda: [method.check_input(img, path) for _, img in views], repeats)
    total_s = median_seconds(checked, repeats)
    if check is None:  # planar files: their checks run inside read_views, not separable
        header_s = max(0.0, total_s - values_s - read_s)
    return {"read_s": read_s, "header_s": header_s, "values_s": values_s, "gate_s": header_s + values_s,
            "total_s": total_s, "overhead_s": max(0.0, total_s - read_s)}


def _nifti_check(path: Path):
    """gate.check_header and the check of the voxels ITK read (`verify`: a CRC-32 over them)."""
    from ..gate import check_header

    image = sitk.ReadImage(str(path))

    def check():
        verify = check_header(path)
        if verify is not None:
            verify(image)
    return check


def _series_check(folder: Path):
    """gate.check_dicom_series on the tags the series reader collected of every slice, and the
    folder's other files (strays), as io.read_image runs it."""
    from ..gate import check_dicom_series

    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    files = list(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), ids[0]))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    reader.MetaDataDictionaryArrayUpdateOn()
    reader.LoadPrivateTagsOff()
    reader.Execute()
    names = {Path(f).name for f in files}

    def tags(i, tag):
        return reader.GetMetaData(i, tag) if reader.HasMetaDataKey(i, tag) else None

    return lambda: check_dicom_series(folder, files, names, slice_tags=tags)


def run(quick: bool = False) -> dict[str, Any]:
    import os

    if quick:
        ct_shape, flair_shape, planar, repeats = (10, 64, 64), (24, 32, 28), (128, 48), 1
    else:
        ct_shape, flair_shape, planar, repeats = (100, 512, 512), (182, 218, 182), (1024, 256), 3
    results: dict[str, Any] = {"quick": quick, "repeats": repeats, "target_s": TARGET_S,
                               "ct_size": list(ct_shape[::-1]), "flair_size": list(flair_shape[::-1]),
                               "planar_size": [planar[1], planar[0], 2]}
    with tempfile.TemporaryDirectory(prefix="lesiondetect-bench-gate-") as tmp:
        tmp = Path(tmp)
        hu = _ct_array(ct_shape)
        inputs = {
            "ct_nifti": ("bone-ct-patch", _write_nifti(hu, tmp / "ct.nii.gz", (0.7, 0.7, 2.5)), _read_file,
                         _nifti_check),
            "ct_dicom": ("liver-frcnn", _write_dicom_series(hu, tmp / "series"), _read_series, _series_check),
            "flair_nifti": ("ms-flair-fcn", _write_nifti(_flair_array(flair_shape), tmp / "flair.nii.gz",
                                                         (1.0, 1.0, 1.0)), _read_file, _nifti_check),
            "planar_dicom": ("bone-scan-cls", _write_planar(tmp / "scan.dcm", *planar), _read_planar, None),
        }
        del hu
        for name, (method, path, reader, header) in inputs.items():
            size = sum(p.stat().st_size for p in path.iterdir()) if path.is_dir() else path.stat().st_size
            for key, value in _measure(method, path, reader, header, repeats).items():
                results[f"{name}_{key}"] = round(value, 4)
            results[f"{name}_file_mb"] = round(size / 2**20, 2)
            results[f"{name}_method"] = method
    gates = [results[f"{name}_gate_s"] for name in inputs]
    results["max_gate_s"] = max(gates)
    results["max_overhead_s"] = max(results[f"{name}_overhead_s"] for name in inputs)
    results["within_target"] = bool(max(gates) <= TARGET_S)
    results["load_average"] = round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None
    results["peak_rss_mb"] = peak_rss_mb()
    return results
