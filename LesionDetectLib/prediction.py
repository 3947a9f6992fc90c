"""`Prediction`: the one result type every method returns and every consumer reads.

A Prediction holds, on the input image's geometry, any of: a probability map, a binary mask
with its threshold, lesion points with scores, boxes with scores (physical coordinates),
and image/slice-level class probabilities, plus provenance.  The CLI writers below, the
Slicer adapter and the evaluators consume it without knowing which method produced it.

Files written by `write_prediction(pred, out_dir)` (all opened by Slicer as they are):
  probability.nrrd   float32 map, the input's geometry
  mask.seg.nrrd      segmentation with one "Lesion" segment
  boxes.mrk.json     ROI markups, one per box, score as a measurement
  points.mrk.json    fiducial markups, one control point per lesion candidate
  classes.json/.csv  image- or slice-level class probabilities
  regions.seg.nrrd   labelled regions (e.g. involved vertebrae, one segment each, coloured by type)
  prediction.json    manifest: provenance, geometry, threshold, what was written
"""

from __future__ import annotations

import csv
import datetime as _dt
import io as _io
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from . import __version__, markups
from .errors import input_error
from .files import (atomic_dir, atomic_path, check_free_space, fault_point, read_json, refuse_existing, write_json,
                    write_text)
from .findings import ClassResult, LesionBox, LesionPoint, positive_probability  # re-exported: the parts
from .geometry import Geometry

MANIFEST = "prediction.json"
FILES = {
    "probability": "probability.nrrd",
    "mask": "mask.seg.nrrd",
    "boxes": "boxes.mrk.json",
    "points": "points.mrk.json",
    "classes_json": "classes.json",
    "classes_csv": "classes.csv",
    "regions": "regions.seg.nrrd",
}


@dataclass
class Provenance:
    method: str
    model_id: str = ""
    model_version: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    input: str = ""
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    lesiondetect_version: str = __version__


@dataclass
class Region:
    """A labelled region of the image: the voxels of `Prediction.regions` equal to `value`,
    shown as one segment named `name` in `color` (RGB 0-1), e.g. "L2: lytic, bilateral"."""

    value: int
    name: str
    color: tuple[float, float, float] = (0.5, 0.5, 0.5)


@dataclass
class Prediction:
    geometry: Geometry
    provenance: Provenance
    probability: np.ndarray | None = None  # float32 (z, y, x) in [0, 1]
    mask: np.ndarray | None = None  # uint8 (z, y, x), 1 = lesion
    threshold: float | None = None  # the threshold that made `mask` from `probability`
    points: list[LesionPoint] = field(default_factory=list)
    boxes: list[LesionBox] = field(default_factory=list)
    classes: list[ClassResult] = field(default_factory=list)
    regions: np.ndarray | None = None  # uint16 (z, y, x) label map of `region_names`' values (0 = none)
    region_names: list[Region] = field(default_factory=list)

    def __post_init__(self):
        for name in ("probability", "mask", "regions"):
            arr = getattr(self, name)
            if arr is not None and arr.shape != self.geometry.shape:
                raise ValueError(f"{name} shape {arr.shape} differs from the geometry's (z, y, x) {self.geometry.shape}")
        if self.probability is not None:
            self.probability = np.asarray(self.probability, dtype=np.float32)
        if self.mask is not None:
            self.mask = (np.asarray(self.mask) > 0).astype(np.uint8)
        if self.regions is not None:
            self.regions = np.asarray(self.regions).astype(np.uint16)

    def thresholded(self, threshold: float) -> np.ndarray:
        """The mask at another threshold (probability >= threshold), without rerunning a model."""
        if self.probability is None:
            raise ValueError("this prediction has no probability map to threshold")
        return (self.probability >= threshold).astype(np.uint8)


# --- one number per prediction ---------------------------------------------------------------

def summary_probability(pred: Prediction) -> float | None:
    """The one probability that sums up a prediction: the batch summary's `probability`
    column, and the number any other consumer (the Slicer side) should show for it:

    - class results: the image-level probability of the positive class (the class that is
      not "normal"/"background"/"negative"; the highest of them when there are several);
      with only slice-level results, the highest such probability over the slices;
    - else the highest score among its points and boxes;
    - else the maximum of its probability map;
    - else None.
    """
    positive = positive_probability(pred.classes)
    if positive is not None:
        return positive
    scores = [float(f.score) for f in (*pred.points, *pred.boxes)]
    if scores:
        return max(scores)
    if pred.probability is not None and pred.probability.size:
        return float(np.max(pred.probability))
    return None


# --- writing and reading -------------------------------------------------------------------

def write_prediction(pred: Prediction, out_dir: str | os.PathLike, overwrite: bool = False) -> dict[str, Path]:
    """Write every part `pred` has into `out_dir` (see the module docstring); returns the paths.

    Refuses to overwrite an earlier prediction in `out_dir` unless overwrite=True.  The folder
    is written whole into a temporary sibling and swapped in (`files.atomic_dir`): a process
    killed at any moment leaves the complete earlier result or the complete new one, and
    none of the earlier result's files survive beside the new one (other files the user put
    into the folder do).
    """
    out = Path(out_dir)
    if not overwrite:
        for name in [MANIFEST, *FILES.values()]:
            refuse_existing(out / name)
    check_free_space(out, expected_bytes(pred), "the prediction")
    with atomic_dir(out, replaced=[MANIFEST, *FILES.values()]) as tmp:
        written = _write_parts(pred, tmp)
    return {key: out / path.name for key, path in written.items()}


def expected_bytes(pred: Prediction) -> int:
    """An upper bound of what `write_prediction` writes: the arrays uncompressed, 1 KiB per
    finding and 64 KiB for the manifest and headers."""
    arrays = sum(a.nbytes for a in (pred.probability, pred.mask, pred.regions) if a is not None)
    return int(arrays + 1024 * (len(pred.points) + len(pred.boxes) + 2 * len(pred.classes)) + 64 * 1024)


def _write_parts(pred: Prediction, out: Path) -> dict[str, Path]:
    """Every part into the (new, empty) folder `out`, the manifest last."""
    from . import segnrrd  # imported here: it pulls in slicerio and pynrrd

    written: dict[str, Path] = {}
    if pred.probability is not None:
        with atomic_path(out / FILES["probability"]) as tmp:
            try:
                sitk.WriteImage(pred.geometry.image(pred.probability), str(tmp), useCompression=True)
            except RuntimeError as exc:  # ITK's way of saying the disk is full or the folder is gone
                raise OSError(str(exc).strip().splitlines()[-1][:200]) from None
        written["probability"] = out / FILES["probability"]
        fault_point("probability")
    if pred.mask is not None:
        segment = segnrrd.lesion_segment()
        written["mask"] = segnrrd.write_segmentation(out / FILES["mask"], pred.mask, pred.geometry, [segment])
        fault_point("mask")
    if pred.regions is not None and pred.region_names:
        segments = [segnrrd.Segment(id=f"region{r.value}", name=r.name, label_value=r.value, color=r.color,
                                    terminology="", status="inprogress") for r in pred.region_names]
        written["regions"] = segnrrd.write_segmentation(out / FILES["regions"], pred.regions, pred.geometry, segments)
    if pred.boxes:
        written["boxes"] = markups.write_boxes(out / FILES["boxes"], pred.boxes)
    if pred.points:
        written["points"] = markups.write_points(out / FILES["points"], pred.points)
    if pred.classes:
        written["classes_json"] = write_json(out / FILES["classes_json"], [asdict(c) for c in pred.classes])
        written["classes_csv"] = write_text(out / FILES["classes_csv"], _classes_csv(pred.classes))
    fault_point("parts")
    manifest = {
        "format": "lesiondetect-prediction",
        "format_version": 1,
        "provenance": asdict(pred.provenance),
        "geometry": pred.geometry.to_dict(),
        "threshold": pred.threshold,
        "counts": {"points": len(pred.points), "boxes": len(pred.boxes), "classes": len(pred.classes),
                   "mask_voxels": int(pred.mask.sum()) if pred.mask is not None else None},
        "files": {k: p.name for k, p in written.items()},
    }
    written["manifest"] = write_json(out / MANIFEST, manifest)
    return written


def read_prediction(out_dir: str | os.PathLike) -> Prediction:
    """Read back what `write_prediction` wrote."""
    from . import segnrrd

    out = Path(out_dir)
    manifest_path = out / MANIFEST
    manifest = read_json(manifest_path, missing="not found: not a LesionDetect prediction folder",
                         invalid="not valid JSON")
    if manifest.get("format") != "lesiondetect-prediction":
        raise input_error(manifest_path, "is not a LesionDetect prediction manifest")
    files = manifest.get("files", {})
    geometry = Geometry.from_dict(manifest["geometry"])
    pred = Prediction(geometry=geometry, provenance=Provenance(**manifest["provenance"]),
                      threshold=manifest.get("threshold"))
    if "probability" in files:
        pred.probability = sitk.GetArrayFromImage(sitk.ReadImage(str(out / files["probability"]))).astype(np.float32)
    if "mask" in files:
        seg = segnrrd.read_segmentation(out / files["mask"])
        pred.mask = seg.mask(seg.segments[0].id, geometry).astype(np.uint8)
    if "regions" in files:
        seg = segnrrd.read_segmentation(out / files["regions"])
        pred.regions = np.zeros(geometry.shape, np.uint16)
        for segment in seg.segments:
            pred.regions[seg.mask(segment.id, geometry) > 0] = segment.label_value
            pred.region_names.append(Region(segment.label_value, segment.name, tuple(segment.color)))
    if "boxes" in files:
        pred.boxes = markups.read_boxes(out / files["boxes"])
    if "points" in files:
        pred.points = markups.read_points(out / files["points"])
    if "classes_json" in files:
        pred.classes = [ClassResult(**c) for c in read_json(out / files["classes_json"])]
    return pred


def _classes_csv(classes: list[ClassResult]) -> str:
    names = list(dict.fromkeys(k for c in classes for k in c.probabilities))
    with_z = any(c.z_mm is not None for c in classes)
    buf = _io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["scope", "index", *(["z_mm"] if with_z else []), "label", *names])
    for c in classes:
        z = ["" if c.z_mm is None else f"{c.z_mm:g}"] if with_z else []
        w.writerow([c.scope, "" if c.index is None else c.index, *z, c.label,
                    *(f"{c.probabilities.get(n, float('nan')):.6g}" for n in names)])
    return buf.getvalue()
