"""The module's logic (LesionDetectMRML.logic.DetectionLogic, the body of LesionDetectLogic) on a
real MRML scene (slicer-core) with a fake child-process runner: a run's progress, its result
shown as overlays, cancel and failure leaving the scene as it was, the live display, findings,
export, new boxes and points, the sample study.  Also the dependency plan for Slicer's Python
(LesionDetectMRML.dependencies) against a fake table of installed versions."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from packaging.requirements import Requirement

from module_support import PYTHON, ROOT, FakeScheduler, ScriptedChild, ScriptedRunner, mrml  # noqa: F401  (mrml: fixture)

from LesionDetectMRML import dependencies  # noqa: E402
from LesionDetectMRML.logic import DetectionLogic  # noqa: E402
from LesionDetectMRML.process import Progress  # noqa: E402

STEPS = [[Progress(0.25, "reading the image")], [], [Progress(0.5, "model"), Progress(0.75, "writing")]]
NODE_CLASSES = ("vtkMRMLScalarVolumeNode", "vtkMRMLSegmentationNode", "vtkMRMLMarkupsROINode",
                "vtkMRMLMarkupsFiducialNode", "vtkMRMLTableNode")


# --- a fake runner ------------------------------------------------------------------------

class FakeChild(ScriptedChild):
    """Stands in for `lesiondetect infer`.  outcome: "succeed" (writes `prediction` where --out
    points, exit 0), "fail" (exit 2 with an error line), "empty" (exit 0 without writing
    anything) or "hang" (runs until cancelled)."""

    def __init__(self, args, env, outcome, steps, prediction=None):
        super().__init__(args, env, outcome, steps)
        self.prediction = prediction
        self.input_at_start = Path(self.arg("--input")).is_file()

    def end(self) -> int:
        if self.outcome == "succeed":
            from LesionDetectLib.prediction import write_prediction

            write_prediction(self.prediction, self.arg("--out"))
        elif self.outcome == "fail":
            self.tail = ["loading the model", "lesiondetect: error: model/: no weights file"]
        return 2 if self.outcome == "fail" else 0


class FakeRunner(ScriptedRunner):
    child_class = FakeChild

    def __init__(self, outcome="succeed", prediction=None, steps=STEPS):
        super().__init__(outcome, steps, prediction=prediction)


# --- fixtures -----------------------------------------------------------------------------

@pytest.fixture
def study():
    from LesionDetectMRML.samples import make_study

    return make_study("liver")


def _logic(mrml, tmp_path, runner=None, **kwargs) -> DetectionLogic:
    return DetectionLogic(mrml.scene, mrml.logic("Segmentations"), runner=runner, app_logic=mrml.app_logic,
                          python=PYTHON, library_parent=ROOT, temp_dir=tmp_path, **kwargs)


def _volume(mrml, study):
    from LesionDetectMRML import convert

    return convert.add_image_volume(mrml.scene, study.image, "liver CT")


def _counts(scene) -> dict[str, int]:
    return {c: scene.GetNumberOfNodesByClass(c) for c in NODE_CLASSES}


def _node_ids(scene) -> list[str]:
    return [scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())]


def _work_dirs(tmp_path) -> list[Path]:
    return sorted(tmp_path.glob("LesionDetect-*"))


# --- a run --------------------------------------------------------------------------------

def test_run_reports_progress_then_shows_the_prediction(mrml, study, tmp_path):
    from LesionDetectMRML import convert

    runner = FakeRunner(prediction=study.prediction)
    logic = _logic(mrml, tmp_path, runner)
    volume = _volume(mrml, study)
    before = _counts(mrml.scene)
    progress, finished = [], []
    assert logic.startInference(volume, method="liver-frcnn", device="cpu", opacity=0.4,
                                onProgress=lambda f, t: progress.append((f, t)),
                                onFinished=lambda r, e: finished.append((r, e))) is None
    assert logic.isRunning() and _counts(mrml.scene) == before  # nothing shown while it runs

    [child] = runner.children
    assert child.args[:6] == [PYTHON, "-m", "LesionDetectLib", "--progress", "lines", "infer"]
    assert (child.arg("--method"), child.arg("--device")) == ("liver-frcnn", "cpu")
    assert child.input_at_start and Path(child.arg("--input")).parent == Path(child.arg("--out")).parent
    assert child.env["PYTHONPATH"].split(os.pathsep)[0] == str(ROOT)

    polls = 0
    while logic.poll():
        polls += 1
        assert polls < 20
    assert polls == len(STEPS)
    assert progress == [(0.25, "reading the image"), (0.5, "model"), (0.75, "writing")]
    [(result, error)] = finished
    assert error is None and result is logic.result and not logic.isRunning()
    after = _counts(mrml.scene)
    pred = study.prediction
    assert {c: after[c] - before[c] for c in NODE_CLASSES} == {
        "vtkMRMLScalarVolumeNode": 1, "vtkMRMLSegmentationNode": 1, "vtkMRMLMarkupsROINode": len(pred.boxes),
        "vtkMRMLMarkupsFiducialNode": 1, "vtkMRMLTableNode": 1}
    mask = convert.segment_mask(result.segmentation, result.segment_id, volume, mrml.logic("Segmentations"))
    np.testing.assert_array_equal(mask, pred.mask)
    np.testing.assert_allclose(convert.volume_array(result.probability), pred.probability, atol=1e-7)
    assert [convert.box_score(r) for r in result.boxes] == pytest.approx([b.score for b in pred.boxes])
    assert result.points.GetNumberOfControlPoints() == len(pred.points)
    composite = mrml.scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
    assert composite.GetForegroundVolumeID() == result.probability.GetID()
    assert composite.GetForegroundOpacity() == pytest.approx(0.4)
    assert _work_dirs(tmp_path) == []  # the run's folder is gone


def test_scheduler_polls_a_run_and_is_stopped_when_it_ends(mrml, study, tmp_path):
    scheduler = FakeScheduler()
    logic = _logic(mrml, tmp_path, FakeRunner(prediction=study.prediction), poll_scheduler=scheduler)
    finished = []
    logic.startInference(_volume(mrml, study), method="liver-frcnn", onFinished=lambda r, e: finished.append(e))
    assert scheduler.poll == logic.runs.poll and scheduler.stops == 0
    while scheduler.poll():
        pass
    assert finished == [None] and scheduler.stops == 1 and logic.result is not None


def test_blocking_run_returns_the_result(mrml, study, tmp_path):
    logic = _logic(mrml, tmp_path, FakeRunner(prediction=study.prediction))
    progress = []
    result = logic.startInference(_volume(mrml, study), model=tmp_path / "model", method="ignored",
                                  onProgress=lambda f, t: progress.append(f), waitForCompletion=True)
    assert result is logic.result and len(result.boxes) == len(study.prediction.boxes)
    assert progress == [0.25, 0.5, 0.75]
    args = logic.runner.children[0].args
    assert args[args.index("--model") + 1] == str(tmp_path / "model") and "--method" not in args


def test_cancel_stops_the_child_and_leaves_the_scene_as_it_was(mrml, study, tmp_path):
    runner, scheduler = FakeRunner("hang", prediction=study.prediction), FakeScheduler()
    logic = _logic(mrml, tmp_path, runner, poll_scheduler=scheduler)
    volume = _volume(mrml, study)
    nodes_before = _node_ids(mrml.scene)
    finished = []
    logic.startInference(volume, method="liver-frcnn", onFinished=lambda r, e: finished.append((r, e)))
    assert logic.poll() and logic.poll() and logic.poll() and logic.poll()  # progress, then running on
    assert len(_work_dirs(tmp_path)) == 1
    logic.cancel()
    assert runner.children[0].cancelled
    assert finished == [(None, "Cancelled.")] and logic.lastRunCancelled and not logic.isRunning()
    assert logic.result is None and scheduler.stops == 1
    assert _node_ids(mrml.scene) == nodes_before
    assert _work_dirs(tmp_path) == []
    assert not logic.poll()
    logic.cancel()  # nothing running: nothing happens
    assert len(finished) == 1


def test_cancel_from_a_progress_callback_ends_a_blocking_run(mrml, study, tmp_path):
    logic = _logic(mrml, tmp_path, FakeRunner("hang", prediction=study.prediction))
    volume = _volume(mrml, study)
    nodes_before = _node_ids(mrml.scene)
    with pytest.raises(RuntimeError, match="Cancelled"):
        logic.startInference(volume, method="liver-frcnn", onProgress=lambda f, t: logic.cancel(),
                             waitForCompletion=True)
    assert logic.runner.children[0].cancelled and logic.lastRunCancelled
    assert _node_ids(mrml.scene) == nodes_before and _work_dirs(tmp_path) == []


def test_a_failing_child_reports_its_error_and_changes_nothing(mrml, study, tmp_path):
    logic = _logic(mrml, tmp_path, FakeRunner("fail", prediction=study.prediction))
    volume = _volume(mrml, study)
    nodes_before = _node_ids(mrml.scene)
    finished = []
    logic.startInference(volume, method="liver-frcnn", onFinished=lambda r, e: finished.append((r, e)))
    while logic.poll():
        pass
    [(result, error)] = finished
    assert result is None and error.splitlines()[-1] == "lesiondetect: error: model/: no weights file"
    assert not logic.lastRunCancelled and logic.result is None
    assert _node_ids(mrml.scene) == nodes_before and _work_dirs(tmp_path) == []
    with pytest.raises(RuntimeError, match="no weights file"):
        logic.startInference(volume, method="liver-frcnn", waitForCompletion=True)
    assert _node_ids(mrml.scene) == nodes_before


def test_an_unreadable_result_is_reported_like_a_failure(mrml, study, tmp_path):
    logic = _logic(mrml, tmp_path, FakeRunner("empty"))
    volume = _volume(mrml, study)
    nodes_before = _node_ids(mrml.scene)
    with pytest.raises(RuntimeError):
        logic.startInference(volume, method="liver-frcnn", waitForCompletion=True)
    assert _node_ids(mrml.scene) == nodes_before and logic.result is None and not logic.isRunning()


def test_start_refuses_a_second_run_and_a_missing_volume(mrml, study, tmp_path):
    runner = FakeRunner("hang")
    logic = _logic(mrml, tmp_path, runner)
    with pytest.raises(ValueError):
        logic.startInference(None, method="liver-frcnn")
    assert runner.children == [] and _work_dirs(tmp_path) == []
    logic.startInference(_volume(mrml, study), method="liver-frcnn")
    with pytest.raises(RuntimeError, match="already running"):
        logic.startInference(_volume(mrml, study), method="liver-frcnn")
    assert len(runner.children) == 1
    logic.cancel()


def test_showing_a_prediction_is_all_or_nothing(mrml, study, tmp_path, monkeypatch):
    from LesionDetectMRML import convert

    logic = _logic(mrml, tmp_path)
    volume = _volume(mrml, study)
    nodes_before = _node_ids(mrml.scene)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(convert, "add_class_table", broken)  # the last part add_prediction adds
    with pytest.raises(OSError):
        logic.showPrediction(volume, study.prediction)
    assert _node_ids(mrml.scene) == nodes_before and logic.result is None


# --- the result in the scene --------------------------------------------------------------

def test_live_display_findings_and_export(mrml, study, tmp_path):
    from LesionDetectLib.dataset import load_dataset, validate_dataset
    from LesionDetectMRML import convert

    logic = _logic(mrml, tmp_path)
    volume = _volume(mrml, study)
    pred = study.prediction
    result = logic.showPrediction(volume, pred, opacity=0.5)
    assert not logic.displayChanged(pred.threshold, 0.0, 0.5) and logic.displayChanged(0.3, 0.0, 0.5)

    logic.updateDisplay(0.3, 0.6, 0.7)
    mask = convert.segment_mask(result.segmentation, result.segment_id, volume, mrml.logic("Segmentations"))
    np.testing.assert_array_equal(mask, pred.probability >= 0.3)
    assert [bool(r.GetDisplayNode().GetVisibility()) for r in result.boxes] == [b.score >= 0.6 for b in pred.boxes]
    composite = mrml.scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
    assert composite.GetForegroundOpacity() == pytest.approx(0.7)
    assert not logic.displayChanged(0.3, 0.6, 0.7)

    rows = logic.findings(0.6)
    kinds = [f.kind for f in rows]
    assert kinds.count("box") == sum(b.score >= 0.6 for b in pred.boxes)
    assert kinds.count("candidate") == sum(p.score >= 0.6 for p in pred.points)
    assert kinds.count("component") >= 1
    logic.centreOn(rows[0])
    red = mrml.scene.GetSingletonNode("Red", "vtkMRMLSliceNode")
    offset = red.GetSliceToRAS()
    np.testing.assert_allclose([offset.GetElement(i, 3) for i in range(3)], rows[0].center_ras, atol=1e-6)

    assert logic.defaultCaseId() == "liver_CT"
    mrml.scene.RemoveNode(result.boxes[0])  # a correction
    folder = tmp_path / "dataset"
    first = logic.exportResult(folder, "case1")
    second = logic.exportResult(folder, "case1")
    assert (first.case_id, second.case_id) == ("case1", "case1_v2")
    assert first.entry["provenance"]["corrected"] and first.entry["provenance"]["threshold"] == 0.3
    assert validate_dataset(folder) == []
    assert len(load_dataset(folder).cases) == 2

    logic.forgetResult()
    assert logic.findings() == [] and logic.currentBoxes() == []
    with pytest.raises(RuntimeError, match="Run a detection first"):
        logic.exportResult(folder, "case2")


def test_new_box_and_point_enter_place_mode(mrml, study, tmp_path):
    logic = _logic(mrml, tmp_path)
    with pytest.raises(RuntimeError):
        logic.placeNewPoint()
    result = logic.showPrediction(_volume(mrml, study), study.prediction)
    roi = logic.placeNewBox()
    selection, interaction = mrml.app_logic.GetSelectionNode(), mrml.app_logic.GetInteractionNode()
    assert selection.GetActivePlaceNodeID() == roi.GetID()
    assert selection.GetActivePlaceNodeClassName() == "vtkMRMLMarkupsROINode"
    assert interaction.GetCurrentInteractionMode() == interaction.Place
    assert logic.currentBoxes() == [*result.boxes, roi]
    mrml.scene.RemoveNode(result.points)
    points = logic.placeNewPoint()
    assert points is result.points and points.GetScene() is not None and points.GetNumberOfControlPoints() == 0
    assert selection.GetActivePlaceNodeID() == points.GetID()


def test_boxes_and_points_added_at_a_position_are_exported_as_added(mrml, study, tmp_path):
    from LesionDetectLib.dataset import load_dataset

    logic = _logic(mrml, tmp_path)
    with pytest.raises(RuntimeError):
        logic.addPoint((0, 0, 0))
    result = logic.showPrediction(_volume(mrml, study), study.prediction)
    center = [0.0, 0.0, 0.0]
    result.boxes[0].GetCenter(center)
    with pytest.raises(ValueError):
        logic.addBox(center, (0, 5, 5))
    roi = logic.addBox(center, (14.0, 9.0, 6.0))
    assert roi.GetSize() == pytest.approx((14.0, 9.0, 6.0)) and logic.currentBoxes()[-1] is roi
    # on the oblique study the box's edges follow the volume's voxel axes (not R, A, S), centred as asked
    from LesionDetectMRML import convert

    rotation = convert.numpy_matrix(roi.GetObjectToNodeMatrix())
    volume_axes = convert.roi_axes_ras(convert.volume_geometry(result.input_volume).direction)
    np.testing.assert_allclose(np.abs(rotation[:3, :3].T @ volume_axes), np.eye(3), atol=1e-9)
    assert not np.allclose(np.abs(volume_axes), np.eye(3), atol=1e-3)  # the study is oblique
    np.testing.assert_allclose(rotation[:3, 3], center, atol=1e-6)
    points = logic.addPoint(center)
    assert points is result.points and points.GetNumberOfControlPoints() == len(study.prediction.points) + 1
    exported = logic.exportResult(tmp_path / "data", "added")
    case = next(c for c in load_dataset(tmp_path / "data").cases if c.id == exported.case_id)
    states = [f["state"] for f in case.extra["review"]["findings"]]
    assert states.count("added") == 2


def test_sample_study_is_the_library_case_in_the_background(mrml, tmp_path):
    from LesionDetectLib import synth
    from LesionDetectLib.geometry import Geometry
    from LesionDetectMRML import convert

    logic = _logic(mrml, tmp_path)
    [node] = logic.loadSampleStudy("liver-ct", size="small")
    case = synth.make_case("liver-ct", seed=0, index=0, size="small")
    assert convert.volume_geometry(node).same_grid(Geometry.of(case.image))
    np.testing.assert_array_equal(convert.volume_array(node), __import__("SimpleITK").GetArrayFromImage(case.image))
    for n in range(mrml.scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        assert mrml.scene.GetNthNodeByClass(n, "vtkMRMLSliceCompositeNode").GetBackgroundVolumeID() == node.GetID()


def test_method_names_are_read_from_the_library(mrml, tmp_path):
    names = _logic(mrml, tmp_path).methodNames()
    assert {"bone-ct-patch", "liver-frcnn", "ms-flair-fcn"} <= set(names)


def test_model_summary_under_the_method_selector(mrml, tmp_path, monkeypatch):
    """The text the panel shows under the method selector: the active model's card summary."""
    import json

    from LesionDetectLib import models
    from LesionDetectMRML.logic import model_summary_text

    model = tmp_path / "model"
    model.mkdir()
    (model / "model.json").write_text(json.dumps({
        "method": "bone-ct-patch", "modality": "CT", "config": {}, "version": "2", "model_id": "bone-ct-patch-2-ab",
        "training": {"data": "600 synthetic bone-ct studies"}, "metrics": {"synthetic_test": {"lesion_f1": 0.81}}}))
    logic = _logic(mrml, tmp_path)
    text = logic.modelSummary("ms-flair-fcn", model)  # a chosen model folder wins over the method's shipped one
    assert text.splitlines() == ["bone-ct-patch model, version 2 (bone-ct-patch-2-ab)",
                                 "trained on: 600 synthetic bone-ct studies",
                                 "key metric: lesion F1 0.810 (synthetic test)",
                                 "trained on synthetic data only: research use, not validated on real images"]
    (model / "model.json").write_text("{")
    assert model_summary_text("bone-ct-patch", model).startswith("The model card cannot be read:")
    assert model_summary_text("", None) == "Choose a method."
    for method in logic.methodNames():  # each method: its shipped model's card, or that none ships
        assert method in logic.modelSummary(method, None)
    monkeypatch.setattr(models, "shipped_model_dir", lambda method: None)
    assert model_summary_text("liver-frcnn", "") == ("No model is shipped for liver-frcnn: train one and choose its "
                                                     "folder below.")
    monkeypatch.setattr(models, "shipped_model_dir", lambda method: model.parent / "shipped")
    (model.parent / "shipped").mkdir()
    (model.parent / "shipped" / "model.json").write_text(json.dumps({
        "method": "liver-frcnn", "modality": "CT", "config": {}, "training": {"data": "real LiTS scans"}}))
    assert model_summary_text("liver-frcnn", ".").splitlines() == [  # "." is how an empty path reads back
        "liver-frcnn model, version 1", "trained on: real LiTS scans", "key metric: none recorded in the model card"]


# --- dependencies for Slicer's Python ------------------------------------------------------

REQUIREMENTS = dependencies.read_requirements()
SLICER_5_12 = {"torch": "2.14.1+cu126", "torchvision": "0.29.1+cu126", "SimpleITK": "2.5.5", "numpy": "2.4.6",
               "scipy": "1.17.1", "pydicom": "3.0.1", "slicerio": "1.4.0", "pynrrd": "1.1.3",
               "safetensors": "0.5.3", "scikit-learn": "1.7.0", "tqdm": "4.67.1", "matplotlib": "3.10.3"}


def _lookup(versions: dict[str, str]):
    calls = []

    def installed(name):
        calls.append(name)
        return versions.get(name)

    return installed, calls


def test_the_requirements_file_pins_the_torch_pair():
    assert dependencies.torch_pins(REQUIREMENTS) == {"torch": "==2.14.1", "torchvision": "==0.29.1"}


def test_plan_for_an_empty_environment():
    installed, calls = _lookup({})
    plan = dependencies.plan_install(REQUIREMENTS, installed)
    assert plan.torch == {"torch": "==2.14.1", "torchvision": "==0.29.1"}
    assert [r.name for r in plan.pip] == ["slicerio", "pynrrd", "safetensors", "scikit-learn", "tqdm", "matplotlib"]
    assert [r.name for r in plan.bundled_missing] == ["SimpleITK", "numpy", "scipy", "pydicom"]
    assert sorted(calls) == sorted(r.name for r in REQUIREMENTS)
    assert not plan.complete


def test_plan_for_a_complete_slicer_keeps_its_bundled_packages():
    installed, _ = _lookup(SLICER_5_12)  # Slicer's own SimpleITK 2.5.5 is kept, not replaced by 2.5.7
    plan = dependencies.plan_install(REQUIREMENTS, installed)
    assert plan.complete and plan.torch == {} and plan.pip == [] and plan.bundled_missing == []
    assert plan.found["torch"] == "2.14.1+cu126"


def test_plan_replaces_another_torch_through_pytorch_utils_only():
    installed, _ = _lookup({**SLICER_5_12, "torchvision": "0.20.0", "slicerio": "1.3.0"})
    plan = dependencies.plan_install(REQUIREMENTS, installed)
    assert plan.torch == {"torch": "==2.14.1", "torchvision": "==0.29.1"}  # both, as a pair
    assert [str(r) for r in plan.pip] == ["slicerio==1.4.0"]  # pip never gets torch


def test_plan_skips_requirements_for_other_platforms():
    installed, calls = _lookup({})
    plan = dependencies.plan_install([Requirement('pywin32>=306; sys_platform == "no-such-platform"')], installed)
    assert plan.complete and calls == []


def test_ensure_installs_torch_then_the_rest():
    calls = []
    plan = dependencies.plan_install(REQUIREMENTS, _lookup({"numpy": "2.4.6", "SimpleITK": "2.5.5",
                                                            "scipy": "1.17.1", "pydicom": "3.0.1"})[0])
    dependencies.ensure(plan, install_torch=lambda pins: calls.append(("torch", pins)) or True,
                        pip_install=lambda reqs: calls.append(("pip", [str(r) for r in reqs])))
    assert calls == [("torch", {"torch": "==2.14.1", "torchvision": "==0.29.1"}),
                     ("pip", ["slicerio==1.4.0", "pynrrd>=1.0", "safetensors>=0.4", "scikit-learn>=1.4",
                              "tqdm>=4.66", "matplotlib>=3.8"])]


def test_ensure_stops_when_torch_is_declined_or_slicer_lacks_its_own_packages():
    calls = []
    plan = dependencies.plan_install(REQUIREMENTS, _lookup({**SLICER_5_12, "torch": None, "tqdm": None})[0])
    with pytest.raises(RuntimeError, match="torch==2.14.1"):
        dependencies.ensure(plan, install_torch=lambda pins: None, pip_install=calls.append)
    assert calls == []  # nothing else installed after a refusal
    plan = dependencies.plan_install(REQUIREMENTS, _lookup({**SLICER_5_12, "SimpleITK": None, "tqdm": None})[0])
    with pytest.raises(RuntimeError, match="SimpleITK"):
        dependencies.ensure(plan, install_torch=calls.append, pip_install=calls.append)
    assert calls == []
