"""Per-finding review (LesionDetectMRML.review) on real MRML (slicer-core): ids and states set
and read back from the nodes, edits and additions told apart, states kept through a
re-threshold, the score filter and an .mrb save and reload, "N of M reviewed", and the export:
rejected findings out of the mask, boxes and points, in the hard-negative files with their
scores, every decision in dataset.json's "review"."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
import vtk
from scipy import ndimage

from adapter_support import ROOT, make_study, mrml  # noqa: F401  (mrml: fixture)

from LesionDetectLib import markups
from LesionDetectLib.dataset import load_dataset, read_mask, validate_dataset
from LesionDetectLib.geometry import lps_to_ras
from LesionDetectMRML import bundle, convert, export, headless, overlay, review
from LesionDetectMRML.logic import REVIEWER_SETTING, DetectionLogic, DictSettings


def _load(mrml, kind="bone-ct", threshold=None):
    study = make_study(kind)
    volume = convert.add_image_volume(mrml.scene, study.image, kind)
    nodes = overlay.add_prediction(mrml.scene, mrml.logic("Segmentations"), volume, study.prediction,
                                   threshold=threshold)
    return study, volume, nodes


def _states(mrml, nodes, **kwargs) -> dict[str, str]:
    return {f.id: f.state for f in review.list_findings(nodes, mrml.logic("Segmentations"), **kwargs)}


def _component_at(findings, position_lps, tol_mm=6.0):
    """The component finding whose centroid lies nearest `position_lps` (within tol)."""
    comps = [f for f in findings if f.kind == "component"]
    best = min(comps, key=lambda f: np.linalg.norm(np.subtract(f.position_lps, position_lps)))
    assert np.linalg.norm(np.subtract(best.position_lps, position_lps)) < tol_mm
    return best


def test_model_findings_have_stable_ids_and_states_read_back(mrml):
    study, _, nodes = _load(mrml)
    logic = mrml.logic("Segmentations")
    findings = review.list_findings(nodes, logic)
    n_components = ndimage.label(study.prediction.mask)[1]
    ids = [f.id for f in findings]
    assert ids == (["class-1"] + [f"point-{n}" for n in (1, 2, 3)] + [f"component-{n}" for n in
                   range(1, n_components + 1)] + ["box-1", "box-2", "box-3"])
    assert {f.state for f in findings} == {"unreviewed"}
    assert review.progress_text(findings) == f"0 of {len(findings)} reviewed"
    # positions and scores are the model's
    points = {f.id: f for f in findings if f.kind == "point"}
    for n, p in enumerate(study.prediction.points, start=1):
        np.testing.assert_allclose(points[f"point-{n}"].position_lps, p.position, atol=1e-4)
        assert points[f"point-{n}"].score == pytest.approx(p.score)
    first_component = _component_at(findings, study.prediction.points[0].position)
    assert first_component.score == pytest.approx(float(study.prediction.probability[
        ndimage.label(study.prediction.mask)[0] == ndimage.label(study.prediction.mask)[0][
            tuple(np.round(study.prediction.geometry.lps_to_index(study.prediction.points[0].position)).astype(int)[::-1])]
    ].max()))
    [class_row] = [f for f in findings if f.kind == "class"]
    assert class_row.position_lps is None and class_row.label == study.prediction.classes[0].label

    review.accept(nodes, "box-1")
    review.reject(nodes, "point-2")
    review.reject(nodes, first_component.id)
    review.set_state(nodes, "class-1", "accepted")
    states = _states(mrml, nodes)
    assert (states["box-1"], states["point-2"], states[first_component.id], states["class-1"]) == \
        ("accepted", "rejected", "rejected", "accepted")
    assert states["box-2"] == states["point-1"] == "unreviewed"
    assert review.get_state(nodes, "point-2", logic) == "rejected"
    assert review.progress(review.list_findings(nodes, logic)) == (4, len(findings))
    # the states are on the nodes themselves
    assert json.loads(nodes.boxes[0].GetAttribute(review.REVIEW_ATTRIBUTE))["state"] == "accepted"
    review.set_state(nodes, "box-1", "unreviewed")  # undo
    assert _states(mrml, nodes)["box-1"] == "unreviewed"

    with pytest.raises(ValueError, match="unknown review state"):
        review.set_state(nodes, "box-1", "maybe")
    with pytest.raises(ValueError, match="cannot be marked as added"):
        review.set_state(nodes, "box-2", "added")
    with pytest.raises(KeyError):
        review.set_state(nodes, "box-99", "accepted")


def test_moved_resized_painted_and_added_findings_are_edited_or_added(mrml):
    study, volume, nodes = _load(mrml)
    logic = mrml.logic("Segmentations")
    geometry = study.prediction.geometry
    before = review.list_findings(nodes, logic)
    # move a box and resize another; move a point
    center = [0.0, 0.0, 0.0]
    nodes.boxes[0].GetCenter(center)
    nodes.boxes[0].SetCenter(center[0] + 1.5, center[1], center[2])
    nodes.boxes[1].SetSize(2.0, 2.0, 2.0)
    p = nodes.points.GetNthControlPointPositionVector(2)
    nodes.points.SetNthControlPointPosition(2, p[0], p[1] + 2.0, p[2])
    # paint onto the first lesion's component, and a new blob far from every lesion
    mask = convert.segment_mask(nodes.segmentation, nodes.segment_id, volume, logic)
    first = _component_at(before, study.prediction.points[0].position)
    labels = ndimage.label(mask)[0]
    seed_label = labels[tuple(np.round(geometry.lps_to_index(first.position_lps)).astype(int)[::-1])]
    grown = ndimage.binary_dilation(labels == seed_label)
    mask[grown & (labels == 0)] = 1
    mask[8:10, 20:22, 1:3] = 1  # a corner of the image: no lesion there
    convert.set_segment_mask(nodes.segmentation, nodes.segment_id, mask, geometry, logic)
    # draw a box and place a point by hand
    drawn = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "drawn")
    drawn.SetSize(3.0, 3.0, 3.0)
    drawn.SetCenter(*lps_to_ras(geometry.index_to_lps([4.0, 4.0, 4.0])))
    nodes.points.AddControlPoint(vtk.vtkVector3d(*lps_to_ras(geometry.index_to_lps([5.0, 6.0, 3.0]))), "P")

    after = review.list_findings(nodes, logic, boxes=[*nodes.boxes, drawn])
    by_id = {f.id: f for f in after}
    assert by_id["box-1"].state == "edited" and by_id["box-2"].state == "edited"
    assert by_id["box-3"].state == "unreviewed"
    assert by_id["point-3"].state == "edited" and by_id["point-1"].state == "unreviewed"
    assert by_id[first.id].state == "edited"
    added = [f for f in after if f.state == "added"]
    assert sorted(f.kind for f in added) == ["box", "component", "point"]
    assert all(f.origin == "user" and "-added-" in f.id for f in added)
    [blob] = [f for f in added if f.kind == "component"]
    np.testing.assert_allclose(blob.position_lps, geometry.index_to_lps([1.5, 20.5, 8.5]), atol=1e-6)
    # the ids the annotator's findings got are stable: listing again gives the same
    again = review.list_findings(nodes, logic, boxes=[*nodes.boxes, drawn])
    assert [(f.id, f.state) for f in again] == [(f.id, f.state) for f in after]
    # a rejected edit is rejected; an accepted edit stays "edited"
    review.accept(nodes, "box-1")
    review.reject(nodes, "box-2")
    states = _states(mrml, nodes)
    assert (states["box-1"], states["box-2"]) == ("edited", "rejected")
    assert review.progress(again)[0] == sum(f.state != "unreviewed" for f in again) == 7


def test_rethreshold_and_score_filter_keep_states(mrml):
    study, _, nodes = _load(mrml)
    logic = mrml.logic("Segmentations")
    positions = [p.position for p in study.prediction.points]  # peaks 0.95, 0.75, 0.55
    start = review.list_findings(nodes, logic)
    ids = [_component_at(start, p).id for p in positions]
    assert len(set(ids)) == 3
    review.reject(nodes, ids[0])
    review.accept(nodes, ids[2])
    review.reject(nodes, "box-3")
    sizes = {}
    for threshold in (0.6, 0.3, 0.7, 0.5):
        overlay.set_threshold(nodes, threshold, logic)
        findings = review.list_findings(nodes, logic)
        present = {f.id: f for f in findings if f.kind == "component"}
        if threshold == 0.3:  # the first and third lesions merge into one component: it keeps the first's id
            assert set(present) == set(ids[:2])
        elif threshold != 0.5:  # the weakest lesion (peak 0.55) vanishes over 0.55 ...
            assert set(present) == set(ids[:2])
        else:  # ... and comes back with its id and state
            assert [_component_at(findings, p).id for p in positions] == ids
        assert present[ids[0]].state == "rejected"
        assert present[ids[1]].state == "unreviewed"  # grown or shrunk by the threshold: not an edit
        if ids[2] in present:
            assert present[ids[2]].state == "accepted"
        sizes[threshold] = float(present[ids[1]].detail.split()[0])
    assert sizes[0.3] > sizes[0.5] > sizes[0.6] > sizes[0.7]  # the component really changed with the threshold
    assert not any(f.kind == "component" and "-added-" in f.id for f in review.list_findings(nodes, logic))
    # the score filter hides box-3 (score 0.50) and point-3 (0.55); their states stay
    overlay.filter_boxes(nodes.boxes, 0.6)
    shown = _states(mrml, nodes, min_score=0.6)
    assert "box-3" not in shown and "point-3" not in shown and "box-1" in shown
    assert _states(mrml, nodes)["box-3"] == "rejected"


def _reopen(mrb, tmp_path):
    scene = headless.new_scene()
    (tmp_path / "open").mkdir()
    assert scene.app_logic.OpenSlicerDataBundle(str(mrb), str(tmp_path / "open"))
    return scene


def test_states_survive_saving_the_scene_as_mrb_and_opening_it(mrml, tmp_path):
    study, volume, nodes = _load(mrml)
    logic = mrml.logic("Segmentations")
    findings = review.list_findings(nodes, logic)
    rejected_component = _component_at(findings, study.prediction.points[1].position).id
    review.reject(nodes, rejected_component)
    review.accept(nodes, "box-2")
    review.reject(nodes, "point-1")
    review.set_state(nodes, "class-1", "rejected")
    nodes.boxes[0].SetSize(3.0, 3.5, 4.0)  # edited
    nodes.points.AddControlPoint(vtk.vtkVector3d(*lps_to_ras(study.prediction.geometry.index_to_lps([3, 3, 3]))),
                                 "P")  # added
    review.set_state(nodes, "point-3", "edited")  # set by hand
    overlay.set_threshold(nodes, 0.45, logic)
    before = [(f.id, f.kind, f.state, f.score) for f in review.list_findings(nodes, logic)]
    assert "added" in {s for _, _, s, _ in before}

    mrb = bundle.save_scene_bundle(mrml.app_logic, tmp_path / "reviewed.mrb")
    reopened = _reopen(mrb, tmp_path)
    try:
        back = overlay.nodes_in_scene(reopened.scene)
        assert back is not None and len(back.boxes) == 3 and back.threshold == pytest.approx(0.45)
        after = [(f.id, f.kind, f.state, f.score) for f in review.list_findings(back, reopened.logic("Segmentations"))]
        assert sorted(after, key=str) == sorted(before, key=str)
        states = {i: s for i, _, s, _ in after}
        assert (states[rejected_component], states["box-2"], states["point-1"], states["class-1"],
                states["box-1"], states["point-3"]) == ("rejected", "accepted", "rejected", "rejected", "edited",
                                                        "edited")
        # and the review goes on in the reopened scene: a re-threshold there keeps them too
        overlay.set_threshold(back, 0.5, reopened.logic("Segmentations"))
        assert _states(reopened, back)[rejected_component] == "rejected"
        # the module's logic picks the result up from the opened scene
        logic = DetectionLogic(reopened.scene, reopened.logic("Segmentations"), app_logic=reopened.app_logic,
                               library_parent=ROOT, temp_dir=tmp_path)
        assert logic.useResultInScene() is not None
        now = _states(reopened, back)  # at 0.5 the third lesion is back: one more finding than at 0.45
        assert {f.id: f.state for f in logic.reviewFindings()} == now and len(now) == len(before) + 1
        assert logic.reviewProgress() == f"{sum(s != 'unreviewed' for s in now.values())} of {len(now)} reviewed"
    finally:
        reopened.close()


def test_export_leaves_rejected_findings_out_and_writes_them_as_hard_negatives(mrml, tmp_path):
    study, volume, nodes = _load(mrml, "liver")
    logic = mrml.logic("Segmentations")
    pred = study.prediction
    findings = review.list_findings(nodes, logic)
    rejected_component = _component_at(findings, pred.points[0].position)
    review.reject(nodes, rejected_component.id)
    review.reject(nodes, "box-2")
    review.reject(nodes, "point-3")
    review.accept(nodes, "box-1")
    drawn = mrml.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "drawn")  # added, kept
    drawn.SetSize(2.0, 2.0, 2.0)
    drawn.SetCenter(*lps_to_ras(pred.geometry.index_to_lps([4.0, 4.0, 4.0])))

    root = tmp_path / "ds"
    result = export.export_from_scene(root, "liver-001", volume, logic, segmentation=nodes.segmentation,
                                      box_nodes=[*nodes.boxes, drawn], points_node=nodes.points, prediction=pred,
                                      threshold=nodes.threshold, review=True, classes_node=nodes.classes,
                                      probability_node=nodes.probability, reviewer="Dr. Rev",
                                      model_sha256="ab" * 32)
    assert validate_dataset(root) == []
    [case] = load_dataset(root).cases
    entry = json.loads((root / "dataset.json").read_text())["cases"][0]
    assert entry["negative_points"] == "negative_points/liver-001.mrk.json"
    assert entry["negative_boxes"] == "negative_boxes/liver-001.mrk.json"
    assert case.extra["provenance"]["corrected"] is True

    # the mask: the rejected component's voxels gone, every other component kept voxel-exact
    mask = read_mask(case.mask, pred.geometry)
    labels, _ = ndimage.label(pred.mask)
    seed = tuple(np.round(pred.geometry.lps_to_index(pred.points[0].position)).astype(int)[::-1])
    rejected_voxels = labels == labels[seed]
    assert rejected_voxels.any() and not mask[rejected_voxels].any()
    np.testing.assert_array_equal(mask, pred.mask & ~rejected_voxels)

    # boxes and points: rejected ones out, the drawn box in
    boxes = markups.read_boxes(case.boxes)
    assert sorted(b.score for b in boxes) == sorted([pred.boxes[0].score, pred.boxes[2].score, 1.0])
    points = markups.read_points(case.points)
    assert [p.score for p in points] == [pred.points[0].score, pred.points[1].score]

    # hard negatives with their scores: the rejected point, the rejected component at its centroid
    negative_points = markups.read_points(root / entry["negative_points"])
    assert len(negative_points) == 2
    np.testing.assert_allclose(negative_points[1].position, pred.points[2].position, atol=1e-6)
    assert negative_points[1].score == pytest.approx(pred.points[2].score)
    np.testing.assert_allclose(negative_points[0].position, rejected_component.position_lps, atol=1e-6)
    assert negative_points[0].score == pytest.approx(float(pred.probability[rejected_voxels].max()))
    [negative_box] = markups.read_boxes(root / entry["negative_boxes"])
    assert negative_box.score == pytest.approx(pred.boxes[1].score)
    np.testing.assert_allclose(negative_box.center, pred.boxes[1].center, atol=1e-4)
    from LesionDetectLib import dataset as dataset_module

    if hasattr(dataset_module, "hard_negatives"):  # the training side's reader of these two keys
        read_points, read_boxes = dataset_module.hard_negatives(case)
        assert [p.score for p in read_points] == [p.score for p in negative_points]
        assert [b.score for b in read_boxes] == [negative_box.score]

    # the review record
    record = entry["review"]
    assert record["model_id"] == pred.provenance.model_id and record["model_sha256"] == "ab" * 32
    assert record["threshold"] == nodes.threshold and record["reviewer"] == "Dr. Rev"
    assert dt.datetime.fromisoformat(record["time"]).utcoffset() == dt.timedelta(0)
    decisions = {f["id"]: f for f in record["findings"]}
    assert {f["kind"] for f in record["findings"]} == {"class", "point", "component", "box"}
    assert decisions[rejected_component.id]["state"] == "rejected"
    assert decisions["box-2"]["state"] == "rejected" and decisions["box-1"]["state"] == "accepted"
    assert decisions["point-3"] == {"id": "point-3", "kind": "point", "state": "rejected",
                                    "score": pytest.approx(pred.points[2].score),
                                    "position_lps": pytest.approx(list(pred.points[2].position), abs=1e-4),
                                    "label": "lesion"}
    assert decisions["class-1"]["position_lps"] is None and decisions["class-1"]["label"] == pred.classes[0].label
    [drawn_record] = [f for f in record["findings"] if f["state"] == "added"]
    assert drawn_record["kind"] == "box" and drawn_record["score"] is None
    assert set(result.files) == {"image", "mask", "boxes", "points", "negative_points", "negative_boxes"}


def test_export_without_rejections_writes_no_negative_files(mrml, tmp_path):
    study, volume, nodes = _load(mrml, "flair")
    result = export.export_from_scene(tmp_path / "ds", "c", volume, mrml.logic("Segmentations"),
                                      segmentation=nodes.segmentation, box_nodes=nodes.boxes,
                                      points_node=nodes.points, prediction=study.prediction,
                                      threshold=nodes.threshold, review=True, reviewer="r")
    assert "negative_points" not in result.entry and "negative_boxes" not in result.entry
    assert {f["state"] for f in result.entry["review"]["findings"]} == {"unreviewed"}
    assert "model_sha256" not in result.entry["review"]  # not known for this prediction
    assert not (tmp_path / "ds" / "negative_points").exists()
    assert result.entry["provenance"]["corrected"] is False


def _logic(mrml, tmp_path, settings=None):
    return DetectionLogic(mrml.scene, mrml.logic("Segmentations"), app_logic=mrml.app_logic,
                          library_parent=ROOT, temp_dir=tmp_path, settings=settings)


def test_module_logic_reviews_next_previous_accept_reject_and_exports_the_reviewer(mrml, tmp_path):
    study = make_study("bone-ct")
    settings = DictSettings()
    logic = _logic(mrml, tmp_path, settings)
    volume = convert.add_image_volume(mrml.scene, study.image, "CT")
    assert logic.reviewFindings() == [] and logic.nextFinding() is None
    logic.showPrediction(volume, study.prediction)
    findings = logic.reviewFindings()
    total = len(findings)
    assert logic.reviewProgress() == f"0 of {total} reviewed"
    assert logic.acceptCurrent().id == findings[0].id  # no current finding: goes to the first, decides nothing
    assert logic.reviewProgress() == f"0 of {total} reviewed"
    logic.selectFinding(None)

    first = logic.nextFinding()
    assert first.id == findings[0].id and logic.currentFindingId == first.id
    assert logic.previousFinding().id == findings[-1].id  # wraps round
    assert logic.nextFinding().id == findings[0].id
    assert logic.nextFinding().id == findings[1].id
    np.testing.assert_allclose(logic.reviewFindings()[1].center_ras, lps_to_ras(findings[1].position_lps))
    following = logic.acceptCurrent()  # accepts findings[1], moves to the next unreviewed
    assert following.id == findings[2].id
    assert logic.findingState(findings[1].id) == "accepted"
    assert logic.rejectCurrent().id == findings[3].id
    assert logic.findingState(findings[2].id) == "rejected"
    assert logic.reviewProgress() == f"2 of {total} reviewed"
    for _ in range(total):
        if logic.acceptCurrent() is None:
            break
    assert logic.reviewProgress() == f"{total} of {total} reviewed"

    # the reviewer: the module setting, else the login name; recorded by the export
    assert logic.reviewerName()  # the login name
    logic.setReviewerName("  A. Annotator ")
    assert settings.value(REVIEWER_SETTING) == "A. Annotator" == logic.reviewerName()
    exported = logic.exportResult(tmp_path / "ds", "case1")
    record = exported.entry["review"]
    assert record["reviewer"] == "A. Annotator" and record["threshold"] == study.prediction.threshold
    assert len(record["findings"]) == total
    assert {f["id"]: f["state"] for f in record["findings"]}[findings[2].id] == "rejected"
    assert exported.entry["negative_points"] or exported.entry["negative_boxes"]
    assert validate_dataset(tmp_path / "ds") == []
    logic.forgetResult()
    assert logic.currentFindingId is None and logic.reviewProgress() == "0 of 0 reviewed"
