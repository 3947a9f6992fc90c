"""Bad planar inputs for the bone-scan method (a part of the fuzz corpus, see fuzz_corpus.py).

Every entry runs `lesiondetect infer --method bone-scan-cls` (a model ships for it) on one
damaged or unsuitable planar image: a colour picture, a blank one, a truncated PNG or JPEG, a
volume, NaN values, an empty or 4-D image, a DICOM NM file whose pixel data is damaged.  All
are made from fixed seeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

PLANAR_METHOD = "bone-scan-cls"


def scan_array(seed: int = 0, shape=(64, 32)) -> np.ndarray:
    """A small anterior whole-body view: a body-shaped blob with a few hot spots (uint8)."""
    rng = np.random.default_rng(seed)
    arr = np.zeros(shape, np.float32)
    arr[4:-4, 8:-8] = 60 + rng.normal(0, 5, (shape[0] - 8, shape[1] - 16))
    arr[20:24, 12:16] += 120
    return np.clip(arr, 0, 255).astype(np.uint8)


def infer_commands(path: Path, folder: Path) -> list[list[str]]:
    return [["infer", "--method", PLANAR_METHOD, "--input", str(path), "--out", str(folder / "out"),
             "--device", "cpu"]]


def _write(arr: np.ndarray, path: Path, **kwargs) -> Path:
    img = sitk.GetImageFromArray(arr, **kwargs)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def _colour(folder: Path):
    base = scan_array()
    rgb = np.stack([base, np.flipud(base), np.full_like(base, 40)], -1)  # channels that differ
    return infer_commands(_write(rgb, folder / "colour.png", isVector=True), folder)


def _blank(folder: Path):
    return infer_commands(_write(np.zeros((64, 32), np.uint8), folder / "blank.png"), folder)


def _truncated(suffix: str, fraction: float):
    def build(folder: Path):
        full = _write(scan_array(1), folder / "full" / f"scan{suffix}")
        data = full.read_bytes()
        path = folder / f"scan{suffix}"
        path.write_bytes(data[:max(1, int(len(data) * fraction))])
        full.unlink()
        full.parent.rmdir()
        return infer_commands(path, folder)
    return build


def _volume(folder: Path):
    vol = np.stack([scan_array(k).astype(np.float32) for k in range(4)])
    return infer_commands(_write(vol, folder / "volume.nrrd"), folder)


def _nan(folder: Path):
    arr = scan_array().astype(np.float32)
    arr[30, 16] = np.nan
    return infer_commands(_write(arr, folder / "nan.nrrd"), folder)


def _zero_size(folder: Path):
    path = folder / "empty.nrrd"
    path.write_bytes(b"NRRD0004\ntype: float\ndimension: 2\nsizes: 0 32\nencoding: raw\nendian: little\n\n")
    return infer_commands(path, folder)


def _four_d(folder: Path):
    frame = sitk.GetImageFromArray(np.stack([scan_array(k).astype(np.float32) for k in range(3)]))
    path = folder / "fourd.nrrd"
    sitk.WriteImage(sitk.JoinSeries([frame, frame]), str(path))  # 32 x 64 x 3 x 2
    return infer_commands(path, folder)


def _dicom_nm(damage: str):
    def build(folder: Path):
        from pydicom.uid import NuclearMedicineImageStorage

        from io_helpers import dicom_dataset

        ds = dicom_dataset(NuclearMedicineImageStorage, "NM", "TEST", instance_uid="1.2.826.0.1.3680043.8.498.1")
        ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2", "1.2.826.0.1.3680043.8.498.3"
        ds.Rows, ds.Columns, ds.NumberOfFrames = (0 if damage == "zero-rows" else 64), 32, 1
        ds.PixelSpacing = [2.4, 2.4]
        pixels = scan_array().astype(np.uint16).tobytes()
        ds.PixelData = pixels[:len(pixels) // 3] if damage == "short-pixels" else pixels
        path = folder / "scan.dcm"
        ds.save_as(path, enforce_file_format=True)
        if damage == "cut-pixels":  # the file ends inside the pixel data
            data = path.read_bytes()
            path.write_bytes(data[:len(data) - len(pixels) // 2])
        return infer_commands(path, folder)
    return build


def planar_entries(entry_type) -> list:
    """The planar entries, as `entry_type(name, kind, expect, build)` (fuzz_corpus.Entry)."""
    builds = [("colour-png", _colour), ("blank-png", _blank), ("3d-nrrd", _volume), ("nan-2d-nrrd", _nan),
              ("zero-size-nrrd", _zero_size), ("4d-nrrd", _four_d)]
    for suffix in (".png", ".jpg"):
        for fraction in (0.05, 0.5, 0.9):
            builds.append((f"truncated{suffix}-{fraction}", _truncated(suffix, fraction)))
    for damage in ("short-pixels", "cut-pixels", "zero-rows"):  # pixel data shorter than Rows x Columns, a file
        builds.append((f"dicom-nm-{damage}", _dicom_nm(damage)))  # ending inside it, an empty image
    return [entry_type(f"planar-{name}", "planar", "refuse", build) for name, build in builds]
