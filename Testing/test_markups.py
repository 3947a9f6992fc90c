"""Slicer markups JSON: schema, our round trip, and slicer-core's storage nodes in both directions.

Expected physical positions are computed from voxel indices with Geometry.ijk_to_ras() /
ijk_to_lps() matrices, independently of the LPS<->RAS flip the code under test uses.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SHARED
from io_helpers import oblique_image
from mrml_scene import mrml, numpy_matrix, slicer, vtk_matrix  # noqa: F401  (mrml: fixture)

from LesionDetectLib.errors import LesionDetectError
from LesionDetectLib.geometry import Geometry
from LesionDetectLib.markups import (SCORE_MEASUREMENT, read_boxes, read_points, roi_orientation_lps, write_boxes,
                                     write_points)
from LesionDetectLib.prediction import LesionBox, LesionPoint

GEOMETRY = Geometry.of(oblique_image())  # 9x7x5, anisotropic, rotated about three axes
SCHEMA = SHARED / "schemas" / "markups-schema-v1.0.3.json"
POINT_INDICES = [(1, 2, 3), (7, 0, 4), (3.5, 5.25, 0.5)]  # (i, j, k)
SCORES = [0.93, 0.125, 1 / 3]
BOX_RANGES = [((1, 2, 0), (4, 5, 2)), ((6, 0, 3), (8, 1, 4))]  # inclusive voxel index ranges (i, j, k)


def _homogeneous(ijk) -> np.ndarray:
    return np.append(np.asarray(ijk, dtype=float), 1.0)


def _lps(ijk) -> np.ndarray:
    return (GEOMETRY.ijk_to_lps() @ _homogeneous(ijk))[:3]


def _ras(ijk) -> np.ndarray:
    return (GEOMETRY.ijk_to_ras() @ _homogeneous(ijk))[:3]


def _points() -> list[LesionPoint]:
    return [LesionPoint(_lps(ijk), score=s, label=f"L{n}") for n, (ijk, s) in enumerate(zip(POINT_INDICES, SCORES))]


def _boxes() -> list[LesionBox]:
    oblique = [LesionBox.from_index_range(GEOMETRY, lo, hi, score=s, label=f"B{n}")
               for n, ((lo, hi), s) in enumerate(zip(BOX_RANGES, [0.875, 0.0625]))]
    oblique[0].extra = {"key_slice": 3, "box_2d": [1, 2, 4, 5]}
    axis_aligned = LesionBox(center=(10.0, -20.5, 30.25), size=(4.0, 6.0, 9.0), score=0.5, label="aligned")
    return [*oblique, axis_aligned]


def _corners_from_index_range(lo, hi, to_physical) -> np.ndarray:
    lo, hi = np.asarray(lo) - 0.5, np.asarray(hi) + 0.5
    return np.array([to_physical((x, y, z)) for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])


def _same_corner_sets(a: np.ndarray, b: np.ndarray, atol=1e-6):
    np.testing.assert_allclose(np.array(sorted(map(tuple, np.round(a, 9)))),
                               np.array(sorted(map(tuple, np.round(b, 9)))), rtol=0, atol=atol)


def _box_corners(center, size, rotation) -> np.ndarray:
    signs = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], dtype=float)
    return np.asarray(center) + (signs * np.asarray(size) / 2) @ np.asarray(rotation).T


@pytest.fixture
def files(tmp_path):
    return write_points(tmp_path / "points.mrk.json", _points()), write_boxes(tmp_path / "boxes.mrk.json", _boxes())


# --- the files themselves -------------------------------------------------------------------------

def test_files_validate_against_the_markups_schema(files):
    jsonschema = pytest.importorskip("jsonschema")
    if not SCHEMA.is_file():
        pytest.skip(f"schema not found at {SCHEMA}")
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    for path in files:
        doc = json.loads(path.read_text())
        errors = [e.message for e in validator.iter_errors(doc)]
        assert not errors, f"{path.name}: {errors}"
    # the schema allows almost anything extra, so check the parts Slicer relies on too
    points_doc, boxes_doc = (json.loads(p.read_text()) for p in files)
    assert [m["type"] for m in points_doc["markups"]] == ["Fiducial"]
    assert [(m["type"], m["roiType"], m["coordinateSystem"]) for m in boxes_doc["markups"]] == [("ROI", "Box", "LPS")] * 3


def test_points_file_content(files):
    item = json.loads(files[0].read_text())["markups"][0]
    assert item["coordinateSystem"] == "LPS"
    for cp, ijk, score, n in zip(item["controlPoints"], POINT_INDICES, SCORES, range(3)):
        np.testing.assert_allclose(cp["position"], _lps(ijk), rtol=0, atol=1e-9)
        assert cp["label"] == f"L{n}" and json.loads(cp["description"]) == {"score": score}
    (measurement,) = item["measurements"]
    assert measurement["name"] == SCORE_MEASUREMENT and measurement["controlPointValues"] == SCORES


def test_axis_aligned_box_is_written_like_slicer(files):
    aligned = json.loads(files[1].read_text())["markups"][2]
    assert aligned["orientation"] == [-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0]
    assert aligned["center"] == [10.0, -20.5, 30.25] and aligned["size"] == [4.0, 6.0, 9.0]
    assert aligned["measurements"][0]["value"] == 0.5


def test_roi_orientation_is_a_rotation_with_the_box_axes():
    rng = np.random.default_rng(0)
    for _ in range(20):
        q, _ = np.linalg.qr(rng.normal(size=(3, 3)))  # random orthonormal, det +1 or -1
        orientation = roi_orientation_lps(q.ravel()).reshape(3, 3)
        assert np.linalg.det(orientation) == pytest.approx(1.0)
        np.testing.assert_allclose(np.abs(orientation.T @ q), np.eye(3), atol=1e-12)  # same axes up to sign


def test_round_trip(files):
    points = read_points(files[0])
    assert [p.label for p in points] == ["L0", "L1", "L2"]
    assert [p.score for p in points] == SCORES
    for p, expected in zip(points, _points()):
        np.testing.assert_allclose(p.position, expected.position, rtol=0, atol=1e-12)
    boxes = read_boxes(files[1])
    for box, expected in zip(boxes, _boxes()):
        assert (box.label, box.score, box.extra) == (expected.label, expected.score, expected.extra)
        np.testing.assert_allclose(box.center, expected.center, rtol=0, atol=1e-12)
        np.testing.assert_allclose(box.size, expected.size, rtol=0, atol=1e-12)
        _same_corner_sets(box.corners(), expected.corners(), atol=1e-9)
    assert len(boxes) == 3


def test_refuses_to_overwrite(files):
    before = files[0].read_bytes()
    with pytest.raises(LesionDetectError, match="already exists"):
        write_points(files[0], _points()[:1])
    assert files[0].read_bytes() == before


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    ('{"markups": []}', "@schema"),
    ('{"@schema": "https://x/markups-schema-v1.0.3.json#", "markups": [{"name": "no type"}]}', "type"),
])
def test_bad_files_are_clear_errors(tmp_path, content, problem):
    path = tmp_path / "bad.mrk.json"
    path.write_text(content)
    for reader in (read_points, read_boxes):
        with pytest.raises(LesionDetectError, match=rf"bad\.mrk\.json.*{problem}"):
            reader(path)


def test_wrong_markup_type_is_a_clear_error(files):
    with pytest.raises(LesionDetectError, match=r"points\.mrk\.json.*Fiducial markups where only ROI"):
        read_boxes(files[0])
    with pytest.raises(LesionDetectError, match=r"boxes\.mrk\.json.*ROI markups where only Fiducial"):
        read_points(files[1])


# --- slicer-core reads ours -------------------------------------------------------------------------

def _measurement(node, name):
    for i in range(node.GetNumberOfMeasurements()):
        if node.GetNthMeasurement(i).GetName() == name:
            return node.GetNthMeasurement(i)
    raise AssertionError(f"{node.GetName()} has no measurement {name}")


def _slicer_points(mrml, path):
    storage = slicer.vtkMRMLMarkupsJsonStorageNode()
    mrml.scene.AddNode(storage)
    node = storage.AddNewMarkupsNodeFromFile(str(path))
    assert node is not None and node.IsA("vtkMRMLMarkupsFiducialNode")
    return node


def _slicer_rois(mrml, path):
    """Every ROI of a file, loaded the way slicer.util.loadMarkups does (markups logic)."""
    before = mrml.scene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode")
    assert mrml.logic("Markups").LoadMarkupsFromJson(str(path), "boxes")
    count = mrml.scene.GetNumberOfNodesByClass("vtkMRMLMarkupsROINode")
    return [mrml.scene.GetNthNodeByClass(i, "vtkMRMLMarkupsROINode") for i in range(before, count)]


def _roi_rotation(roi) -> np.ndarray:
    return numpy_matrix(roi.GetObjectToNodeMatrix())[:3, :3]


def test_slicer_reads_our_points(mrml, files):
    node = _slicer_points(mrml, files[0])
    assert node.GetNumberOfControlPoints() == 3
    values = _measurement(node, SCORE_MEASUREMENT).GetControlPointValues()
    for n, ijk in enumerate(POINT_INDICES):
        np.testing.assert_allclose(node.GetNthControlPointPosition(n), _ras(ijk), rtol=0, atol=1e-6)  # RAS in MRML
        assert node.GetNthControlPointLabel(n) == f"L{n}"
        assert values.GetValue(n) == pytest.approx(SCORES[n], abs=1e-12)


def test_slicer_reads_all_our_boxes(mrml, files):
    rois = _slicer_rois(mrml, files[1])
    assert len(rois) == 3
    for roi, (lo, hi), score in zip(rois, BOX_RANGES, [0.875, 0.0625]):
        rotation = _roi_rotation(roi)
        assert np.linalg.det(rotation) == pytest.approx(1.0)
        _same_corner_sets(_box_corners(roi.GetCenter(), roi.GetSize(), rotation),
                          _corners_from_index_range(lo, hi, _ras))
        assert _measurement(roi, SCORE_MEASUREMENT).GetValue() == pytest.approx(score, abs=1e-12)
    aligned = rois[2]
    np.testing.assert_allclose(aligned.GetCenter(), [-10.0, 20.5, 30.25], rtol=0, atol=1e-6)
    np.testing.assert_allclose(aligned.GetSize(), [4.0, 6.0, 9.0], rtol=0, atol=1e-6)
    np.testing.assert_allclose(_roi_rotation(aligned), np.eye(3), rtol=0, atol=1e-12)


def test_roi_storage_node_reads_the_first_box(mrml, files):
    """A storage node reads one ROI per file: the first item (why write_boxes is read with the logic)."""
    storage = slicer.vtkMRMLMarkupsROIJsonStorageNode()
    mrml.scene.AddNode(storage)
    roi = storage.AddNewMarkupsNodeFromFile(str(files[1]))
    _same_corner_sets(_box_corners(roi.GetCenter(), roi.GetSize(), _roi_rotation(roi)),
                      _corners_from_index_range(*BOX_RANGES[0], _ras))


def _slicer_resave(mrml, node, path, storage_class, ras=False):
    storage = getattr(slicer, storage_class)()
    mrml.scene.AddNode(storage)
    if ras:
        storage.SetCoordinateSystem(slicer.vtkMRMLStorageNode.CoordinateSystemRAS)
    storage.SetFileName(str(path))
    assert storage.WriteData(node)
    return path


def test_scores_labels_and_extras_survive_a_slicer_resave(mrml, files, tmp_path):
    points_node = _slicer_points(mrml, files[0])
    resaved = _slicer_resave(mrml, points_node, tmp_path / "p.mrk.json", "vtkMRMLMarkupsJsonStorageNode")
    assert [(p.label, p.score) for p in read_points(resaved)] == [(p.label, p.score) for p in _points()]
    boxes = []
    for n, roi in enumerate(_slicer_rois(mrml, files[1])):
        path = _slicer_resave(mrml, roi, tmp_path / f"b{n}.mrk.json", "vtkMRMLMarkupsROIJsonStorageNode")
        boxes += read_boxes(path)
    for box, expected in zip(boxes, _boxes(), strict=True):
        assert (box.label, box.score, box.extra) == (expected.label, expected.score, expected.extra)
        _same_corner_sets(box.corners(), expected.corners())


def test_scores_follow_their_points_when_an_annotator_deletes_one(mrml, files, tmp_path):
    node = _slicer_points(mrml, files[0])
    node.RemoveNthControlPoint(0)
    node.AddControlPoint(*_ras((2, 2, 2)), "hand placed")
    resaved = _slicer_resave(mrml, node, tmp_path / "edited.mrk.json", "vtkMRMLMarkupsJsonStorageNode")
    points = read_points(resaved)
    assert [(p.label, p.score) for p in points] == [("L1", SCORES[1]), ("L2", SCORES[2]), ("hand placed", 1.0)]
    np.testing.assert_allclose(points[2].position, _lps((2, 2, 2)), rtol=0, atol=1e-6)


# --- we read what slicer-core writes, in LPS and RAS ---------------------------------------------------

@pytest.mark.parametrize("ras", [False, True], ids=["LPS", "RAS"])
def test_we_read_slicer_points(mrml, tmp_path, ras):
    import vtk

    node = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "from slicer")
    for n, ijk in enumerate(POINT_INDICES):
        node.AddControlPoint(*_ras(ijk), f"P{n}")
    measurement = slicer.vtkMRMLStaticMeasurement()
    measurement.SetName(SCORE_MEASUREMENT)
    values = vtk.vtkDoubleArray()
    for s in SCORES:
        values.InsertNextValue(s)
    measurement.SetControlPointValues(values)
    node.AddMeasurement(measurement)
    path = _slicer_resave(mrml, node, tmp_path / "slicer.mrk.json", "vtkMRMLMarkupsJsonStorageNode", ras=ras)
    assert json.loads(path.read_text())["markups"][0]["coordinateSystem"] == ("RAS" if ras else "LPS")
    points = read_points(path)
    assert [(p.label, p.score) for p in points] == [(f"P{n}", s) for n, s in enumerate(SCORES)]
    for p, ijk in zip(points, POINT_INDICES):
        np.testing.assert_allclose(p.position, _lps(ijk), rtol=0, atol=1e-6)


@pytest.mark.parametrize("ras", [False, True], ids=["LPS", "RAS"])
def test_we_read_slicer_rois(mrml, tmp_path, ras):
    lo, hi = BOX_RANGES[0]
    roi = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "drawn in slicer")
    rotation_ras = np.diag([-1.0, -1.0, 1.0]) @ np.asarray(GEOMETRY.direction).reshape(3, 3)
    object_to_node = np.eye(4)
    object_to_node[:3, :3] = rotation_ras
    centre_ijk = (np.asarray(lo) + np.asarray(hi)) / 2
    object_to_node[:3, 3] = _ras(centre_ijk)
    # size first: SetCenter, and SetSize after the matrix, round the centre to float32 (~2e-6 mm here)
    roi.SetSize(*((np.asarray(hi) - lo + 1) * GEOMETRY.spacing))
    roi.SetAndObserveObjectToNodeMatrix(vtk_matrix(object_to_node))
    path = _slicer_resave(mrml, roi, tmp_path / "roi.mrk.json", "vtkMRMLMarkupsROIJsonStorageNode", ras=ras)
    (box,) = read_boxes(path)
    _same_corner_sets(box.corners(), _corners_from_index_range(lo, hi, _lps))
    np.testing.assert_allclose(box.center, _lps(centre_ijk), rtol=0, atol=1e-6)
    assert box.score == 1.0  # drawn by hand: no score
