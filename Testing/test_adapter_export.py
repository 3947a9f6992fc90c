"""Correct-and-export: user edits in a real MRML scene -> a dataset case that LesionDetectLib
validates and reads back for training (voxel-exact masks, boxes, points, scores, provenance),
never overwriting an earlier annotation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import vtk

from adapter_support import STUDY_KINDS, assert_same_box, make_study, mrml  # noqa: F401  (mrml: fixture)

from LesionDetectLib import markups
from LesionDetectLib.dataset import load_dataset, read_mask, validate_dataset
from LesionDetectLib.errors import LesionDetectError
from LesionDetectLib.geometry import Geometry, lps_to_ras
from LesionDetectLib.io import read_image
from LesionDetectLib.prediction import LesionBox, LesionPoint
from LesionDetectMRML import convert, export, overlay


def _load(mrml, kind):
    study = make_study(kind)
    volume = convert.add_image_volume(mrml.scene, study.image, kind)
    nodes = overlay.add_prediction(mrml.scene, mrml.logic("Segmentations"), volume, study.prediction)
    return study, volume, nodes


def _export(mrml, root, case_id, volume, nodes, study, boxes=None):
    return export.export_from_scene(root, case_id, volume, mrml.logic("Segmentations"),
                                    segmentation=nodes.segmentation, box_nodes=nodes.boxes if boxes is None else boxes,
                                    points_node=nodes.points, prediction=study.prediction, threshold=nodes.threshold)


@pytest.mark.parametrize("kind", STUDY_KINDS)
def test_corrected_result_round_trips_into_a_valid_dataset(mrml, tmp_path, kind):
    study, volume, nodes = _load(mrml, kind)
    logic = mrml.logic("Segmentations")
    geometry = study.prediction.geometry
    # the annotator paints a slab, erases the first lesion's voxels ...
    mask = convert.segment_mask(nodes.segmentation, nodes.segment_id, volume, logic)
    mask[1, 2:6, 3:9] = 1
    first = tuple(np.round(geometry.lps_to_index(study.prediction.points[0].position)).astype(int))[::-1]
    mask[first] = 0
    convert.set_segment_mask(nodes.segmentation, nodes.segment_id, mask, geometry, logic)
    # ... moves and shrinks one box, deletes another, draws a new one ...
    moved = nodes.boxes[0]
    center = [0.0, 0.0, 0.0]
    moved.GetCenter(center)
    moved.SetCenter(center[0] + 1.25, center[1] - 0.5, center[2])
    moved.SetSize(3.0, 4.0, 5.0)
    mrml.scene.RemoveNode(nodes.boxes[1])
    drawn = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "drawn")
    drawn_center_lps = geometry.index_to_lps((np.array(geometry.size) - 1) / 2)
    drawn.SetSize(2.0, 2.5, 3.0)
    drawn.SetCenter(*lps_to_ras(drawn_center_lps))
    # ... deletes a point and places one
    nodes.points.RemoveNthControlPoint(0)
    placed_lps = geometry.index_to_lps([4.0, 5.0, 2.0])
    nodes.points.AddControlPoint(vtk.vtkVector3d(*lps_to_ras(placed_lps)), "P")

    result = _export(mrml, tmp_path / "ds", f"{kind}-001", volume, nodes, study,
                     boxes=[r for r in nodes.boxes] + [drawn])
    assert validate_dataset(tmp_path / "ds") == []
    ds = load_dataset(tmp_path / "ds")
    [case] = ds.cases
    assert case.id == result.case_id == f"{kind}-001"
    provenance = case.extra["provenance"]
    assert provenance["corrected"] is True
    assert provenance["threshold"] == study.prediction.threshold
    assert provenance["model"] == study.prediction.provenance.model_id
    assert provenance["method"] == study.prediction.provenance.method
    assert provenance["time"]
    assert ds.modality == study.modality

    # what a trainer reads: the image exactly, the mask voxel-exact on the image's grid
    image = read_image(case.image)
    assert Geometry.of(image).same_grid(Geometry.of(study.image), tol=1e-12)  # NRRD stores direction x spacing
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(study.image))
    np.testing.assert_array_equal(read_mask(case.mask, Geometry.of(image)), mask)

    boxes = markups.read_boxes(case.boxes)
    predicted = study.prediction.boxes
    want_moved = LesionBox(center=np.asarray(predicted[0].center) + [-1.25, 0.5, 0.0], size=(3.0, 4.0, 5.0),
                           score=predicted[0].score, axes=predicted[0].axes, extra=predicted[0].extra)
    want_drawn = LesionBox(center=drawn_center_lps, size=(2.0, 2.5, 3.0), score=1.0)
    want_boxes = [want_moved, *predicted[2:], want_drawn]  # predicted[1] was deleted
    assert len(boxes) == len(want_boxes)
    for got, exp in zip(boxes, want_boxes):
        assert_same_box(got, exp, tol_mm=1e-6, mrml_centre=True)
        assert got.extra == exp.extra

    points = markups.read_points(case.points)
    want = [*study.prediction.points[1:], LesionPoint(placed_lps, score=1.0)]
    assert len(points) == len(want)
    for got, exp in zip(points, want):
        np.testing.assert_allclose(got.position, exp.position, atol=1e-9, rtol=0)
        assert got.score == exp.score and got.label == exp.label


def test_unedited_export_is_not_marked_corrected(mrml, tmp_path):
    study, volume, nodes = _load(mrml, "bone-ct")
    result = _export(mrml, tmp_path, "case", volume, nodes, study)
    assert result.entry["provenance"]["corrected"] is False
    # a re-threshold alone is not a correction either, but the threshold is recorded
    overlay.set_threshold(nodes, 0.3, mrml.logic("Segmentations"))
    again = _export(mrml, tmp_path, "case", volume, nodes, study)
    assert again.entry["provenance"]["corrected"] is False
    assert again.entry["provenance"]["threshold"] == 0.3


def test_export_never_overwrites_it_adds_a_version(mrml, tmp_path):
    study, volume, nodes = _load(mrml, "liver")
    first = _export(mrml, tmp_path, "liver7", volume, nodes, study)
    before = {p: p.read_bytes() for p in first.files.values()}
    second = _export(mrml, tmp_path, "liver7", volume, nodes, study)
    (tmp_path / "labels" / "liver7_v3.seg.nrrd").write_bytes(b"someone else's file")
    third = _export(mrml, tmp_path, "liver7", volume, nodes, study)
    assert (first.case_id, second.case_id, third.case_id) == ("liver7", "liver7_v2", "liver7_v4")
    assert {p: p.read_bytes() for p in first.files.values()} == before
    assert (tmp_path / "labels" / "liver7_v3.seg.nrrd").read_bytes() == b"someone else's file"
    ds = load_dataset(tmp_path)
    assert [c.id for c in ds.cases] == ["liver7", "liver7_v2", "liver7_v4"]
    assert {c.patient for c in ds.cases} == {"liver7"}  # versions stay with their patient in splits
    assert not (tmp_path / "dataset.json.lock").exists()


def test_failed_export_leaves_the_dataset_as_it_was(mrml, tmp_path, monkeypatch):
    study, volume, nodes = _load(mrml, "flair")
    _export(mrml, tmp_path, "a", volume, nodes, study)
    dataset_before = (tmp_path / "dataset.json").read_text()
    files_before = sorted(p for p in tmp_path.rglob("*") if p.is_file())

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(markups, "write_points", broken)
    with pytest.raises(OSError, match="disk full"):
        _export(mrml, tmp_path, "b", volume, nodes, study)
    assert (tmp_path / "dataset.json").read_text() == dataset_before
    assert sorted(p for p in tmp_path.rglob("*") if p.is_file()) == files_before


def test_a_dataset_keeps_one_modality_and_case_ids_are_checked(mrml, tmp_path):
    study, volume, nodes = _load(mrml, "bone-ct")
    _export(mrml, tmp_path, "ct1", volume, nodes, study)
    mr, mr_volume, mr_nodes = _load(mrml, "flair")
    with pytest.raises(LesionDetectError, match="holds CT images; this case is MR"):
        _export(mrml, tmp_path, "mr1", mr_volume, mr_nodes, mr)
    with pytest.raises(LesionDetectError, match="case id"):
        _export(mrml, tmp_path, "../escape", volume, nodes, study)
    assert [c["id"] for c in json.loads((tmp_path / "dataset.json").read_text())["cases"]] == ["ct1"]
