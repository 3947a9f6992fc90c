"""Corrected results -> a case in a training dataset (the layout LesionDetectLib.dataset reads).

Per case: images/<case>.nrrd, labels/<case>.seg.nrrd, boxes/<case>.mrk.json,
points/<case>.mrk.json (whichever exist) and a dataset.json entry with provenance (model,
method, threshold, whether the user corrected the model's result, time).

With the review (review.py; `export_from_scene(..., review=True)`), findings the annotator
rejected leave the mask, boxes and points, and are written as hard negatives:
negative_points/<case>.mrk.json (rejected points, and rejected mask components at their
centroid, with their scores) and negative_boxes/<case>.mrk.json (rejected boxes, with their
scores), named by the case keys "negative_points" and "negative_boxes" (only when there are
any); the case's "review" key records the decision on every finding: {"model_id",
"model_sha256" (when known), "threshold", "reviewer", "time", "findings": [{"id", "kind",
"state", "score", "position_lps", "label"}]}.  Every file is
written atomically by LesionDetectLib's writers and nothing existing is ever overwritten: if
the case id is taken (in dataset.json or on disk) the export becomes <case>_v2, _v3, ...
dataset.json itself is re-read, extended and replaced in one step under a lock file, so two
exports cannot lose each other's entry.

dataset.json is the commit point: a case exists once its entry is there, and its files are
all written before it is.  An export killed at any moment (SIGKILL, power loss) leaves
dataset.json and every file it names as they were, or the complete new case.  Its lock file
(dataset.json.lock) names the process and the files it was writing; the next export finds the
lock's process gone, removes the files of that export that dataset.json does not name (and
their temporary files), and goes on (`recover`).

`export_case` works on LesionDetectLib objects; `export_from_scene` reads them from MRML nodes.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import glob
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from LesionDetectLib import __version__, markups, segnrrd
from LesionDetectLib.dataset import DATASET_FILE, read_dataset_json, write_dataset_json
from LesionDetectLib.errors import LesionDetectError, input_error
from LesionDetectLib.files import (atomic_path, check_free_space, fault_point, full_disk_reason, lock_holder_gone,
                                   lock_owner, process_lock, read_lock)
from LesionDetectLib.geometry import Geometry
from LesionDetectLib.io import modality_guess, write_image
from LesionDetectLib.prediction import LesionBox, LesionPoint, Prediction

from . import convert

SUBFOLDERS = {"image": ("images", ".nrrd"), "mask": ("labels", ".seg.nrrd"),
              "boxes": ("boxes", ".mrk.json"), "points": ("points", ".mrk.json"),
              "negative_points": ("negative_points", ".mrk.json"), "negative_boxes": ("negative_boxes", ".mrk.json")}
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
    negative_points: list[LesionPoint] | None = None  # hard negatives: rejected detections (written when not empty)
    negative_boxes: list[LesionBox] | None = None


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
                dataset_name: str | None = None, review: dict | None = None) -> ExportResult:
    """Write one annotated case into `dataset_dir` (created if needed); see the module docstring.

    `provenance` goes into the case entry as given plus "time" and "lesiondetect_version"
    (callers pass model, method, threshold and corrected).  `review` (review.review_record)
    goes into the entry as "review", its "time" set to the export's.  Returns the case id used
    (a new version if `case_id` was taken) and the files written.
    """
    if not _CASE_ID.match(case_id or ""):
        raise LesionDetectError(f"case id {case_id!r} must start with a letter or digit and hold only "
                                "letters, digits, '.', '_' or '-'")
    root = Path(dataset_dir)
    root.mkdir(parents=True, exist_ok=True)
    geometry = Geometry.of(annotation.image)
    modality = modality or modality_guess(annotation.image)
    with _dataset_lock(root) as lock:
        doc = _existing_dataset(root)
        if doc is not None and doc.get("modality") != modality:
            raise input_error(root / DATASET_FILE, f"holds {doc.get('modality')} images; this case is {modality}")
        final_id = _free_case_id(root, doc, case_id)
        parts = {"image": True, "mask": annotation.mask is not None, "boxes": annotation.boxes is not None,
                 "points": annotation.points is not None, "negative_points": bool(annotation.negative_points),
                 "negative_boxes": bool(annotation.negative_boxes)}
        check_free_space(root, _expected_bytes(annotation), "the exported case")
        written: dict[str, Path] = {}
        try:
            lock.plan([_path(root, kind, final_id) for kind, wanted in parts.items() if wanted])
            fault_point("export-planned")
            written["image"] = write_image(annotation.image, _path(root, "image", final_id))
            fault_point("export-image")
            if annotation.mask is not None:
                written["mask"] = segnrrd.write_segmentation(_path(root, "mask", final_id), annotation.mask, geometry,
                                                             [segnrrd.lesion_segment(status="completed")])
                fault_point("export-mask")
            if annotation.boxes is not None:
                written["boxes"] = markups.write_boxes(_path(root, "boxes", final_id), annotation.boxes)
                fault_point("export-boxes")
            if annotation.points is not None:
                written["points"] = markups.write_points(_path(root, "points", final_id), annotation.points)
                fault_point("export-points")
            if annotation.negative_points:
                written["negative_points"] = markups.write_points(_path(root, "negative_points", final_id),
                                                                  annotation.negative_points,
                                                                  name="Rejected lesion points")
            if annotation.negative_boxes:
                written["negative_boxes"] = markups.write_boxes(_path(root, "negative_boxes", final_id),
                                                                annotation.negative_boxes)
            now = _now()
            entry = {"id": final_id, "patient": patient or _VERSION_SUFFIX.sub("", case_id),
                     **{k: p.relative_to(root).as_posix() for k, p in written.items()},
                     "provenance": {**provenance, "time": now, "lesiondetect_version": __version__}}
            if review is not None:
                entry["review"] = {**review, "time": now}
            _add_case(root, doc, entry, modality, dataset_name)  # the commit point
            fault_point("export-committed")
        except BaseException as exc:
            full = full_disk_reason(root) if isinstance(exc, (OSError, LesionDetectError)) else None
            for p in written.values():  # nothing half-exported stays behind
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
            if isinstance(exc, OSError) or full:
                reason = full or exc.strerror or exc
                raise input_error(root, f"the case cannot be exported ({reason}); the dataset was left as it "
                                        "was") from None
            raise
    return ExportResult(case_id=final_id, dataset_json=root / DATASET_FILE, files=written, entry=entry)


def export_from_scene(dataset_dir: str | os.PathLike, case_id: str, input_volume, segmentations_logic, *,
                      segmentation=None, segment_id: str = convert.LESION_SEGMENT_ID, box_nodes=(),
                      points_node=None, prediction: Prediction | None = None, threshold: float | None = None,
                      modality: str | None = None, review: bool = False, classes_node=None,
                      probability_node=None, reviewer: str = "", model_sha256: str | None = None) -> ExportResult:
    """Export what the user has in the scene now: the segment, the ROI nodes still in the scene,
    the fiducial list.  `prediction` (the model's output) decides the "corrected" flag.

    review=True applies the review states (review.py): rejected components, boxes and points are
    left out and written as hard negatives, and the case records every finding's decision
    (`classes_node` lists the class rows too; `probability_node` gives components their score;
    `reviewer` names who reviewed; `model_sha256` defaults to the prediction's provenance's)."""
    image = convert.volume_to_image(input_volume)
    rois = [roi for roi in box_nodes if roi.GetScene() is not None]  # the user may have deleted some
    source = prediction.provenance if prediction is not None else None
    record = None
    if review:
        from . import overlay
        from . import review as review_

        nodes = overlay.PredictionNodes(input_volume=input_volume, probability=probability_node,
                                        segmentation=segmentation, segment_id=segment_id, boxes=rois,
                                        points=points_node, classes=classes_node, threshold=threshold)
        reviewed = review_.reviewed_export(nodes, segmentations_logic)
        annotation = Annotation(image=image, mask=reviewed.mask if segmentation is not None else None,
                                boxes=reviewed.boxes if box_nodes else None,
                                points=reviewed.points if points_node is not None else None,
                                negative_points=reviewed.negative_points, negative_boxes=reviewed.negative_boxes)
        parameters = source.parameters if source is not None else {}
        sha = model_sha256 or next((parameters[k] for k in ("model_sha256", "weights_sha256")
                                    if isinstance(parameters.get(k), str) and parameters[k]), None)
        record = review_.review_record(reviewed.findings, model_id=source.model_id if source else "",
                                       model_sha256=sha, threshold=threshold, reviewer=reviewer or "")
    else:
        mask = (convert.segment_mask(segmentation, segment_id, input_volume, segmentations_logic)
                if segmentation is not None else None)
        annotation = Annotation(image=image, mask=mask,
                                boxes=[convert.roi_to_box(r) for r in rois] if box_nodes else None,
                                points=convert.fiducials_to_points(points_node) if points_node is not None else None)
    provenance = {"model": source.model_id if source else "", "model_version": source.model_version if source else "",
                  "method": source.method if source else "", "threshold": threshold,
                  "corrected": is_corrected(annotation, prediction, threshold),
                  "source": "LesionDetect Slicer module"}
    return export_case(dataset_dir, case_id, annotation, provenance=provenance, modality=modality, review=record)


# --- helpers --------------------------------------------------------------------------------

def _expected_bytes(annotation: Annotation) -> int:
    """An upper bound of what one exported case takes: image and mask uncompressed, 1 KiB per
    box or point, 64 KiB for dataset.json and headers."""
    image = annotation.image
    voxels = int(np.prod(image.GetSize()))
    image_bytes = voxels * image.GetNumberOfComponentsPerPixel() * image.GetSizeOfPixelComponent()
    mask_bytes = annotation.mask.nbytes if annotation.mask is not None else 0
    findings = sum(len(getattr(annotation, k) or []) for k in ("boxes", "points", "negative_points", "negative_boxes"))
    return int(image_bytes + mask_bytes + 1024 * findings + 64 * 1024)


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


class _Lock:
    """The held lock file: it names this process (pid and host) and, once `plan` is called,
    the files this export writes, so that the next export can undo a killed one."""

    def __init__(self, path: Path, root: Path):
        self.path, self.root = path, root

    def plan(self, paths) -> None:
        _write_lock(self.path, {**lock_owner(), "files": [Path(p).relative_to(self.root).as_posix() for p in paths]})


def _write_lock(lock: Path, content: dict) -> None:
    """Replace the lock's content in one step (it exists throughout, so no other export can take it)."""
    with atomic_path(lock, overwrite=True) as tmp:
        tmp.write_text(json.dumps(content), encoding="utf-8")


def recover(root: str | os.PathLike) -> list[Path]:
    """Undo an export that was killed while it held the lock of `root`: remove the files its
    lock lists that dataset.json does not name, and the temporary files beside them; then the
    lock.  Returns the files removed.  Does nothing while the lock's process still runs."""
    root = Path(root)
    lock = root / (DATASET_FILE + ".lock")
    content = read_lock(lock)
    if not lock.exists() or not lock_holder_gone(content, lock):
        return []
    # take the stale lock over in one step, so that two recovering exports cannot both act
    taken = lock.with_name(f"{lock.name}.stale-{os.getpid()}")
    try:
        os.rename(lock, taken)
    except FileNotFoundError:
        return []
    if read_lock(taken) != content:  # another export took and replaced it meanwhile: give it back
        with contextlib.suppress(OSError):
            os.link(taken, lock)
        taken.unlink(missing_ok=True)
        return []
    removed = []
    named = _named_files(root)
    planned = [root / rel for rel in (content or {}).get("files", []) if isinstance(rel, str)]
    for path in planned if named is not None else ():  # an unreadable dataset.json: remove nothing
        if path.resolve() not in named and path.exists() and root.resolve() in path.resolve().parents:
            path.unlink()
            removed.append(path)
    for folder in {p.parent for p in planned} | {root}:
        names = [p.name for p in planned if p.parent == folder]
        names += [DATASET_FILE, DATASET_FILE + ".lock"] if folder == root else []
        for name in names:  # atomic_path's temporary files: .tmp-<random>-<name>
            for tmp in folder.glob(".tmp-*-" + glob.escape(name)):
                tmp.unlink(missing_ok=True)
                removed.append(tmp)
    taken.unlink(missing_ok=True)
    return removed


def _named_files(root: Path) -> set[Path] | None:
    """The files dataset.json names (resolved); None when dataset.json cannot be read."""
    try:
        doc = _existing_dataset(root)
    except LesionDetectError:
        return None
    named = set()
    for case in (doc or {}).get("cases", []):
        if isinstance(case, dict):
            for key in ("image", "mask", "roi", "points", "boxes", "negative_points", "negative_boxes"):
                if isinstance(case.get(key), str):
                    named.add((root / case[key]).resolve())
    return named


@contextlib.contextmanager
def _dataset_lock(root: Path):
    """files.process_lock on a lock file beside dataset.json; a lock left by a killed export is
    recovered (`recover`: the files it had planned are removed) instead of waited for."""
    with process_lock(root / (DATASET_FILE + ".lock"), "exporting into this dataset", LOCK_TIMEOUT_S,
                      take_over=lambda lock: recover(root)) as lock:
        yield _Lock(lock, root)
