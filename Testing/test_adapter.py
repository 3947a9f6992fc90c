"""The MRML adapter (LesionDetect/LesionDetectMRML) against the real MRML library of the
slicer-core wheel: every LesionDetectLib <-> MRML conversion, the overlay styling, the live
re-threshold and the score filter."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from adapter_support import STUDY_KINDS, assert_same_box, make_study, mrml, slicer  # noqa: F401

from LesionDetectLib.geometry import Geometry, lps_to_ras
from LesionDetectMRML import convert, overlay
from LesionDetectMRML.samples import oblique_geometry

AXIS_ALIGNED = Geometry((20, 16, 8), (0.7, 1.3, 3.0), (-12.25, 40.5, -7.75))


def test_volume_round_trip_keeps_values_and_oblique_geometry_exactly(mrml):
    study = make_study("bone-ct")
    node = convert.add_image_volume(mrml.scene, study.image, "CT")
    # MRML holds RAS: the node's IJKToRAS is the library's ijk_to_ras
    import vtk

    ijk_to_ras = vtk.vtkMatrix4x4()
    node.GetIJKToRASMatrix(ijk_to_ras)
    got = np.array([[ijk_to_ras.GetElement(r, c) for c in range(4)] for r in range(4)])
    np.testing.assert_allclose(got, study.prediction.geometry.ijk_to_ras(), atol=1e-12)
    back = convert.volume_to_image(node)
    assert back.GetOrigin() == study.image.GetOrigin()
    assert back.GetSpacing() == study.image.GetSpacing()
    assert back.GetDirection() == study.image.GetDirection()
    assert back.GetPixelID() == study.image.GetPixelID()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(study.image))


def test_a_voxel_lands_where_the_library_says(mrml):
    geometry = oblique_geometry()
    array = np.zeros(geometry.shape, dtype=np.float32)
    array[3, 5, 7] = 1.0  # (z, y, x)
    node = convert.add_volume(mrml.scene, array, geometry, "one voxel")
    ras = lps_to_ras(geometry.index_to_lps([7, 5, 3]))
    ras_to_ijk = __import__("vtk").vtkMatrix4x4()
    node.GetRASToIJKMatrix(ras_to_ijk)
    ijk = ras_to_ijk.MultiplyPoint((*ras, 1.0))[:3]
    np.testing.assert_allclose(ijk, [7, 5, 3], atol=1e-9)


@pytest.mark.parametrize("kind", STUDY_KINDS)
def test_prediction_becomes_styled_nodes_and_reads_back(mrml, kind):
    study = make_study(kind)
    pred = study.prediction
    volume = convert.add_image_volume(mrml.scene, study.image, kind)
    nodes = overlay.add_prediction(mrml.scene, mrml.logic("Segmentations"), volume, pred, opacity=0.35)

    # probability map: float, input geometry, Inferno, window 0-1, threshold, foreground layer
    prob = nodes.probability
    assert prob.GetImageData().GetScalarTypeAsString() == "float"
    assert convert.volume_geometry(prob).same_grid(pred.geometry, tol=1e-12)
    np.testing.assert_array_equal(convert.volume_array(prob), pred.probability)
    display = prob.GetDisplayNode()
    assert display.GetColorNodeID() == overlay.INFERNO and display.GetColorNode() is not None
    assert not display.GetAutoWindowLevel()
    assert (display.GetWindow(), display.GetLevel()) == (1.0, 0.5)
    assert display.GetApplyThreshold() and display.GetLowerThreshold() == pred.threshold
    for view in ("Red", "Yellow", "Green"):
        composite = mrml.scene.GetNodeByID(f"vtkMRMLSliceCompositeNode{view}")
        assert composite.GetBackgroundVolumeID() == volume.GetID()
        assert composite.GetForegroundVolumeID() == prob.GetID()
        assert composite.GetForegroundOpacity() == pytest.approx(0.35)

    # segmentation: lesion terminology, status, reference geometry, voxel-exact mask
    seg = nodes.segmentation
    segment = seg.GetSegmentation().GetSegment(nodes.segment_id)
    import vtk

    tag = vtk.reference("")
    segment.GetTag(segment.GetTerminologyEntryTagName(), tag)
    assert "SCT^4147007^Mass" in str(tag)
    assert slicer.vtkSlicerSegmentationsModuleLogic.GetSegmentStatus(segment) == \
        slicer.vtkSlicerSegmentationsModuleLogic.InProgress
    assert seg.GetNodeReferenceID(seg.GetReferenceImageGeometryReferenceRole()) == volume.GetID()
    mask = convert.segment_mask(seg, nodes.segment_id, volume, mrml.logic("Segmentations"))
    np.testing.assert_array_equal(mask, pred.mask)

    # boxes: one ROI each, named with the score, score as a measurement
    assert len(nodes.boxes) == len(pred.boxes)
    for roi, box in zip(nodes.boxes, pred.boxes):
        assert roi.GetName() == f"lesion {box.score:.2f}"
        assert roi.GetMeasurement(convert.SCORE_MEASUREMENT).GetValue() == box.score
        assert_same_box(convert.roi_to_box(roi), box, tol_mm=1e-6, mrml_centre=True)
        assert convert.roi_to_box(roi).extra == box.extra

    # points: exact positions, scores, labels
    points = convert.fiducials_to_points(nodes.points)
    assert [(p.position, p.score, p.label) for p in points] == [(p.position, p.score, p.label) for p in pred.points]

    # class results: a table
    classes = convert.table_to_classes(nodes.classes)
    assert classes[0].probabilities == pytest.approx(pred.classes[0].probabilities)
    assert classes[0].label == pred.classes[0].label


def test_boxes_keep_centre_and_size_to_1e6_mm_when_set(mrml):
    from LesionDetectLib.prediction import LesionBox

    boxes = [LesionBox.from_index_range(AXIS_ALIGNED, (2, 3, 1), (9, 7, 4), score=0.8125, label="nodule"),
             LesionBox(center=(-3.3333333333, 50.123456789, 1.000001), size=(4.4, 5.55, 6.666), score=0.3)]
    for box in boxes:
        roi = convert.add_box(mrml.scene, box)
        assert_same_box(convert.roi_to_box(roi), box, tol_mm=1e-6)


def test_hand_drawn_box_and_point_get_score_one(mrml):
    roi = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "R")
    roi.SetCenter(1.0, 2.0, 3.0)
    roi.SetSize(4.0, 5.0, 6.0)
    box = convert.roi_to_box(roi)
    assert (box.score, box.label) == (1.0, "lesion")
    np.testing.assert_allclose(box.center, [-1.0, -2.0, 3.0])  # RAS -> LPS
    points = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "F")
    points.AddControlPoint(__import__("vtk").vtkVector3d(5.0, -6.0, 7.0), "F-1")
    [point] = convert.fiducials_to_points(points)
    assert (point.position, point.score, point.label) == ((-5.0, 6.0, 7.0), 1.0, "lesion")


def test_rethreshold_rebuilds_the_segment_from_the_probability_volume(mrml):
    study = make_study("flair")
    pred = study.prediction
    volume = convert.add_image_volume(mrml.scene, study.image, "FLAIR")
    nodes = overlay.add_prediction(mrml.scene, mrml.logic("Segmentations"), volume, pred)
    logic = mrml.logic("Segmentations")
    for threshold in (0.2, 0.8, 0.5):
        count = overlay.set_threshold(nodes, threshold, logic)
        want = pred.probability >= threshold
        assert count == int(want.sum()) > 0
        np.testing.assert_array_equal(convert.segment_mask(nodes.segmentation, nodes.segment_id, volume, logic), want)
        assert nodes.probability.GetDisplayNode().GetLowerThreshold() == threshold
    assert mrml.scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == 1
    assert mrml.scene.GetNumberOfNodesByClass("vtkMRMLLabelMapVolumeNode") == 0  # no temporary left


def test_score_filter_hides_boxes_below_it(mrml):
    study = make_study("liver")
    volume = convert.add_image_volume(mrml.scene, study.image, "liver")
    nodes = overlay.add_prediction(mrml.scene, mrml.logic("Segmentations"), volume, study.prediction)
    scores = [b.score for b in study.prediction.boxes]
    for min_score in (0.0, 0.6, 0.95):
        shown = overlay.filter_boxes(nodes.boxes, min_score)
        visible = [bool(r.GetDisplayNode().GetVisibility()) for r in nodes.boxes]
        assert visible == [s >= min_score for s in scores]
        assert shown == sum(visible)


def test_findings_list_candidates_components_and_boxes_and_jump_centres_views(mrml):
    study = make_study("bone-ct")
    volume = convert.add_image_volume(mrml.scene, study.image, "CT")
    nodes = overlay.add_prediction(mrml.scene, mrml.logic("Segmentations"), volume, study.prediction)
    rows = overlay.findings(nodes, mrml.logic("Segmentations"))
    kinds = [r.kind for r in rows]
    # the image-level class result first: its decision and the lesion class's probability
    assert kinds[0] == "class" and rows[0].name == f"image: {study.prediction.classes[0].label}"
    assert rows[0].score == pytest.approx(study.prediction.classes[0].probabilities["metastasis"])
    assert kinds.count("candidate") == len(study.prediction.points)
    assert kinds.count("box") == len(study.prediction.boxes)
    from scipy import ndimage

    assert kinds.count("component") == ndimage.label(study.prediction.mask)[1]
    target = rows[0].center_ras
    overlay.centre_views(mrml.scene, target)
    red = mrml.scene.GetNodeByID("vtkMRMLSliceNodeRed")
    xyz_to_ras = red.GetXYToRAS()
    dims = red.GetDimensions()
    centre = xyz_to_ras.MultiplyPoint((dims[0] / 2, dims[1] / 2, 0, 1))[:3]
    np.testing.assert_allclose(centre, target, atol=1e-6)
    assert len(overlay.findings(nodes, mrml.logic("Segmentations"), min_score=0.8)) < len(rows)


def test_remove_prediction_leaves_the_input(mrml):
    study = make_study("liver")
    volume = convert.add_image_volume(mrml.scene, study.image, "liver")
    nodes = overlay.add_prediction(mrml.scene, mrml.logic("Segmentations"), volume, study.prediction)
    overlay.remove_prediction(mrml.scene, nodes)
    assert mrml.scene.GetNodeByID(volume.GetID()) is volume
    for cls in ("vtkMRMLSegmentationNode", "vtkMRMLMarkupsROINode", "vtkMRMLMarkupsFiducialNode", "vtkMRMLTableNode"):
        assert mrml.scene.GetNumberOfNodesByClass(cls) == 0
    assert mrml.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 1


def test_prediction_on_another_grid_is_refused(mrml):
    study = make_study("bone-ct")
    other = make_study("bone-ct", geometry=AXIS_ALIGNED)
    volume = convert.add_image_volume(mrml.scene, study.image, "CT")
    with pytest.raises(ValueError, match="geometry"):
        overlay.add_prediction(mrml.scene, mrml.logic("Segmentations"), volume, other.prediction)


def test_a_bone_scan_classification_shows_its_decision_activation_map_and_peaks(mrml):
    """A planar scintigram (a one-slice volume in MRML) with bone-scan-cls's prediction: the
    activation map on the image's own grid, the peaks as points, the decision in the class
    table and first in the findings."""
    import torch

    from LesionDetectLib.methods import get_method
    from LesionDetectLib.models import ModelCard

    method = get_method("bone-scan-cls")
    config = {**method.defaults, "compact_widths": [4, 8], "input_size": [32, 16]}
    torch.manual_seed(0)
    model = method.build_model(config).eval()
    rng = np.random.default_rng(0)
    counts = rng.poisson(30, (90, 40)).astype(np.float32)
    counts[30:36, 10:16] += 300
    image = sitk.GetImageFromArray(counts)
    image.SetSpacing((2.2, 2.2))
    image.SetOrigin((-44.0, -99.0))
    card = ModelCard(method=method.name, modality="NM", config=config, thresholds={"image": 0.3})
    pred = method.predict(model, card, image, torch.device("cpu"))
    volume = convert.add_image_volume(mrml.scene, image, "bone scan")
    nodes = overlay.add_prediction(mrml.scene, mrml.logic("Segmentations"), volume, pred)
    assert convert.volume_geometry(nodes.probability).same_grid(Geometry.of(image), tol=1e-9)
    np.testing.assert_array_equal(convert.volume_array(nodes.probability), pred.probability)
    assert convert.fiducials_to_points(nodes.points)[0].position == pytest.approx(pred.points[0].position)
    (back,) = convert.table_to_classes(nodes.classes)
    assert back.label == pred.classes[0].label == pred.provenance.parameters["decision"]
    rows = overlay.findings(nodes, mrml.logic("Segmentations"))
    assert rows[0].kind == "class" and rows[0].name == f"image: {pred.classes[0].label}"
    assert rows[0].score == pytest.approx(pred.classes[0].probabilities["metastasis"], abs=1e-6)
