"""Per-finding review: each finding of a result has a stable id and a state, kept on the MRML nodes.

A finding is a connected component of the lesion segment, a box (ROI node), a lesion point
(control point of the fiducial list) or a class-result row.  Its state is one of

    unreviewed  the model's finding, not looked at yet
    accepted    the annotator agrees
    rejected    a false positive: left out of the exported mask, boxes and points, and
                exported as a hard negative (export.py)
    edited      the annotator moved or resized the box or point, or painted the component
                (found by comparing with the model's geometry; may also be set by hand)
    added       created by the annotator (no model finding)

Where the states live, so that they survive a re-threshold, the score filter and saving the
scene (.mrb) and loading it again:

- box:       the ROI node's attribute "LesionDetect.review": JSON {"id", "state", "origin"}
             (origin: the model's centre/size/axes in RAS, null for a drawn box);
- point:     the fiducial node's attribute "LesionDetect.review": JSON {"next", "points":
             {control point ID: {"id", "state", "origin"}}} (control point IDs are saved in
             .mrk.json and survive deleting other points);
- class row: the table node's attribute "LesionDetect.review": JSON {"rows": {row: {"id", "state"}}};
- component: the lesion segment's tag "LesionDetect.review" (saved in .seg.nrrd): JSON
             {"next", "components": [{"id", "state", "origin", "seed", "centroid_lps", "voxels",
             "model_hash", "score"}]}.  A component has no identity of its own in MRML, so it is
             matched to its record by its seed voxel (the voxel nearest the centroid the model's
             component had) or, failing that, by the nearest centroid; a re-threshold
             (overlay.set_threshold -> `sync_components`) re-matches the model's new components,
             so a component keeps its id and state while it grows or shrinks.  Records of
             components that vanished at this threshold stay, and come back with it.

Model findings get their ids when the result is added (`register`, called by
overlay.add_prediction): box-1.., point-1.., class-1.., component-1..; findings the annotator
creates get theirs the first time they are listed.  Only MRML's API is used (no Qt, no view
code): `next_finding` / `previous_finding` return a finding whose `center_ras` the caller
centres the views on.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

# How each kind of finding's record is stored on its node (review_records.py); the constants and
# sync_components are importable from here as before.
from .review_records import (  # noqa: F401
    EDIT_TOLERANCE_MM,
    REVIEW_ATTRIBUTE,
    STATES,
    _box_record,
    _box_state,
    _check_state,
    _class_records,
    _component_findings,
    _in_scene,
    _point_records,
    _point_state,
    _read_attribute,
    _read_components,
    _write_attribute,
    _write_components,
    sync_components,
)

KINDS = ("component", "box", "point", "class")


@contextmanager
def keep_review_states(nodes):
    """Keep the lesion segment's review records (they live in a segment tag) across a change that
    puts back an older copy of the whole segmentation, as the segment editor's undo and redo do:
    the decisions made since stay, and a component that comes back matches its record again."""
    seg_node = _in_scene(nodes.segmentation)
    stored = _read_components(seg_node, nodes.segment_id) if seg_node is not None else None
    yield
    if stored is not None and seg_node.GetSegmentation().GetSegment(nodes.segment_id) is not None:
        _write_components(seg_node, nodes.segment_id, stored)


@dataclass
class ReviewFinding:
    """One finding of the current result, as the findings table and the export see it."""

    id: str
    kind: str  # one of KINDS
    state: str  # one of STATES
    score: float | None
    position_lps: tuple[float, float, float] | None  # None for an image-level class result
    center_ras: tuple[float, float, float]  # where the views go
    label: str | None
    name: str
    detail: str = ""
    origin: str = "model"  # "model" or "user"

    @property
    def reviewed(self) -> bool:
        return self.state != "unreviewed"

    def record(self) -> dict:
        """The finding as export writes it into the case's "review" entry."""
        return {"id": self.id, "kind": self.kind, "state": self.state, "score": self.score,
                "position_lps": None if self.position_lps is None else [float(v) for v in self.position_lps],
                "label": self.label}


# --- listing and states --------------------------------------------------------------------

def register(nodes, mask=None) -> None:
    """Give every model finding of a result just added (overlay.add_prediction) its id:
    box-1.., point-1.., class-1.., component-1.. (`mask`: what was put into the segment)."""
    from . import convert

    for n, roi in enumerate(nodes.boxes, start=1):
        _box_record(roi, new_id=f"box-{n}")
    if nodes.points is not None:
        _point_records(nodes.points)
    if nodes.classes is not None:
        _class_records(nodes.classes)
    if nodes.segmentation is not None and mask is not None:
        probability = convert.volume_array(nodes.probability) if nodes.probability is not None else None
        sync_components(nodes.segmentation, nodes.segment_id, mask, convert.volume_geometry(nodes.input_volume),
                        probability)


def list_findings(nodes, segmentations_logic, boxes=None, min_score: float = 0.0,
                  _components=None) -> list[ReviewFinding]:
    """Every finding of `nodes` (an overlay.PredictionNodes, or anything with its fields) with
    its id and state: class rows, points, components, then boxes (`boxes`: the ROI nodes to
    list, default nodes.boxes; deleted ones are skipped).  Points and boxes scoring under
    `min_score` are left out, as the score filter hides them; their states stay stored."""
    import numpy as np

    from LesionDetectLib.findings import positive_probability
    from LesionDetectLib.geometry import lps_to_ras, ras_to_lps

    from . import convert

    rows: list[ReviewFinding] = []
    geometry = convert.volume_geometry(nodes.input_volume)
    image_centre_lps = geometry.index_to_lps((np.asarray(geometry.size, dtype=float) - 1) / 2)
    table = _in_scene(nodes.classes)
    if table is not None:
        records = _class_records(table)
        for r, result in enumerate(convert.table_to_classes(table)):
            record = records[str(r)]
            position = None
            if result.scope != "image" and result.index is not None and 0 <= result.index < geometry.size[2]:
                position = tuple(float(v) for v in geometry.index_to_lps(
                    [(geometry.size[0] - 1) / 2, (geometry.size[1] - 1) / 2, result.index]))
            centre = lps_to_ras(position if position is not None else image_centre_lps)
            where = "image" if result.scope == "image" else f"{result.scope} {'' if result.index is None else result.index}"
            rows.append(ReviewFinding(record["id"], "class", record.get("state", "unreviewed"),
                                      positive_probability([result]), position, tuple(float(v) for v in centre),
                                      result.label, f"{where.strip()}: {result.label}",
                                      ", ".join(f"{k} {v:.3f}" for k, v in result.probabilities.items())))
    points = _in_scene(nodes.points)
    if points is not None:
        records = _point_records(points)
        for n in range(points.GetNumberOfControlPoints()):
            record = records.get(points.GetNthControlPointID(n))
            if record is None:  # not placed yet
                continue
            score = convert.point_score(points, n) if convert.point_has_score(points, n) else None
            if score is not None and score < min_score:
                continue
            ras = tuple(float(v) for v in points.GetNthControlPointPositionVector(n))
            label = points.GetNthControlPointLabel(n) if score is not None else convert.HAND_PLACED_LABEL
            rows.append(ReviewFinding(record["id"], "point", _point_state(points, n, record), score,
                                      tuple(float(v) for v in ras_to_lps(ras)), ras, label,
                                      points.GetNthControlPointLabel(n) or record["id"],
                                      origin="model" if record.get("origin") is not None else "user"))
    _, components = _components or _component_findings(nodes, segmentations_logic, full=False)
    voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
    for c, record, state in components:
        rows.append(ReviewFinding(record["id"], "component", state, c.score, tuple(c.centroid_lps),
                                  tuple(float(v) for v in lps_to_ras(c.centroid_lps)), "lesion", record["id"],
                                  f"{c.voxels * voxel_ml:.3g} ml",
                                  origin="model" if record.get("origin") == "model" else "user"))
    for roi in (nodes.boxes if boxes is None else boxes):
        if _in_scene(roi) is None:
            continue
        record = _box_record(roi)
        scored = convert.box_has_score(roi)
        score = convert.box_score(roi) if scored else None
        if score is not None and score < min_score:
            continue
        center = [0.0, 0.0, 0.0]
        roi.GetCenter(center)
        label = (roi.GetNthControlPointLabel(0) if scored and roi.GetNumberOfControlPoints() else
                 convert.HAND_PLACED_LABEL)
        rows.append(ReviewFinding(record["id"], "box", _box_state(roi, record), score,
                                  tuple(float(v) for v in ras_to_lps(center)), tuple(center), label, roi.GetName(),
                                  " x ".join(f"{s:.1f}" for s in roi.GetSize()) + " mm",
                                  origin="model" if record.get("origin") is not None else "user"))
    return rows


def _locate(nodes, finding_id: str, boxes=None):
    """(kind, node, key) of a finding id: key is the control point ID, the row or the record index."""
    for roi in (nodes.boxes if boxes is None else boxes):
        if _in_scene(roi) is not None and (_read_attribute(roi) or {}).get("id") == finding_id:
            return "box", roi, None
    points = _in_scene(nodes.points)
    if points is not None:
        for cp_id, record in _point_records(points).items():
            if record.get("id") == finding_id:
                return "point", points, cp_id
    table = _in_scene(nodes.classes)
    if table is not None:
        for row, record in _class_records(table).items():
            if record.get("id") == finding_id:
                return "class", table, row
    seg_node = _in_scene(nodes.segmentation)
    if seg_node is not None:
        for i, record in enumerate(_read_components(seg_node, nodes.segment_id)["components"]):
            if record.get("id") == finding_id:
                return "component", seg_node, i
    raise KeyError(f"no finding {finding_id!r} in this result")


def box_finding(roi) -> tuple[str, bool]:
    """(finding id, made by the model) of a box's ROI node."""
    record = _box_record(roi)
    return record["id"], record.get("origin") is not None


def get_state(nodes, finding_id: str, segmentations_logic, boxes=None) -> str:
    """The state of one finding, as `list_findings` reports it (edits and additions included)."""
    for finding in list_findings(nodes, segmentations_logic, boxes=boxes):
        if finding.id == finding_id:
            return finding.state
    _locate(nodes, finding_id, boxes)  # raises KeyError for an unknown id
    raise KeyError(f"finding {finding_id!r} is not in the result now (e.g. its component vanished at this threshold)")


def set_state(nodes, finding_id: str, state: str, boxes=None) -> None:
    """Store a finding's state on its node.  "added" is for findings the annotator created and
    cannot be given to a model's finding; "edited" may be set by hand (a correction made
    elsewhere); "unreviewed" undoes a decision."""
    _check_state(state)
    kind, node, key = _locate(nodes, finding_id, boxes)
    if kind == "box":
        record = _read_attribute(node)
        _refuse_added(state, record.get("origin") is not None, finding_id)
        record["state"] = state
        _write_attribute(node, record)
    elif kind == "point":
        stored = _read_attribute(node)
        _refuse_added(state, stored["points"][key].get("origin") is not None, finding_id)
        stored["points"][key]["state"] = state
        _write_attribute(node, stored)
    elif kind == "class":
        _refuse_added(state, True, finding_id)
        stored = _read_attribute(node)
        stored["rows"][key]["state"] = state
        _write_attribute(node, stored)
    else:
        stored = _read_components(node, nodes.segment_id)
        _refuse_added(state, stored["components"][key].get("origin") == "model", finding_id)
        stored["components"][key]["state"] = state
        _write_components(node, nodes.segment_id, stored)


def _refuse_added(state: str, is_model: bool, finding_id: str) -> None:
    if state == "added" and is_model:
        raise ValueError(f"{finding_id} is the model's finding: it cannot be marked as added")


def accept(nodes, finding_id: str, boxes=None) -> None:
    set_state(nodes, finding_id, "accepted", boxes)


def reject(nodes, finding_id: str, boxes=None) -> None:
    set_state(nodes, finding_id, "rejected", boxes)


# --- navigation and progress ---------------------------------------------------------------

def next_finding(findings: list[ReviewFinding], current_id: str | None = None, step: int = 1,
                 unreviewed_only: bool = False) -> ReviewFinding | None:
    """The finding after (step=1) or before (step=-1) `current_id` in the list, wrapping round;
    the first (or last) when `current_id` is None or gone.  With `unreviewed_only`, the next
    one still unreviewed (None when all are reviewed).  None for an empty list."""
    if not findings:
        return None
    ids = [f.id for f in findings]
    if current_id in ids:
        start = ids.index(current_id)
    else:
        start = -1 if step > 0 else 0
    for k in range(1, len(findings) + 1):
        candidate = findings[(start + k * step) % len(findings)]
        if not unreviewed_only or not candidate.reviewed:
            return candidate
    return None


def previous_finding(findings: list[ReviewFinding], current_id: str | None = None,
                     unreviewed_only: bool = False) -> ReviewFinding | None:
    return next_finding(findings, current_id, step=-1, unreviewed_only=unreviewed_only)


def progress(findings: list[ReviewFinding]) -> tuple[int, int]:
    """(reviewed, total): a finding is reviewed once it is anything but unreviewed."""
    return sum(f.reviewed for f in findings), len(findings)


def progress_text(findings: list[ReviewFinding]) -> str:
    done, total = progress(findings)
    return f"{done} of {total} reviewed"


# --- what export writes --------------------------------------------------------------------

@dataclass
class ReviewedExport:
    """The result as the review leaves it, for export.py: what is kept, and the rejected
    model detections as hard negatives."""

    findings: list[ReviewFinding]
    mask: object | None  # uint8 (z, y, x) without rejected components; None without a segment
    boxes: list  # LesionBox of the boxes not rejected
    points: list  # LesionPoint of the points not rejected
    negative_points: list  # rejected model points, and rejected model components at their centroid
    negative_boxes: list  # rejected model boxes


def reviewed_export(nodes, segmentations_logic, boxes=None) -> ReviewedExport:
    """Split the current result by review state (every finding, whatever the score filter)."""
    import numpy as np

    from LesionDetectLib.prediction import LesionPoint

    from . import convert

    labels, components = _component_findings(nodes, segmentations_logic)
    findings = list_findings(nodes, segmentations_logic, boxes=boxes, _components=(labels, components))
    state = {f.id: f for f in findings}
    mask = None
    negative_points, negative_boxes, kept_boxes, kept_points = [], [], [], []
    if labels is not None:
        mask = (labels > 0).astype(np.uint8)
        for c, record, component_state in components:
            if component_state == "rejected":
                mask[labels == c.label] = 0
                if record.get("origin") == "model":
                    score = c.score if c.score is not None else record.get("score")
                    negative_points.append(LesionPoint(c.centroid_lps, score=1.0 if score is None else score,
                                                       label="lesion"))
    points = _in_scene(nodes.points)
    if points is not None:
        records = _point_records(points)
        for n in range(points.GetNumberOfControlPoints()):
            record = records.get(points.GetNthControlPointID(n))
            if record is None:
                continue
            point = convert.control_point_to_point(points, n)
            if state.get(record["id"]) is not None and state[record["id"]].state == "rejected":
                if record.get("origin") is not None:
                    negative_points.append(point)
            else:
                kept_points.append(point)
    for roi in (nodes.boxes if boxes is None else boxes):
        if _in_scene(roi) is None:
            continue
        record = _box_record(roi)
        box = convert.roi_to_box(roi)
        if state[record["id"]].state == "rejected":
            if record.get("origin") is not None:
                negative_boxes.append(box)
        else:
            kept_boxes.append(box)
    return ReviewedExport(findings, mask, kept_boxes, kept_points, negative_points, negative_boxes)


def review_record(findings: list[ReviewFinding], *, model_id: str = "", model_sha256: str | None = None,
                  threshold: float | None = None, reviewer: str = "", time: str = "") -> dict:
    """The case entry's "review": who reviewed which model, when, and each finding's decision."""
    record = {"model_id": model_id}
    if model_sha256:
        record["model_sha256"] = model_sha256
    record.update(threshold=threshold, reviewer=reviewer, time=time, findings=[f.record() for f in findings])
    return record
