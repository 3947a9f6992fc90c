"""The bodies of the LesionDetect module's self-tests (LesionDetect.py's LesionDetectTest), on
synthetic data: no network, no trained weights.

They sit in the adapter package because they are installed with the module: "Reload and Test"
and `slicer.selfTests["LesionDetect"]` run them in an installed extension, where the module's
Testing/ folder is not.  Everything Slicer-specific comes in through the constructor, so this
file needs neither Qt nor `slicer`:

    test:          the unittest.TestCase that asserts and shows messages (`delayDisplay`);
    newLogic:      makes the module's logic (LesionDetectLogic: Slicer's scene, segmentations
                   logic, child-process runner and QTimer polling);
    processEvents: lets the application's event loop run once (the QTimer polls the child).

Module-level imports are the standard library only; the library and the other adapter modules
are imported in the methods.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path


class ModuleSelfTest:
    """One method per LesionDetectTest.test_*; each sets itself up on the logic's scene."""

    def __init__(self, test, newLogic, processEvents=lambda: None) -> None:
        self.test = test
        self.newLogic = newLogic
        self.processEvents = processEvents

    def _loadStudy(self, kind="bone-ct"):
        from . import convert, samples

        logic = self.newLogic()
        logic.ensureDependencies()
        study = samples.make_study(kind)
        volume = convert.add_image_volume(logic.scene, study.image, kind)
        return logic, study, volume

    def resultShownAndLiveControls(self):
        import numpy as np

        from . import convert

        t = self.test
        t.delayDisplay("Showing a synthetic prediction")
        logic, study, volume = self._loadStudy("liver")
        result = logic.showPrediction(volume, study.prediction, opacity=0.4)
        mask = convert.segment_mask(result.segmentation, result.segment_id, volume, logic.segmentations_logic)
        t.assertTrue(np.array_equal(mask, study.prediction.mask))
        t.assertEqual(len(result.boxes), len(study.prediction.boxes))
        t.assertEqual(result.probability.GetDisplayNode().GetColorNodeID(), "vtkMRMLColorTableNodeFileInferno.txt")
        logic.updateDisplay(0.3, 0.6, 0.7)
        mask = convert.segment_mask(result.segmentation, result.segment_id, volume, logic.segmentations_logic)
        t.assertTrue(np.array_equal(mask, study.prediction.probability >= 0.3))
        visible = [bool(r.GetDisplayNode().GetVisibility()) for r in result.boxes]
        t.assertEqual(visible, [b.score >= 0.6 for b in study.prediction.boxes])
        t.assertTrue(len(logic.findings()) > 0)
        logic.centreOn(logic.findings()[0])
        t.delayDisplay("Test passed")

    def exportCorrected(self):
        from LesionDetectLib.dataset import load_dataset, validate_dataset

        t = self.test
        t.delayDisplay("Exporting a corrected result")
        logic, study, volume = self._loadStudy("bone-ct")
        result = logic.showPrediction(volume, study.prediction)
        logic.scene.RemoveNode(result.boxes[0])
        with tempfile.TemporaryDirectory() as folder:
            first = logic.exportResult(folder, "case1")
            second = logic.exportResult(folder, "case1")
            t.assertEqual((first.case_id, second.case_id), ("case1", "case1_v2"))
            t.assertTrue(first.entry["provenance"]["corrected"])
            t.assertEqual(validate_dataset(folder), [])
            t.assertEqual(len(load_dataset(folder).cases), 2)
        t.delayDisplay("Test passed")

    def reviewAndExport(self):
        import json

        t = self.test
        t.delayDisplay("Reviewing findings and exporting the review")
        logic, study, volume = self._loadStudy("liver")
        logic.showPrediction(volume, study.prediction)
        total = len(logic.reviewFindings())
        first = logic.nextFinding()
        logic.centreOn(first)
        following = logic.rejectCurrent()
        t.assertEqual(logic.findingState(first.id), "rejected")
        t.assertIsNotNone(following)
        logic.acceptCurrent()
        t.assertEqual(logic.reviewProgress(), f"2 of {total} reviewed")
        with tempfile.TemporaryDirectory() as folder:
            result = logic.exportResult(folder, "reviewed")
            entry = json.loads((Path(folder) / "dataset.json").read_text())["cases"][0]
            t.assertEqual(entry["review"], result.entry["review"])
            states = {f["id"]: f["state"] for f in entry["review"]["findings"]}
            t.assertEqual(states[first.id], "rejected")
            t.assertEqual(entry["review"]["reviewer"], logic.reviewerName())
        t.delayDisplay("Test passed")

    def cancelLeavesScene(self):
        t = self.test
        t.delayDisplay("Cancelling a running detection")
        logic, study, volume = self._loadStudy("flair")
        nodesBefore = logic.scene.GetNumberOfNodes()
        script = ("import time\nfor i in range(600):\n    print(f'PROGRESS {i/600:.3f} working', flush=True)\n"
                  "    time.sleep(0.1)\n")
        # a stand-in for `lesiondetect infer` that reports progress and never ends on its own,
        # run by the logic's Python (PythonSlicer in Slicer)
        logic.inferenceCommand = lambda *args, **kwargs: [logic.python, "-c", script]
        progress, finished = [], []
        logic.startInference(volume, method="ms-flair-fcn", onProgress=lambda f, text: progress.append(f),
                             onFinished=lambda result, error: finished.append((result, error)))
        t.assertTrue(logic.isRunning())
        for _ in range(100):
            self.processEvents()
            if progress:
                break
            time.sleep(0.1)
        t.assertTrue(progress, "no progress reported")
        logic.cancel()
        t.assertFalse(logic.isRunning())
        t.assertTrue(logic.lastRunCancelled)
        t.assertEqual(finished[0][0], None)
        t.assertEqual(logic.scene.GetNumberOfNodes(), nodesBefore)
        t.delayDisplay("Test passed")

    def sampleStudy(self):
        from LesionDetectLib import synth
        from LesionDetectLib.geometry import Geometry

        from . import convert

        t = self.test
        t.delayDisplay("Loading a synthetic sample study")
        [node] = self.newLogic().loadSampleStudy("liver-ct", size="small")
        expected = Geometry.of(synth.make_case("liver-ct", seed=0, index=0, size="small").image)
        t.assertTrue(convert.volume_geometry(node).same_grid(expected))
        t.delayDisplay("Test passed")

    def modelSummary(self):
        t = self.test
        t.delayDisplay("The model summary shown under the method selector")
        logic = self.newLogic()
        for method in logic.methodNames():  # a shipped model's card, or the note that none ships
            t.assertIn(method, logic.modelSummary(method))
        t.delayDisplay("Test passed")

    def modelVersions(self):
        import os

        t = self.test
        t.delayDisplay("The model version selector reads the model library")
        logic = self.newLogic()
        saved = os.environ.get("LESIONDETECT_MODELS")
        with tempfile.TemporaryDirectory() as folder:
            os.environ["LESIONDETECT_MODELS"] = folder  # an empty library: never the user's own
            try:
                for method in logic.methodNames():
                    versions = logic.modelVersions(method)
                    if versions:  # the shipped model is version 1, and active
                        t.assertEqual([(v.version, v.shipped, v.active) for v in versions], [("1", True, True)])
                        logic.useModelVersion(method, "1")
                        t.assertIn("version 1", logic.modelSummary(method))
            finally:
                if saved is None:
                    os.environ.pop("LESIONDETECT_MODELS", None)
                else:
                    os.environ["LESIONDETECT_MODELS"] = saved
        t.delayDisplay("Test passed")
