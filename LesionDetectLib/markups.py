"""Slicer markups JSON (`.mrk.json`, schema markups-schema-v1.0.3) for lesion points and boxes.

What is written, and why (checked against slicer-core's vtkMRMLMarkupsJsonStorageNode and
vtkMRMLMarkupsROIJsonStorageNode, see Testing/test_markups.py):

- Coordinates are LPS (`coordinateSystem: "LPS"`), as Slicer writes them.
- Points: one `Fiducial` markup, one control point per lesion; the lesion's label is the
  control point label.
- Boxes: one `ROI` markup (`roiType: "Box"`) per box, all in ONE file, as MONAI Label writes
  detections.  Slicer's `loadMarkups` (markups logic) loads every item as its own ROI node; a
  storage node's `AddNewMarkupsNodeFromFile` reads only the first item.  Each ROI has a single
  control point at its centre carrying the label, as ROIs saved by Slicer do.
- Scores are kept twice, both of which Slicer restores and re-saves: a custom measurement
  "LesionDetect.score" (DESIGN.md; per-point values in `controlPointValues` for points, the
  value for a box) and the control point description (`{"score": 0.93}`), which stays
  attached to its point when an annotator deletes or reorders points in Slicer, where the
  measurement's value list does not follow.  The reader takes the descriptions, and the
  measurement only when no control point has a score in its description (a points file
  edited in Slicer has stale measurement values but new points without descriptions).  Node
  names and attributes are not used for anything: Slicer drops them on re-save.

Reading accepts files written by Slicer (LPS or RAS); a control point without a score
(placed by hand) gets score 1.0.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import input_error
from .files import read_json, write_json
from .findings import LesionBox, LesionPoint
from .geometry import lps_to_ras, ras_to_lps

SCHEMA_URL = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/Markups/"
              "Resources/Schema/markups-schema-v1.0.3.json#")
# the pattern vtkMRMLMarkupsJsonStorageNode accepts for "@schema"
_SCHEMA_PATTERN = re.compile(r".*markups-schema-v1\.[0-9]+\.[0-9]+\.json#*$")
SCORE_MEASUREMENT = "LesionDetect.score"
_HAND_PLACED_SCORE = 1.0


# --- writing -------------------------------------------------------------------------------

def write_points(path: str | os.PathLike, points: Sequence[LesionPoint], name: str = "Lesion points",
                 overwrite: bool = False) -> Path:
    """One Fiducial markup with a control point per lesion (LPS), scores as described above."""
    control_points = [_control_point(n, p.position, p.label, {"score": p.score}) for n, p in enumerate(points)]
    item = {
        "type": "Fiducial",
        "name": name,
        "coordinateSystem": "LPS",
        "coordinateUnits": "mm",
        "labelFormat": "%N-%d",
        "lastUsedControlPointNumber": len(points),
        "controlPoints": control_points,
        "measurements": [_score_measurement(
            value=max((p.score for p in points), default=0.0),
            description="detection score of each control point (controlPointValues); value: the highest",
            control_point_values=[p.score for p in points])],
    }
    return write_json(path, {"@schema": SCHEMA_URL, "markups": [item]}, overwrite=overwrite)


def write_boxes(path: str | os.PathLike, boxes: Sequence[LesionBox], overwrite: bool = False) -> Path:
    """One ROI markup (roiType Box) per box, all in one file."""
    items = []
    for box in boxes:
        orientation = roi_orientation_lps(box.axes)
        description = {"score": box.score, **({"extra": box.extra} if box.extra else {})}
        items.append({
            "type": "ROI",
            "name": f"{box.label} {box.score:.2f}",
            "coordinateSystem": "LPS",
            "coordinateUnits": "mm",
            "roiType": "Box",
            "center": _floats(box.center),
            "orientation": _floats(orientation),
            "size": _floats(box.size),
            "insideOut": False,
            "controlPoints": [_control_point(0, box.center, box.label, description)],
            "measurements": [_score_measurement(value=box.score, description="detection score")],
        })
    return write_json(path, {"@schema": SCHEMA_URL, "markups": items}, overwrite=overwrite)


def roi_orientation_lps(axes) -> np.ndarray:
    """The ROI "orientation" (9 values, row-major) Slicer writes in an LPS file for these box axes.

    Slicer stores the ROI's ObjectToNode rotation R (RAS) and writes it row-major with the
    first 6 entries negated, i.e. diag(-1,-1,1) @ R, which is R expressed in LPS: so the file
    holds the box axes in LPS as columns.  A box has no preferred axis sign, so each axis is
    turned to point along the positive RAS direction it is closest to (keeping a rotation,
    det +1): an axis-aligned box then gets the identity in RAS, written
    [-1,0,0, 0,-1,0, 0,0,1], like ROIs drawn in Slicer and MONAI Label's files.
    """
    axes_lps = np.asarray(axes, dtype=float).reshape(3, 3)
    axes_ras = lps_to_ras(axes_lps.T).T  # flip x, y of each column
    dominant = axes_ras[np.argmax(np.abs(axes_ras), axis=0), [0, 1, 2]]
    axes_ras = axes_ras * np.where(dominant < 0, -1.0, 1.0)
    if np.linalg.det(axes_ras) < 0:
        axes_ras[:, 2] = -axes_ras[:, 2]
    return ras_to_lps(axes_ras.T).T.ravel()


def _control_point(index: int, position, label: str, description: dict) -> dict:
    return {
        "id": str(index + 1),
        "label": label,
        "description": json.dumps(description, sort_keys=True),
        "position": _floats(position),
        "positionStatus": "defined",
    }


def _score_measurement(value: float, description: str, control_point_values=None) -> dict:
    m = {"name": SCORE_MEASUREMENT, "enabled": True, "value": float(value), "units": "",
         "description": description, "printFormat": "%5.3f %s"}
    if control_point_values is not None:
        m["controlPointValues"] = [float(v) for v in control_point_values]
    return m


def _floats(values) -> list[float]:
    return [float(v) for v in np.ravel(values)]


# --- reading -------------------------------------------------------------------------------

def read_points(path: str | os.PathLike) -> list[LesionPoint]:
    """Every defined control point of every Fiducial markup in the file, positions in LPS."""
    path = Path(path)
    points = []
    for n, item in enumerate(_markups_of_type(path, "Fiducial")):
        to_lps = _to_lps(path, n, item)
        control_points = _control_points(path, n, item)
        scores = [_description_score(cp) for cp in control_points]
        if all(s is None for s in scores):  # written by a tool that kept only the measurement
            scores = _measurement_point_values(item) or scores
        for k, (cp, score) in enumerate(zip(control_points, scores)):
            if cp.get("positionStatus", "defined") != "defined":
                continue  # a placeholder Slicer keeps for a point not placed yet
            position = to_lps(_vector(path, f"markup {n} control point {k} position", cp.get("position"), 3))
            score = _HAND_PLACED_SCORE if score is None else score
            points.append(LesionPoint(position=position, score=score, label=str(cp.get("label") or "lesion")))
    return points


def read_boxes(path: str | os.PathLike) -> list[LesionBox]:
    """Every ROI markup in the file as a LesionBox (centre LPS, size, axes in LPS)."""
    path = Path(path)
    boxes = []
    for n, item in enumerate(_markups_of_type(path, "ROI")):
        to_lps = _to_lps(path, n, item)
        center = to_lps(_vector(path, f"markup {n} center", item.get("center"), 3))
        size = _vector(path, f"markup {n} size", item.get("size"), 3)
        # LPS file: orientation already holds the axes in LPS; RAS file: R itself
        orientation = _vector(path, f"markup {n} orientation", item.get("orientation", list(np.eye(3).ravel())), 9)
        axes = orientation.reshape(3, 3)
        if np.any(size < 0):
            raise input_error(path, f"markup {n}: ROI size {size.tolist()} is negative; sizes are widths in mm")
        if not np.allclose(axes.T @ axes, np.eye(3), atol=1e-3):
            raise input_error(path, f"markup {n}: ROI orientation {orientation.tolist()} is not a rotation (its axes "
                                    "are not orthonormal, e.g. singular); export the ROI again from Slicer")
        if _coordinate_system(path, n, item) == "RAS":
            axes = ras_to_lps(axes.T).T
        cp = (_control_points(path, n, item) or [{}])[0]
        score = _description_score(cp)
        if score is None:
            score = _measurement_value(item)
        boxes.append(LesionBox(center=center, size=size, axes=axes, label=str(cp.get("label") or "lesion"),
                               score=_HAND_PLACED_SCORE if score is None else score,
                               extra=_extra if isinstance(_extra := _description(cp).get("extra"), dict) else {}))
    return boxes


def _load(path: Path) -> dict:
    doc = read_json(path, invalid="not a markups file: not valid JSON")
    if not isinstance(doc, dict) or not _SCHEMA_PATTERN.match(str(doc.get("@schema", ""))):
        raise input_error(path, 'not a Slicer markups file: no "@schema" naming markups-schema-v1.x.y.json')
    markups = doc.get("markups")
    if not isinstance(markups, list) or not all(isinstance(m, dict) and "type" in m for m in markups):
        raise input_error(path, 'not a Slicer markups file: "markups" must be a list of objects with a "type"')
    return doc


def _markups_of_type(path: Path, markup_type: str) -> list[dict]:
    markups = _load(path)["markups"]
    wrong = sorted({m["type"] for m in markups if m["type"] != markup_type}, key=str)
    if wrong:
        raise input_error(path, f"holds {', '.join(map(str, wrong))} markups where only {markup_type} "
                                f"markups are expected")
    return markups


def _coordinate_system(path: Path, n: int, item: dict) -> str:
    system = item.get("coordinateSystem", "LPS")
    if system not in ("LPS", "RAS"):
        raise input_error(path, f'markup {n}: unknown coordinateSystem "{system}" (expected LPS or RAS)')
    units = item.get("coordinateUnits", "mm")
    if not (units == "mm" or (isinstance(units, list) and units[:1] == ["mm"])):
        raise input_error(path, f"markup {n}: coordinateUnits {units!r} are not millimetres")
    return system


def _to_lps(path: Path, n: int, item: dict):
    return ras_to_lps if _coordinate_system(path, n, item) == "RAS" else (lambda p: np.asarray(p, dtype=float))


def _vector(path: Path, what: str, value: Any, length: int) -> np.ndarray:
    try:
        v = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        v = None
    if v is None or v.shape != (length,) or not np.all(np.isfinite(v)):
        raise input_error(path, f"{what} must be {length} finite numbers, not {value!r}")
    return v


def _control_points(path: Path, n: int, item: dict) -> list[dict]:
    points = item.get("controlPoints", [])  # null, "" or 0 are refused, as Slicer's schema does
    if not isinstance(points, list) or not all(isinstance(cp, dict) for cp in points):
        raise input_error(path, f'markup {n}: "controlPoints" must be a list of objects, not {str(points)[:60]!r}')
    return points


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and bool(np.isfinite(value))


def _description(cp: dict) -> dict:
    try:
        d = json.loads(cp.get("description") or "")
    except (json.JSONDecodeError, TypeError):
        return {}
    return d if isinstance(d, dict) else {}


def _description_score(cp: dict) -> float | None:
    score = _description(cp).get("score")
    return float(score) if _number(score) else None


def _score_measurements(item: dict) -> list[dict]:
    return [m for m in item.get("measurements") or [] if isinstance(m, dict) and m.get("name") == SCORE_MEASUREMENT]


def _measurement_value(item: dict) -> float | None:
    for m in _score_measurements(item):
        if _number(m.get("value")):
            return float(m["value"])
    return None


def _measurement_point_values(item: dict) -> list[float] | None:
    """Per-point scores, only if there is exactly one per control point (else they cannot be matched)."""
    for m in _score_measurements(item):
        values = m.get("controlPointValues")
        points = item.get("controlPoints") or []
        if isinstance(values, list) and len(values) == len(points) and all(_number(v) for v in values):
            return [float(v) for v in values]
    return None
