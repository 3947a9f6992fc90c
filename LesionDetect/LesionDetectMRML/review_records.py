"""Where the review states live: each kind of finding's record on its MRML node (the ROI's and
the fiducial list's attribute, the class table's attribute, the lesion segment's tag), made the
first time it is asked for, and the matching that keeps a component's record across a
re-threshold.  The storage layout and the rules are described in review.py, whose public
functions use these helpers (`sync_components` is importable from there too).

Module-level imports are the standard library only; numpy, scipy and vtk are imported in functions.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from urllib.parse import quote, unquote

REVIEW_ATTRIBUTE = "LesionDetect.review"
STATES = ("unreviewed", "accepted", "rejected", "edited", "added")
EDIT_TOLERANCE_MM = 1e-3  # ROI centres drift by float32 steps in MRML; a real move is far larger


# --- storage helpers -----------------------------------------------------------------------

def _read_attribute(node) -> dict | None:
    text = node.GetAttribute(REVIEW_ATTRIBUTE)
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _write_attribute(node, value: dict) -> None:
    text = json.dumps(value, sort_keys=True)
    if node.GetAttribute(REVIEW_ATTRIBUTE) != text:
        node.SetAttribute(REVIEW_ATTRIBUTE, text)


# Segment tags are saved in .seg.nrrd as "key:value|key:value": a "|" inside a value would cut it,
# so the JSON is stored with "%" and "|" percent-encoded.
def _encode_tag(value: dict) -> str:
    return quote(json.dumps(value, sort_keys=True), safe=" {}[]\",:.-_+")


def _decode_tag(text: str) -> dict | None:
    try:
        value = json.loads(unquote(text))
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def _new_id(kind: str) -> str:
    return f"{kind}-added-{uuid.uuid4().hex[:8]}"


def _check_state(state: str) -> str:
    if state not in STATES:
        raise ValueError(f"unknown review state {state!r}; expected one of {', '.join(STATES)}")
    return state


def _in_scene(node):
    return node if node is not None and node.GetScene() is not None else None


def _close(a, b, tol=EDIT_TOLERANCE_MM) -> bool:
    import numpy as np

    return a is not None and b is not None and np.shape(a) == np.shape(b) and bool(
        np.all(np.abs(np.subtract(a, b)) <= tol))


# --- boxes ---------------------------------------------------------------------------------

def _box_geometry(roi) -> dict:
    from . import convert

    center = [0.0, 0.0, 0.0]
    roi.GetCenter(center)
    axes = convert.numpy_matrix(roi.GetObjectToNodeMatrix())[:3, :3]
    return {"center": [float(v) for v in center], "size": [float(v) for v in roi.GetSize()],
            "axes": [float(v) for v in axes.ravel()]}


def _box_record(roi, new_id: str | None = None) -> dict:
    """The ROI's review record, made (and stored) the first time it is asked for."""
    from . import convert

    record = _read_attribute(roi)
    if record is None or not isinstance(record.get("id"), str):
        model = convert.box_has_score(roi)
        record = {"id": new_id or _new_id("box"), "state": "unreviewed" if model else "added",
                  "origin": _box_geometry(roi) if model else None}
        _write_attribute(roi, record)
    return record


def _box_state(roi, record: dict) -> str:
    state = record.get("state", "unreviewed")
    if state == "rejected" or record.get("origin") is None:
        return "rejected" if state == "rejected" else "added"
    now, was = _box_geometry(roi), record["origin"]
    if not all(_close(now[k], was.get(k)) for k in ("center", "size")) or not _close(now["axes"], was.get("axes"), 1e-6):
        return "edited"
    return state


# --- points --------------------------------------------------------------------------------

def _point_records(node) -> dict:
    """{control point ID: record} for every placed control point; new ones are recorded."""
    from . import convert

    stored = _read_attribute(node) or {}
    records = stored.get("points") if isinstance(stored.get("points"), dict) else {}
    next_number = int(stored.get("next", 1))
    changed = not stored
    for n in range(node.GetNumberOfControlPoints()):
        if node.GetNthControlPointPositionStatus(n) != node.PositionDefined:
            continue
        cp_id = node.GetNthControlPointID(n)
        if cp_id in records:
            continue
        model = convert.point_has_score(node, n)
        finding_id = f"point-{next_number}" if model else _new_id("point")
        next_number += model
        records[cp_id] = {"id": finding_id, "state": "unreviewed" if model else "added",
                          "origin": [float(v) for v in node.GetNthControlPointPositionVector(n)] if model else None}
        changed = True
    if changed:
        _write_attribute(node, {"next": next_number, "points": records})
    return records


def _point_state(node, n: int, record: dict) -> str:
    state = record.get("state", "unreviewed")
    if state == "rejected" or record.get("origin") is None:
        return "rejected" if state == "rejected" else "added"
    if not _close(list(node.GetNthControlPointPositionVector(n)), record["origin"]):
        return "edited"
    return state


# --- class rows ----------------------------------------------------------------------------

def _class_records(table) -> dict:
    stored = _read_attribute(table) or {}
    rows = stored.get("rows") if isinstance(stored.get("rows"), dict) else {}
    changed = not stored
    for r in range(table.GetTable().GetNumberOfRows()):
        if str(r) not in rows:
            rows[str(r)] = {"id": f"class-{r + 1}", "state": "unreviewed"}
            changed = True
    if changed:
        _write_attribute(table, {"rows": rows})
    return rows


# --- components ----------------------------------------------------------------------------

@dataclass
class _Component:
    label: int  # in the label map
    voxels: int
    centroid_lps: tuple
    seed: tuple  # (z, y, x) voxel of the component nearest its centroid
    hash: str  # of the component's voxel indices: equal iff the same voxels
    score: float | None
    radius_mm: float


def _components(mask, geometry, probability=None, offset=(0, 0, 0), full: bool = True):
    """(label map, its offset, [_Component]) of a (z, y, x) mask (6-connected, as the findings
    table counts).  `mask` (and `probability`) may be a block of the grid whose first voxel is
    `offset`; seeds, centroids and hashes are always on the whole grid.  The label map covers
    the whole grid (offset 0) with full=True, else only the block that holds the mask."""
    import numpy as np
    from scipy import ndimage

    from .convert import mask_block

    inside = np.asarray(mask) > 0
    offset = np.asarray(offset, dtype=int)
    # label only the block that holds the mask: a threshold change on a 512 x 512 x 100 CT then
    # costs the lesions' size, not the volume's (the review app redraws on every change)
    block = mask_block(inside)
    if block is None:
        if full:
            return np.zeros(geometry.shape, dtype=np.int32), (0, 0, 0), []
        return np.zeros((0, 0, 0), dtype=np.int32), (0, 0, 0), []
    block_labels, _ = ndimage.label(inside[block])
    origin = np.array([s.start for s in block]) + offset  # of block_labels on the whole grid
    if full:
        labels = np.zeros(geometry.shape, dtype=block_labels.dtype)
        labels[tuple(slice(o, o + n) for o, n in zip(origin, block_labels.shape))] = block_labels
        labels_offset = (0, 0, 0)
    else:
        labels, labels_offset = block_labels, tuple(int(o) for o in origin)
    found = []
    voxel_volume = float(np.prod(geometry.spacing))
    for n, box in enumerate(ndimage.find_objects(block_labels), start=1):
        if box is None:
            continue
        local = np.argwhere(block_labels[box] == n)
        zyx = local + np.array([s.start for s in box]) + origin
        centroid_zyx = zyx.mean(axis=0)
        seed = tuple(int(v) for v in zyx[np.argmin(((zyx - centroid_zyx) ** 2).sum(axis=1))])
        flat = np.ravel_multi_index(zyx.T, geometry.shape).astype(np.int64)
        digest = hashlib.sha1(np.sort(flat).tobytes()).hexdigest()[:16]
        score = float(probability[tuple((zyx - offset).T)].max()) if probability is not None else None
        radius = (3 * len(zyx) * voxel_volume / (4 * np.pi)) ** (1 / 3)
        centroid = tuple(float(v) for v in geometry.index_to_lps(centroid_zyx[::-1]))
        found.append(_Component(n, len(zyx), centroid, seed, digest, score, radius))
    return labels, labels_offset, found


def _label_at(labels, offset, zyx) -> int:
    """The label at whole-grid voxel `zyx` of a label map whose first voxel is `offset` (0 outside it)."""
    local = [int(v) - int(o) for v, o in zip(zyx, offset)]
    if len(local) == 3 and all(0 <= v < n for v, n in zip(local, labels.shape)):
        return int(labels[tuple(local)])
    return 0


def _read_components(seg_node, segment_id) -> dict:
    import vtk

    segment = seg_node.GetSegmentation().GetSegment(segment_id)
    if segment is None:
        return {"next": 1, "components": []}
    text = vtk.reference("")
    stored = _decode_tag(str(text)) if segment.GetTag(REVIEW_ATTRIBUTE, text) else None
    if not stored or not isinstance(stored.get("components"), list):
        return {"next": 1, "components": []}
    return stored


def _write_components(seg_node, segment_id, stored: dict) -> None:
    segment = seg_node.GetSegmentation().GetSegment(segment_id)
    if segment is not None:
        segment.SetTag(REVIEW_ATTRIBUTE, _encode_tag(stored))


def _match(labels, components: list[_Component], records: list[dict], spacing, offset=(0, 0, 0)) -> dict[int, int]:
    """{component index: record index}: first the records whose seed voxel lies in a component
    (nearest centroid first), then for the rest the nearest unmatched record centroid within the
    component's equivalent radius plus two voxels."""
    import numpy as np

    pairs = []
    for ri, record in enumerate(records):
        seed = record.get("seed")
        if not (isinstance(seed, list) and len(seed) == 3):
            continue
        label = _label_at(labels, offset, seed)
        if label:
            for ci, c in enumerate(components):
                if c.label == label:
                    pairs.append((float(np.linalg.norm(np.subtract(c.centroid_lps, record["centroid_lps"]))), ci, ri))
    matched: dict[int, int] = {}
    used: set[int] = set()
    for _, ci, ri in sorted(pairs):
        if ci not in matched and ri not in used:
            matched[ci], _ = ri, used.add(ri)
    slack = 2 * max(spacing)
    pairs = []
    for ci, c in enumerate(components):
        if ci in matched:
            continue
        for ri, record in enumerate(records):
            if ri in used or not isinstance(record.get("centroid_lps"), list):
                continue
            d = float(np.linalg.norm(np.subtract(c.centroid_lps, record["centroid_lps"])))
            if d <= c.radius_mm + slack:
                pairs.append((d, ci, ri))
    for _, ci, ri in sorted(pairs):
        if ci not in matched and ri not in used:
            matched[ci], _ = ri, used.add(ri)
    return matched


def _component_record(c: _Component, finding_id: str, origin: str) -> dict:
    return {"id": finding_id, "state": "unreviewed" if origin == "model" else "added", "origin": origin,
            "seed": list(c.seed), "centroid_lps": list(c.centroid_lps), "voxels": c.voxels,
            "model_hash": c.hash if origin == "model" else None, "score": c.score}


def sync_components(seg_node, segment_id: str, mask, geometry, probability=None, offset=None) -> None:
    """The model's mask (a new result, or the result re-thresholded) is now in the segment:
    match its components to the stored records (keeping their ids and states), note what the
    model's component now is (to tell later edits), and record new components as unreviewed.
    With `offset` (z, y, x), `mask` and `probability` are the block of the grid starting there
    and the segment is empty outside it (overlay.set_threshold)."""
    stored = _read_components(seg_node, segment_id)
    records = stored["components"]
    labels, at, components = _components(mask, geometry, probability, offset=offset or (0, 0, 0), full=False)
    model_records = [r for r in records if r.get("origin") == "model"]
    matched = _match(labels, components, model_records, geometry.spacing, at)
    for ci, c in enumerate(components):
        if ci in matched:
            record = model_records[matched[ci]]
            record.update(model_hash=c.hash, voxels=c.voxels, score=c.score)
            if _label_at(labels, at, record["seed"]) != c.label:
                record.update(seed=list(c.seed), centroid_lps=list(c.centroid_lps))
        else:
            records.append(_component_record(c, f"component-{stored['next']}", "model"))
            stored["next"] += 1
    _write_components(seg_node, segment_id, stored)


def _component_findings(nodes, segmentations_logic, full: bool = True) -> tuple:
    """(label map, [(component, record, state)]) of the segment as it is now; new components (painted
    by the annotator) are recorded as added.  The label map covers the whole grid (full=True,
    for the export) or is None (full=False: the findings list reads only the segment's block)."""
    from . import convert

    seg_node, volume = _in_scene(nodes.segmentation), nodes.input_volume
    if seg_node is None or seg_node.GetSegmentation().GetSegment(nodes.segment_id) is None:
        return None, []
    geometry = convert.volume_geometry(volume)
    if full:
        mask, offset = convert.segment_mask(seg_node, nodes.segment_id, volume, segmentations_logic), (0, 0, 0)
    else:
        mask, offset = convert.segment_mask_block(seg_node, nodes.segment_id, volume, segmentations_logic)
    block = tuple(slice(o, o + n) for o, n in zip(offset, mask.shape))
    probability_node = _in_scene(getattr(nodes, "probability", None))
    probability = convert.volume_array(probability_node, copy=False) if probability_node is not None else None
    if probability is not None and probability.shape != geometry.shape:
        probability = None
    labels, at, components = _components(mask, geometry, None if probability is None else probability[block],
                                         offset=offset, full=full)
    stored = _read_components(seg_node, nodes.segment_id)
    records = stored["components"]
    matched = _match(labels, components, records, geometry.spacing, at)
    changed = False
    rows = []
    for ci, c in enumerate(components):
        if ci in matched:
            record = records[matched[ci]]
        else:
            record = _component_record(c, _new_id("component"), "user")
            records.append(record)
            changed = True
        state = record.get("state", "unreviewed")
        if state != "rejected":
            if record.get("origin") != "model":
                state = "added"
            elif record.get("model_hash") and record["model_hash"] != c.hash:
                state = "edited"
        if c.score is None and record.get("score") is not None:
            c.score = float(record["score"])
        rows.append((c, record, state))
    if changed:
        _write_components(seg_node, nodes.segment_id, stored)
    return (labels if full else None), rows
