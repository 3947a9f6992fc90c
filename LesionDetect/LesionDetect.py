"""LesionDetect: run lesion detectors on the loaded CT/MRI, review and correct what they find,
export the corrected result as training annotations.

Module / Widget / Logic / Test in the form of Slicer's scripted-module template.  The widget
only wires the .ui to the logic; the logic runs `lesiondetect infer` (LesionDetectLib's
command) under Slicer's Python as a child process and turns its result into MRML nodes with
the Qt-free adapter package LesionDetectMRML (tested outside Slicer against slicer-core).
Python dependencies are checked and installed on first use, never at import time.
"""

from __future__ import annotations

import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import qt
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.i18n import tr as _
from slicer.i18n import translate
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

MODULE_DIR = Path(__file__).resolve().parent
# Source tree: LesionDetectLib sits beside this module's folder.  Installed extension: both
# are in qt-scripted-modules, which is this module's folder and already on sys.path.
LIBRARY_PARENT = MODULE_DIR.parent if (MODULE_DIR.parent / "LesionDetectLib").is_dir() else MODULE_DIR
for _path in (str(LIBRARY_PARENT), str(MODULE_DIR)):
    if _path not in sys.path:
        sys.path.append(_path)

DEVICES = ["auto", "cpu", "cuda"]
SAMPLE_STUDIES = {"bone-ct": "bone CT", "ms-flair": "FLAIR MRI", "liver-ct": "liver CT"}  # LesionDetectLib.synth kinds
SAMPLE_CATEGORY = "LesionDetect"
TORCH_REQUIREMENT = ">=2.1"
TORCHVISION_REQUIREMENT = ">=0.16"
POLL_INTERVAL_MS = 200


#
# LesionDetect
#

class LesionDetect(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = _("Lesion Detect")
        self.parent.categories = [translate("qSlicerAbstractCoreModule", "Segmentation")]
        self.parent.dependencies = []
        self.parent.contributors = ["LesionDetect contributors"]
        self.parent.helpText = _("""
Finds lesions in the selected CT or MRI with one of several published detectors and shows
what it finds: the lesion probability map over the image, the thresholded lesion segment,
detection boxes and lesion points with their scores, and image-level class probabilities.
Move the threshold to re-threshold the segment without rerunning the model; hide boxes below a
score. Correct the segment with the Segment Editor, move, delete or add boxes and points, then
Export them into a training dataset (a new version is written, nothing is overwritten).
Detection runs in a separate process: Slicer stays responsive and Cancel stops it.
""")
        self.parent.acknowledgementText = _("""
LesionDetect implements detectors described in five published papers (see the extension's
documentation). It builds on 3D Slicer, PyTorch, torchvision, SimpleITK and slicerio.
""")
        slicer.app.connect("startupCompleted()", registerSampleData)


def registerSampleData():
    """Synthetic studies made locally by the library: no download."""
    import SampleData

    for kind, title in SAMPLE_STUDIES.items():
        SampleData.SampleDataLogic.registerCustomSampleDataSource(
            category=SAMPLE_CATEGORY,
            sampleName=f"LesionDetect synthetic {title}",
            uris=[None],
            fileNames=[f"LesionDetect-{kind}.nrrd"],
            nodeNames=[f"LesionDetect {kind}"],
            thumbnailFileName=str(MODULE_DIR / "Resources" / "Icons" / "LesionDetect.png"),
            loadFileType=["VolumeFile"],
            customDownloader=lambda source, kind=kind: LesionDetectLogic().loadSampleStudy(kind),
        )


#
# LesionDetectParameterNode
#

@parameterNodeWrapper
class LesionDetectParameterNode:
    """
    inputVolume  - the image to search.
    method       - detector name (its shipped model is used unless modelPath is set).
    modelPath    - optional trained model folder.
    device       - auto (GPU when present), cpu or cuda.
    threshold    - lesion probability threshold (live: re-thresholds the segment).
    minimumScore - boxes and candidates below it are hidden.
    opacity      - opacity of the probability overlay.
    datasetFolder, caseId - where Export writes.
    """

    inputVolume: vtkMRMLScalarVolumeNode
    method: str = ""
    modelPath: Path
    device: Annotated[str, Choice(DEVICES)] = "auto"
    threshold: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    minimumScore: Annotated[float, WithinRange(0.0, 1.0)] = 0.0
    opacity: Annotated[float, WithinRange(0.0, 1.0)] = 0.5
    datasetFolder: Path
    caseId: str = ""


#
# LesionDetectWidget
#

class LesionDetectWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._findings = []

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/LesionDetect.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)

        self.logic = LesionDetectLogic()
        self.ui.methodComboBox.addItems(self.logic.methodNames())
        self.ui.findingsTable.horizontalHeader().setStretchLastSection(True)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)

        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.findingsTable.connect("cellClicked(int,int)", self.onFindingClicked)
        self.ui.addBoxButton.connect("clicked(bool)", self.onAddBox)
        self.ui.addPointButton.connect("clicked(bool)", self.onAddPoint)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.logic is not None and self.logic.isRunning():
            self.logic.cancel()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        if self.logic.isRunning():
            self.logic.cancel()
        self.logic.forgetResult()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()
        self._updateFindings()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            firstVolumeNode = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
            if firstVolumeNode:
                self._parameterNode.inputVolume = firstVolumeNode
        if not self._parameterNode.method and self.ui.methodComboBox.count:
            self._parameterNode.method = self.ui.methodComboBox.itemText(0)

    def setParameterNode(self, inputParameterNode) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)
            self._onParameterNodeModified()

    def _onParameterNodeModified(self, caller=None, event=None) -> None:
        p = self._parameterNode
        if p is None:
            return
        running = self.logic.isRunning()
        self.ui.applyButton.enabled = running or (p.inputVolume is not None and bool(p.method or self.logic.isSet(p.modelPath)))
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        hasResult = self.logic.result is not None
        for button in (self.ui.addBoxButton, self.ui.addPointButton, self.ui.exportButton):
            button.enabled = hasResult and not running
        if hasResult and self.logic.displayChanged(p.threshold, p.minimumScore, p.opacity):
            with slicer.util.tryWithErrorDisplay(_("Failed to update the display."), waitCursor=True):
                self.logic.updateDisplay(p.threshold, p.minimumScore, p.opacity)
                self._updateFindings()

    # --- detection ----------------------------------------------------------------------

    def onApplyButton(self) -> None:
        if self.logic.isRunning():
            self.logic.cancel()
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to start the detector."), waitCursor=True):
            self.logic.ensureDependencies()
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = _("Starting...")
            self.logic.startInference(p.inputVolume, method=p.method, model=p.modelPath, device=p.device,
                                      opacity=p.opacity, onProgress=self._onProgress, onFinished=self._onFinished)
        self._onParameterNodeModified()

    def _onProgress(self, fraction: float, text: str) -> None:
        self.ui.progressBar.value = int(round(fraction * self.ui.progressBar.maximum))
        self.ui.statusLabel.text = text

    def _onFinished(self, result, error: str | None) -> None:
        self.ui.progressBar.value = self.ui.progressBar.maximum if error is None else 0
        if error is None:
            self.ui.statusLabel.text = _("Done.")
            if result.threshold is not None:
                self._parameterNode.threshold = result.threshold
        elif self.logic.lastRunCancelled:
            self.ui.statusLabel.text = _("Cancelled; the scene is unchanged.")
        else:
            self.ui.statusLabel.text = error
            slicer.util.errorDisplay(_("The detector failed."), detailedText=error)
        self._updateFindings()
        self._onParameterNodeModified()

    # --- findings, corrections, export --------------------------------------------------

    def _updateFindings(self) -> None:
        table = self.ui.findingsTable
        minimumScore = self._parameterNode.minimumScore if self._parameterNode else 0.0
        self._findings = self.logic.findings(minimumScore) if self.logic.result is not None else []
        table.setRowCount(len(self._findings))
        for row, finding in enumerate(self._findings):
            score = "" if finding.score is None else f"{finding.score:.2f}"
            for column, text in enumerate((finding.kind, finding.name, score, finding.detail)):
                table.setItem(row, column, qt.QTableWidgetItem(text))

    def onFindingClicked(self, row: int, column: int) -> None:
        if 0 <= row < len(self._findings):
            self.logic.centreOn(self._findings[row])

    def onAddBox(self) -> None:
        self.logic.placeNewBox()

    def onAddPoint(self) -> None:
        self.logic.placeNewPoint()

    def onExportButton(self) -> None:
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Export failed."), waitCursor=True):
            if not self.logic.isSet(p.datasetFolder):
                raise ValueError(_("Choose a dataset folder first."))
            caseId = p.caseId or self.logic.defaultCaseId()
            result = self.logic.exportResult(p.datasetFolder, caseId)
            corrected = _("corrected") if result.entry["provenance"]["corrected"] else _("as detected")
            self.ui.exportStatusLabel.text = _("Exported case {case} ({state}) to {path}").format(
                case=result.case_id, state=corrected, path=result.dataset_json)


#
# LesionDetectLogic
#

class LesionDetectLogic(ScriptedLoadableModuleLogic):
    """Runs the detector and manages its result in the scene; works without the GUI."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.result = None  # LesionDetectMRML.overlay.PredictionNodes of the last run
        self.prediction = None  # the model's own output, for the export's "corrected" flag
        self.userBoxes = []  # ROIs the user drew after the run
        self.lastRunCancelled = False
        self._child = None
        self._job = None
        self._timer = None
        self._display = None  # (threshold, minimum score, opacity) last applied

    def getParameterNode(self):
        return LesionDetectParameterNode(super().getParameterNode())

    @staticmethod
    def isSet(path) -> bool:
        """An optional path parameter holds something (an empty one reads back as '.')."""
        return path is not None and str(path) not in ("", ".")

    @staticmethod
    def methodNames() -> list[str]:
        from LesionDetectMRML.process import available_methods

        return available_methods(LIBRARY_PARENT / "LesionDetectLib")

    # --- dependencies -------------------------------------------------------------------

    @staticmethod
    def requirementsPath() -> Path:
        return MODULE_DIR / "Resources" / "requirements.txt"

    def ensureDependencies(self) -> None:
        """Install what LesionDetectLib needs into Slicer's Python, once, on first use.

        torch/torchvision through the PyTorch extension's PyTorchUtils (it picks the build
        that matches the GPU); the rest from requirements.txt with slicer.packaging.pip_ensure
        (Slicer 5.12+: asks, shows progress, skips in testing mode) or slicer.util.pip_install.
        """
        self._ensureTorch()
        if hasattr(slicer, "packaging") and hasattr(slicer.packaging, "pip_ensure"):
            slicer.packaging.pip_ensure(slicer.packaging.load_requirements(str(self.requirementsPath())),
                                        requester="LesionDetect")
            return
        missing = [line for line in self._requirementLines() if not self._distributionInstalled(line)]
        if missing:
            if not slicer.app.testingEnabled() and not slicer.util.confirmOkCancelDisplay(
                    _("LesionDetect needs these Python packages, which will be installed now:\n{packages}").format(
                        packages="\n".join(missing))):
                raise RuntimeError(_("The required Python packages are not installed."))
            slicer.util.pip_install(missing)

    def _ensureTorch(self) -> None:
        try:
            import torch  # noqa: F401
            import torchvision  # noqa: F401
            return
        except ImportError:
            pass
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError(_("LesionDetect needs PyTorch: install the 'PyTorch' extension from the "
                                 "Extensions Manager, restart Slicer and try again.")) from None
        torchLogic = PyTorchUtils.PyTorchUtilsLogic()
        if not torchLogic.torchInstalled():
            torch = torchLogic.installTorch(askConfirmation=True, torchVersionRequirement=TORCH_REQUIREMENT,
                                            torchvisionVersionRequirement=TORCHVISION_REQUIREMENT)
            if torch is None:
                raise RuntimeError(_("PyTorch is required; it was not installed."))

    def _requirementLines(self) -> list[str]:
        lines = self.requirementsPath().read_text(encoding="utf-8").splitlines()
        return [ln.split("#", 1)[0].strip() for ln in lines if ln.split("#", 1)[0].strip()]

    @staticmethod
    def _distributionInstalled(requirement: str) -> bool:
        import importlib.metadata
        import re

        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0]
        try:
            importlib.metadata.version(name)
            return True
        except importlib.metadata.PackageNotFoundError:
            return False

    # --- running the detector -----------------------------------------------------------

    @staticmethod
    def pythonExecutable() -> str:
        """Slicer's command-line Python (PythonSlicer), which has Slicer's packages."""
        home = Path(slicer.app.slicerHome)
        for name in ("PythonSlicer.exe", "PythonSlicer"):
            for candidate in (home / "bin" / name, home / name):
                if candidate.is_file():
                    return str(candidate)
        return shutil.which("PythonSlicer") or sys.executable

    def isRunning(self) -> bool:
        return self._child is not None

    def inferenceCommand(self, inputPath, outDir, method=None, model=None, threshold=None, device="auto") -> list:
        from LesionDetectMRML import process

        model = model if self.isSet(model) else None
        return process.infer_command(self.pythonExecutable(), input_path=inputPath, out_dir=outDir, model=model,
                                     method=None if model else method, threshold=threshold, device=device)

    def startInference(self, inputVolume, method=None, model=None, threshold=None, device="auto", opacity=0.5,
                       onProgress=None, onFinished=None, waitForCompletion=False):
        """Run `lesiondetect infer` on `inputVolume` in a child process.

        Non-blocking by default: progress goes to onProgress(fraction, text), the end to
        onFinished(PredictionNodes or None, error text or None).  waitForCompletion=True
        blocks (tests, batch) and returns the PredictionNodes or raises.  The scene is only
        changed once the child has succeeded, so a cancel or a failure leaves it as it was.
        """
        from LesionDetectLib.io import write_image
        from LesionDetectMRML import convert, process

        if self.isRunning():
            raise RuntimeError(_("A detection is already running."))
        if inputVolume is None:
            raise ValueError(_("Select an input volume."))
        workDir = Path(tempfile.mkdtemp(prefix="LesionDetect-", dir=slicer.app.temporaryPath))
        try:
            inputPath = write_image(convert.volume_to_image(inputVolume), workDir / "input.nrrd")
            args = self.inferenceCommand(inputPath, workDir / "prediction", method=method, model=model,
                                         threshold=threshold, device=device)
            self._child = process.ChildProcess(args, env=process.library_env(LIBRARY_PARENT))
        except Exception:
            shutil.rmtree(workDir, ignore_errors=True)
            raise
        self.lastRunCancelled = False
        self._job = {"workDir": workDir, "inputVolume": inputVolume, "opacity": opacity,
                     "onProgress": onProgress, "onFinished": onFinished}
        if waitForCompletion:
            code = self._child.wait(on_progress=lambda p: onProgress and onProgress(p.fraction, p.text))
            result, error = self._finish(code)
            if error is not None:
                raise RuntimeError(error)
            return result
        self._timer = qt.QTimer()
        self._timer.setInterval(POLL_INTERVAL_MS)
        self._timer.connect("timeout()", self._poll)
        self._timer.start()
        return None

    def _poll(self) -> None:
        if self._child is None:
            return
        reports, code = self._child.poll()
        onProgress = self._job["onProgress"]
        for report in reports:
            if onProgress:
                onProgress(report.fraction, report.text)
        if code is not None:
            self._timer.stop()
            self._timer = None
            self._finish(code)

    def cancel(self) -> None:
        """Stop the running detection and every process it started; the scene stays as it was."""
        if self._child is not None:
            self._child.cancel()
            if self._timer is None:  # blocking mode finishes in wait()
                return
            self._timer.stop()
            self._timer = None
            self._finish(self._child.wait())

    def _finish(self, code: int):
        from LesionDetectLib.prediction import read_prediction

        child, job = self._child, self._job
        self._child, self._job = None, None
        result, error = None, None
        try:
            if child.cancelled:
                self.lastRunCancelled = True
                error = _("Cancelled.")
            elif code != 0:
                error = child.output_tail() or _("The detector stopped with exit code {code}.").format(code=code)
            else:
                prediction = read_prediction(job["workDir"] / "prediction")
                result = self.showPrediction(job["inputVolume"], prediction, opacity=job["opacity"])
        except Exception as exc:  # a result that cannot be read is reported like a failed run
            logging.exception("LesionDetect: reading the result failed")
            error = str(exc)
        finally:
            shutil.rmtree(job["workDir"], ignore_errors=True)
        if job["onFinished"]:
            job["onFinished"](result, error)
        return result, error

    # --- result in the scene ------------------------------------------------------------

    def showPrediction(self, inputVolume, prediction, threshold=None, opacity=0.5):
        """Add a Prediction's nodes to the scene (styled) and make it the current result."""
        from LesionDetectMRML import overlay

        self.result = overlay.add_prediction(slicer.mrmlScene, slicer.modules.segmentations.logic(), inputVolume,
                                             prediction, threshold=threshold, opacity=opacity)
        self.prediction = prediction
        self.userBoxes = []
        self._display = (self.result.threshold, 0.0, opacity)
        return self.result

    def forgetResult(self) -> None:
        self.result, self.prediction, self.userBoxes, self._display = None, None, [], None

    def displayChanged(self, threshold: float, minimumScore: float, opacity: float) -> bool:
        return self._display != (threshold, minimumScore, opacity)

    def updateDisplay(self, threshold: float, minimumScore: float, opacity: float) -> None:
        """Apply threshold (re-threshold, no model run), score filter and overlay opacity."""
        from LesionDetectMRML import overlay

        if self.result is None:
            return
        previous = self._display or (None, None, None)
        if threshold != previous[0] and self.result.probability is not None:
            overlay.set_threshold(self.result, threshold, slicer.modules.segmentations.logic())
        if minimumScore != previous[1]:
            overlay.filter_boxes(self.currentBoxes(), minimumScore)
        if opacity != previous[2]:
            overlay.set_opacity(slicer.mrmlScene, opacity)
        self._display = (threshold, minimumScore, opacity)

    def currentBoxes(self) -> list:
        """The result's boxes the user kept, and the ones they drew."""
        boxes = [*self.result.boxes, *self.userBoxes] if self.result is not None else []
        return [roi for roi in boxes if roi.GetScene() is not None]

    def findings(self, minimumScore: float = 0.0) -> list:
        from LesionDetectMRML import overlay

        if self.result is None:
            return []
        return overlay.findings(self.result, slicer.modules.segmentations.logic(), minimumScore)

    def centreOn(self, finding) -> None:
        from LesionDetectMRML import overlay

        overlay.centre_views(slicer.mrmlScene, finding.center_ras)

    def placeNewBox(self):
        """A new ROI the user draws (two clicks in a slice view); it is exported with score 1."""
        from LesionDetectMRML import convert

        roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", _("drawn lesion"))
        roi.SetAttribute(convert.ROLE_ATTRIBUTE, "box")
        roi.CreateDefaultDisplayNodes()
        self.userBoxes.append(roi)
        self._startPlacing(roi)
        return roi

    def placeNewPoint(self):
        from LesionDetectMRML import convert

        if self.result.points is None or self.result.points.GetScene() is None:
            self.result.points = convert.add_points(slicer.mrmlScene, [], name=_("Lesion points"))
        self._startPlacing(self.result.points)
        return self.result.points

    @staticmethod
    def _startPlacing(node) -> None:
        appLogic = slicer.app.applicationLogic()
        selectionNode = appLogic.GetSelectionNode()
        selectionNode.SetReferenceActivePlaceNodeClassName(node.GetClassName())
        selectionNode.SetActivePlaceNodeID(node.GetID())
        interactionNode = appLogic.GetInteractionNode()
        interactionNode.SetPlaceModePersistence(0)
        interactionNode.SetCurrentInteractionMode(interactionNode.Place)

    def defaultCaseId(self) -> str:
        import re

        name = self.result.input_volume.GetName() if self.result is not None else "case"
        return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-") or "case"

    def exportResult(self, datasetFolder, caseId: str):
        """Write the corrected result into a dataset (see LesionDetectMRML.export)."""
        from LesionDetectMRML import export

        if self.result is None:
            raise RuntimeError(_("Run a detection first."))
        return export.export_from_scene(
            datasetFolder, caseId, self.result.input_volume, slicer.modules.segmentations.logic(),
            segmentation=self.result.segmentation if self.result.segmentation and self.result.segmentation.GetScene() else None,
            segment_id=self.result.segment_id, box_nodes=self.currentBoxes() if (self.result.boxes or self.userBoxes) else (),
            points_node=self.result.points if self.result.points and self.result.points.GetScene() else None,
            prediction=self.prediction, threshold=self.result.threshold)

    def loadSampleStudy(self, kind: str, size: str = "full"):
        """A synthetic study made by LesionDetectLib.synth (no network) as a volume node;
        returns [node] like SampleData."""
        from LesionDetectLib import synth
        from LesionDetectMRML import convert

        self.ensureDependencies()
        case = synth.make_case(kind, seed=0, index=0, size=size)
        node = convert.add_image_volume(slicer.mrmlScene, case.image, f"LesionDetect {kind}")
        slicer.util.setSliceViewerLayers(background=node, fit=True)
        return [node]


#
# LesionDetectTest
#

class LesionDetectTest(ScriptedLoadableModuleTest):
    """Self-contained tests on synthetic data (no network, no trained weights).

    Each test_* sets itself up, so they pass both under ctest (unittest runs every test_*)
    and from the Reload and Test button (runTest)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_ResultShownAndLiveControls, self.test_ExportCorrected, self.test_CancelLeavesScene,
                     self.test_SampleStudy):
            self.setUp()
            test()

    def _loadStudy(self, kind="bone-ct"):
        from LesionDetectMRML import convert, samples

        logic = LesionDetectLogic()
        logic.ensureDependencies()
        study = samples.make_study(kind)
        volume = convert.add_image_volume(slicer.mrmlScene, study.image, kind)
        return logic, study, volume

    def test_ResultShownAndLiveControls(self):
        import numpy as np

        from LesionDetectMRML import convert

        self.delayDisplay("Showing a synthetic prediction")
        logic, study, volume = self._loadStudy("liver")
        result = logic.showPrediction(volume, study.prediction, opacity=0.4)
        mask = convert.segment_mask(result.segmentation, result.segment_id, volume, slicer.modules.segmentations.logic())
        self.assertTrue(np.array_equal(mask, study.prediction.mask))
        self.assertEqual(len(result.boxes), len(study.prediction.boxes))
        self.assertEqual(result.probability.GetDisplayNode().GetColorNodeID(), "vtkMRMLColorTableNodeFileInferno.txt")
        logic.updateDisplay(0.3, 0.6, 0.7)
        mask = convert.segment_mask(result.segmentation, result.segment_id, volume, slicer.modules.segmentations.logic())
        self.assertTrue(np.array_equal(mask, study.prediction.probability >= 0.3))
        visible = [bool(r.GetDisplayNode().GetVisibility()) for r in result.boxes]
        self.assertEqual(visible, [b.score >= 0.6 for b in study.prediction.boxes])
        self.assertTrue(len(logic.findings()) > 0)
        logic.centreOn(logic.findings()[0])
        self.delayDisplay("Test passed")

    def test_ExportCorrected(self):
        from LesionDetectLib.dataset import load_dataset, validate_dataset

        self.delayDisplay("Exporting a corrected result")
        logic, study, volume = self._loadStudy("bone-ct")
        result = logic.showPrediction(volume, study.prediction)
        slicer.mrmlScene.RemoveNode(result.boxes[0])
        with tempfile.TemporaryDirectory() as folder:
            first = logic.exportResult(folder, "case1")
            second = logic.exportResult(folder, "case1")
            self.assertEqual((first.case_id, second.case_id), ("case1", "case1_v2"))
            self.assertTrue(first.entry["provenance"]["corrected"])
            self.assertEqual(validate_dataset(folder), [])
            self.assertEqual(len(load_dataset(folder).cases), 2)
        self.delayDisplay("Test passed")

    def test_CancelLeavesScene(self):
        self.delayDisplay("Cancelling a running detection")
        logic, study, volume = self._loadStudy("flair")
        nodesBefore = slicer.mrmlScene.GetNumberOfNodes()
        script = ("import time\nfor i in range(600):\n    print(f'PROGRESS {i/600:.3f} working', flush=True)\n"
                  "    time.sleep(0.1)\n")
        # a stand-in for `lesiondetect infer` that reports progress and never ends on its own
        logic.inferenceCommand = lambda *args, **kwargs: [LesionDetectLogic.pythonExecutable(), "-c", script]
        progress, finished = [], []
        logic.startInference(volume, method="ms-flair-fcn", onProgress=lambda f, t: progress.append(f),
                             onFinished=lambda result, error: finished.append((result, error)))
        self.assertTrue(logic.isRunning())
        for _ in range(100):
            slicer.app.processEvents()
            if progress:
                break
            time.sleep(0.1)
        self.assertTrue(progress, "no progress reported")
        logic.cancel()
        self.assertFalse(logic.isRunning())
        self.assertTrue(logic.lastRunCancelled)
        self.assertEqual(finished[0][0], None)
        self.assertEqual(slicer.mrmlScene.GetNumberOfNodes(), nodesBefore)
        self.delayDisplay("Test passed")

    def test_SampleStudy(self):
        from LesionDetectLib import synth
        from LesionDetectLib.geometry import Geometry
        from LesionDetectMRML import convert

        self.delayDisplay("Loading a synthetic sample study")
        [node] = LesionDetectLogic().loadSampleStudy("liver-ct", size="small")
        expected = Geometry.of(synth.make_case("liver-ct", seed=0, index=0, size="small").image)
        self.assertTrue(convert.volume_geometry(node).same_grid(expected))
        self.delayDisplay("Test passed")
