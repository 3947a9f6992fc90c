"""Corrected results -> a case in a training dataset (the layout LesionDetectLib.dataset reads).

Per case: images/<case>.nrrd, labels/<case>.seg.nrrd, boxes/<case>.mrk.json,
points/<case>.mrk.json (whichever exist) and a dataset.json entry with provenance (model,
method, threshold, whether the user corrected the model's result, time).  Every file is
written atomically by LesionDetectLib's writers and nothing existing is ever overwritten: if
the case id is taken (in dataset.json or on disk) the export becomes <case>_v2, _v3, ...
dataset.json itself is re-read, extended and replaced in one step under a lock file, so two
exports cannot lose each other's entry.

`export_case` works on LesionDetectLib objects; `export_from_scene` reads them from MRML nodes.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from LesionDetectLib import __version__, markups, segnrrd
from LesionDetectLib.dataset import DATASET_FILE, read_dataset_json, write_dataset_json
from LesionDetectLib.errors import LesionDetectError, input_error
from LesionDetectLib.geometry import Geometry
from LesionDetectLib.io import modality_guess, write_image
from LesionDetectLib.prediction import LesionBox, LesionPoint, Prediction

from . import convert

SUBFOLDERS = {"image": ("images", ".nrrd"), "mask": ("labels", ".seg.nrrd"),
              "boxes": ("boxes", ".mrk.json"), "points": ("points", ".mrk.json")}
_CASE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_VERSION_SUFFIX = re.compile(r"_v\d+$")
LOCK_TIMEOUT_S = 30.0


@dataclass
class Annotation:
    """What the user is exporting for one image (any part may be missing)."""

    image: sitk.Image
    mask: np.ndarray | None = None  # uint8 (z, y, x) on the image's grid
    boxes: list[LesionBox] | None = None
    points: list[LesionPoint] | None = None


@dataclass
class ExportResult:
    case_id: str
    dataset_json: Path
    files: dict[str, Path] = field(default_factory=dict)
    entry: dict = field(default_factory=dict)


def is_corrected(annotation: Annotation, prediction: Prediction | None, threshold: float | None) -> bool:
    """Whether the annotation differs from what the model gave at `threshold` (a plain
    re-threshold is not a correction; an edited voxel, box or point is)."""
    if prediction is None:
        return True
    if annotation.mask is not None:
        model_mask = (prediction.thresholded(threshold) if prediction.probability is not None and threshold is not None
                      else prediction.mask)
        if model_mask is None or not np.array_equal(model_mask > 0, annotation.mask > 0):
            return True
    if annotation.boxes is not None and not _same_boxes(annotation.boxes, prediction.boxes):
        return True
    if annotation.points is not None and not _same_points(annotation.points, prediction.points):
        return True
    return False


def _same_boxes(a: list[LesionBox], b: list[LesionBox], tol: float = 1e-3) -> bool:
    key = lambda box: tuple(np.round(box.center, 2))  # noqa: E731  (order-independent comparison)
    if len(a) != len(b):
        return False
    return all(np.allclose(x.center, y.center, atol=tol) and np.allclose(x.size, y.size, atol=tol)
               and abs(x.score - y.score) < 1e-9 for x, y in zip(sorted(a, key=key), sorted(b, key=key)))


def _same_points(a: list[LesionPoint], b: list[LesionPoint], tol: float = 1e-3) -> bool:
    key = lambda p: tuple(np.round(p.position, 2))  # noqa: E731
    if len(a) != len(b):
        return False
    return all(np.allclose(x.position, y.position, atol=tol) and abs(x.score - y.score) < 1e-9
               for x, y in zip(sorted(a, key=key), sorted(b, key=key)))


def export_case(dataset_dir: str | os.PathLike, case_id: str, annotation: Annotation, *,
                provenance: dict, modality: str | None = None, patient: str | None = None,
                dataset_name: str | None = None) -> ExportResult:
    """Write one annotated case into `dataset_dir` (created if needed); see the module docstring.

    `provenance` goes into the case entry as given plus "time" and "lesiondetect_version"
    (callers pass model, method, threshold and corrected).  Returns the case id used (a new
    version if `case_id` was taken) and the files written.
    """
    if not _CASE_ID.match(case_id or ""):
        raise LesionDetectError(f"case id {case_id!r} must start with a letter or digit and hold only "
                                "letters, digits, '.', '_' or '-'")
    root = Path(dataset_dir)
    root.mkdir(parents=True, exist_ok=True)
    geometry = Geometry.of(annotation.image)
    modality = modality or modality_guess(annotation.image)
    with _dataset_lock(root):
        doc = _existing_dataset(root)
        if doc is not None and doc.get("modality") != modality:
            raise input_error(root / DATASET_FILE, f"holds {doc.get('modality')} images; this case is {modality}")
        final_id = _free_case_id(root, doc, case_id)
        written: dict[str, Path] = {}
        try:
            written["image"] = write_image(annotation.image, _path(root, "image", final_id))
            if annotation.mask is not None:
                written["mask"] = segnrrd.write_segmentation(_path(root, "mask", final_id), annotation.mask, geometry,
                                                             [segnrrd.lesion_segment(status="completed")])
            if annotation.boxes is not None:
                written["boxes"] = markups.write_boxes(_path(root, "boxes", final_id), annotation.boxes)
            if annotation.points is not None:
                written["points"] = markups.write_points(_path(root, "points", final_id), annotation.points)
            entry = {"id": final_id, "patient": patient or _VERSION_SUFFIX.sub("", case_id),
                     **{k: p.relative_to(root).as_posix() for k, p in written.items()},
                     "provenance": {**provenance, "time": _now(), "lesiondetect_version": __version__}}
            _add_case(root, doc, entry, modality, dataset_name)
        except BaseException:
            for p in written.values():  # nothing half-exported stays behind
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            raise
    return ExportResult(case_id=final_id, dataset_json=root / DATASET_FILE, files=written, entry=entry)


def export_from_scene(dataset_dir: str | os.PathLike, case_id: str, input_volume, segmentations_logic, *,
                      segmentation=None, segment_id: str = convert.LESION_SEGMENT_ID, box_nodes=(),
                      points_node=None, prediction: Prediction | None = None, threshold: float | None = None,
                      modality: str | None = None) -> ExportResult:
    """Export what the user has in the scene now: the segment, the ROI nodes still in the scene,
    the fiducial list.  `prediction` (the model's output) decides the "corrected" flag."""
    image = convert.volume_to_image(input_volume)
    mask = (convert.segment_mask(segmentation, segment_id, input_volume, segmentations_logic)
            if segmentation is not None else None)
    rois = [roi for roi in box_nodes if roi.GetScene() is not None]  # the user may have deleted some
    annotation = Annotation(image=image, mask=mask, boxes=[convert.roi_to_box(r) for r in rois] if box_nodes else None,
                            points=convert.fiducials_to_points(points_node) if points_node is not None else None)
    source = prediction.provenance if prediction is not None else None
    provenance = {"model": source.model_id if source else "", "model_version": source.model_version if source else "",
                  "method": source.method if source else "", "threshold": threshold,
                  "corrected": is_corrected(annotation, prediction, threshold),
                  "source": "LesionDetect Slicer module"}
    return export_case(dataset_dir, case_id, annotation, provenance=provenance, modality=modality)


# --- helpers --------------------------------------------------------------------------------

def _path(root: Path, kind: str, case_id: str) -> Path:
    folder, suffix = SUBFOLDERS[kind]
    return root / folder / f"{case_id}{suffix}"


def _free_case_id(root: Path, doc: dict | None, case_id: str) -> str:
    """`case_id`, or the first <base>_vN (N >= 2) not used in dataset.json nor on disk."""
    taken = {c.get("id") for c in (doc or {}).get("cases", []) if isinstance(c, dict)}
    base = _VERSION_SUFFIX.sub("", case_id)
    candidate, version = case_id, 1
    while candidate in taken or any(_path(root, kind, candidate).exists() for kind in SUBFOLDERS):
        version += 1
        candidate = f"{base}_v{version}"
    return candidate


def _existing_dataset(root: Path) -> dict | None:
    if not (root / DATASET_FILE).exists():
        return None
    return read_dataset_json(root)[1]


def _add_case(root: Path, doc: dict | None, entry: dict, modality: str, dataset_name: str | None) -> None:
    """Re-write dataset.json with one more case: written to a temporary file, then renamed over."""
    doc = dict(doc or {"name": dataset_name or root.name, "modality": modality,
                       "labels": {"0": "background", "1": "lesion"}, "cases": []})
    cases = [*doc.pop("cases"), entry]
    name, modality_, labels = doc.pop("name"), doc.pop("modality"), doc.pop("labels")
    write_dataset_json(root, name, modality_, cases, labels=labels, overwrite=True, **doc)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def _dataset_lock(root: Path):
    """An exclusive lock file beside dataset.json (O_EXCL works on every platform)."""
    lock = root / (DATASET_FILE + ".lock")
    deadline = time.monotonic() + LOCK_TIMEOUT_S
    while True:
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            break
        except FileExistsError:
            if time.monotonic() > deadline:
                raise input_error(lock, "another export holds this lock; remove the file if no export is running")
            time.sleep(0.1)
    try:
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
