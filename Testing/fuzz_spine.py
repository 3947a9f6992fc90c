"""Bad inputs for the spine method (a part of the fuzz corpus, see fuzz_corpus.py).

Every entry runs `lesiondetect infer --method spine-mtl` (a model ships for it) on an
unsuitable CT or with an unsuitable vertebra segmentation: a 2-D slice, a sagittal or oblique
stack, a CT without bone, a segmentation on another grid, without vertebra labels, missing,
or a Slicer segmentation on another grid.  All are made from fixed seeds.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

SPINE_METHOD = "spine-mtl"


def spine_ct(seed: int = 0, shape=(12, 48, 48)) -> np.ndarray:
    """A small axial CT: a soft-tissue body with a bony column in the middle (int16 HU)."""
    rng = np.random.default_rng(seed)
    vol = np.full(shape, -1000, np.int16)
    vol[:, 6:-6, 6:-6] = (40 + rng.normal(0, 10, (shape[0], shape[1] - 12, shape[2] - 12))).astype(np.int16)
    vol[:, 26:36, 19:29] = 400
    return vol


def infer_commands(path: Path, folder: Path, *extra: str) -> list[list[str]]:
    return [["infer", "--method", SPINE_METHOD, "--input", str(path), "--out", str(folder / "out"), "--device",
             "cpu", *extra]]


def _write(arr: np.ndarray, path: Path, spacing=(1.5, 1.5, 3.0), direction=None) -> Path:
    img = sitk.GetImageFromArray(arr)
    img.SetSpacing(spacing[:img.GetDimension()])
    if direction is not None:
        img.SetDirection(direction)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(img, str(path))
    return path


def _slice_2d(folder: Path):
    return infer_commands(_write(spine_ct()[6], folder / "slice.nrrd"), folder)


def _stacked_along(direction):
    def build(folder: Path):
        return infer_commands(_write(spine_ct(), folder / "stack.nrrd", direction=direction), folder)
    return build


def _no_bone(folder: Path):
    return infer_commands(_write(np.clip(spine_ct(), None, 150), folder / "nobone.nrrd"), folder)


def _segmentation(kind: str):
    def build(folder: Path):
        ct = _write(spine_ct(), folder / "ct.nrrd")
        labels = np.zeros(spine_ct().shape, np.uint8)
        labels[:, 26:36, 19:29] = 31
        if kind == "other-grid":
            seg = _write(labels[:, ::2, ::2], folder / "vertebrae.nii.gz", spacing=(3.0, 3.0, 3.0))
        elif kind == "no-vertebrae":
            seg = _write(np.where(labels > 0, 5, 0).astype(np.uint8), folder / "vertebrae.nii.gz")
        elif kind == "missing":
            seg = folder / "vertebrae.nii.gz"
        elif kind == "empty-folder":
            seg = folder / "segmentations"
            seg.mkdir()
        else:  # a Slicer segmentation made on another CT
            from LesionDetectLib.geometry import Geometry
            from LesionDetectLib.segnrrd import Segment, write_segmentation

            other = Geometry((24, 24, 12), (3.0, 3.0, 3.0), (0.0, 0.0, 0.0))
            seg = write_segmentation(folder / "vertebrae.seg.nrrd", labels[:, ::2, ::2] > 0, other,
                                     [Segment("s1", "vertebrae_L1", 1, terminology="")])
        return infer_commands(ct, folder, "--set", f"vertebrae={seg}")
    return build


def spine_entries(entry_type) -> list:
    """The spine entries, as `entry_type(name, kind, expect, build)` (fuzz_corpus.Entry)."""
    sagittal = (0.0, 0.0, 1.0, 0.0, 1.0, 0.0, 1.0, 0.0, 0.0)
    c, s = np.cos(np.radians(50)), np.sin(np.radians(50))
    oblique = (1.0, 0.0, 0.0, 0.0, c, -s, 0.0, s, c)
    builds = [("2d-slice", _slice_2d), ("sagittal", _stacked_along(sagittal)), ("oblique-50deg", _stacked_along(oblique)),
              ("no-bone", _no_bone)]
    builds += [(f"vertebrae-{kind}", _segmentation(kind))
               for kind in ("other-grid", "no-vertebrae", "missing", "empty-folder", "slicer-other-grid")]
    return [entry_type(f"spine-{name}", "spine", "refuse", build) for name, build in builds]
