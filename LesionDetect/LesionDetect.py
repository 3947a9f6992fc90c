"""LesionDetect: run lesion detectors on the loaded CT/MRI, review and correct what they find,
export the corrected result as training annotations.

Module / Widget / Logic / Test in the form of Slicer's scripted-module template.  The widget
only wires the .ui to the logic.  The logic's body is the Qt-free LesionDetectMRML.logic
(child-process run of `lesiondetect infer`, result as MRML nodes, live display, export; tested
outside Slicer against slicer-core); the class here gives it Slicer's scene, the real runner and
a QTimer, and installs Python dependencies (LesionDetectMRML.dependencies) on first use, never
at import time.
"""

from __future__ import annotations

import sys
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

# The Qt-free body of the logic and the child-process runner (standard library only at import).
from LesionDetectMRML import learn, process  # noqa: E402
from LesionDetectMRML.logic import DetectionLogic  # noqa: E402

# The widget's learn-from-corrections and findings/review/export parts (Qt; LesionDetectGUI).
from LesionDetectGUI.learn_section import LearnSectionMixin  # noqa: E402
from LesionDetectGUI.review_section import ReviewSectionMixin  # noqa: E402

DEVICES = ["auto", "cpu", "cuda"]
SAMPLE_STUDIES = {"bone-ct": "bone CT", "ms-flair": "FLAIR MRI", "liver-ct": "liver CT"}  # LesionDetectLib.synth kinds
SAMPLE_CATEGORY = "LesionDetect"
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
score. Review each finding (Previous / Next centre the views on it; Accept or Reject it); correct
the segment with the Segment Editor, move, delete or add boxes and points, then Export them into
a training dataset (a new version is written, nothing is overwritten): rejected findings are
left out and kept as hard negatives, and every decision is recorded with the case.
Learn from corrections: Fine-tune the active model on that dataset (the result is a new model
version, used only when you say so), choose the model version Apply runs, and let Next case load
the unreviewed case the model is least sure about.
Detection, fine-tuning and ranking run in a separate process: Slicer stays responsive and Cancel
stops them.
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

class LesionDetectWidget(LearnSectionMixin, ReviewSectionMixin, ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._findings = []
        self._summaryOf = None  # (method, model folder) the model summary label shows
        self._versionsOf = None  # the method whose versions the model version selector lists

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
        self.ui.previousButton.connect("clicked(bool)", self.onPreviousFinding)
        self.ui.nextButton.connect("clicked(bool)", self.onNextFinding)
        self.ui.acceptButton.connect("clicked(bool)", self.onAcceptFinding)
        self.ui.rejectButton.connect("clicked(bool)", self.onRejectFinding)
        self.ui.reviewerLineEdit.text = self.logic.reviewerName()
        self.ui.reviewerLineEdit.connect("editingFinished()", self.onReviewerChanged)
        self.ui.addBoxButton.connect("clicked(bool)", self.onAddBox)
        self.ui.addPointButton.connect("clicked(bool)", self.onAddPoint)
        self.ui.exportButton.connect("clicked(bool)", self.onExportButton)
        self.ui.modelVersionComboBox.connect("activated(int)", self.onModelVersionChosen)
        self.ui.fineTuneButton.connect("clicked(bool)", self.onFineTuneButton)
        self.ui.nextCaseButton.connect("clicked(bool)", self.onNextCaseButton)
        self.ui.useFineTunedButton.connect("clicked(bool)", self.onUseFineTunedButton)

        self.initializeParameterNode()

    def cleanup(self) -> None:
        if self.logic is not None and self.logic.isRunning():
            self.logic.cancel()
        if self.logic is not None and self.logic.isLearning():
            self.logic.cancelLearning()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        if self.logic.result is None and not self.logic.isRunning() and self.logic.useResultInScene() is not None:
            self._updateFindings()  # a scene saved during a review and opened again: go on reviewing
            self._onParameterNodeModified()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self._onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        if self.logic.isRunning():
            self.logic.cancel()
        if self.logic.learning.runningTask() == learn.RANK:  # it would load its case into the new scene
            self.logic.cancelLearning()
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
        if self._versionsOf != p.method:
            self._updateModelVersions()
        if self._summaryOf != (p.method, str(p.modelPath)):  # the active model's card, under the method selector
            self._summaryOf = (p.method, str(p.modelPath))
            self.ui.modelSummaryLabel.text = self.logic.modelSummary(p.method, p.modelPath)
        running = self.logic.isRunning()
        learning = self.logic.learning.runningTask()
        self.ui.applyButton.enabled = running or (not learning and p.inputVolume is not None
                                                  and bool(p.method or self.logic.isSet(p.modelPath)))
        self.ui.applyButton.text = _("Cancel") if running else _("Apply")
        hasDataset = self.logic.isSet(p.datasetFolder)
        self.ui.learnDatasetPathLabel.text = str(p.datasetFolder) if hasDataset else _(
            "Choose the dataset folder in Export (the corrected cases are exported into it).")
        canLearn = not running and not learning and bool(p.method) and hasDataset
        self.ui.fineTuneButton.enabled = learning == learn.FINE_TUNE or canLearn
        self.ui.fineTuneButton.text = _("Cancel") if learning == learn.FINE_TUNE else _("Fine-tune")
        self.ui.nextCaseButton.enabled = learning == learn.RANK or canLearn
        self.ui.nextCaseButton.text = _("Cancel") if learning == learn.RANK else _("Next case")
        self.ui.modelVersionComboBox.enabled = not learning and self.ui.modelVersionComboBox.count > 0
        offer = self.logic.learning.offeredVersion
        self.ui.useFineTunedButton.enabled = offer is not None and offer.method == p.method and not learning
        self.ui.useFineTunedButton.text = (_("Use the fine-tuned version {version}").format(version=offer.version)
                                           if offer is not None else _("Use the fine-tuned version"))
        hasResult = self.logic.result is not None
        for button in (self.ui.addBoxButton, self.ui.addPointButton, self.ui.exportButton, self.ui.previousButton,
                       self.ui.nextButton, self.ui.acceptButton, self.ui.rejectButton):
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


#
# LesionDetectLogic
#

class LesionDetectLogic(DetectionLogic, ScriptedLoadableModuleLogic):
    """The module's logic: LesionDetectMRML.logic.DetectionLogic (the detector run, the result in the
    scene; tested outside Slicer) on Slicer's scene with a real child process polled by a QTimer,
    plus what only Slicer has: the parameter node, PythonSlicer and installing into its Python.

    DetectionLogic comes first: ScriptedLoadableModuleLogic.__init__ calls super().__init__()
    without arguments, which must reach object, not DetectionLogic."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        DetectionLogic.__init__(self, slicer.mrmlScene, slicer.modules.segmentations.logic(),
                                runner=process.ChildProcess, app_logic=slicer.app.applicationLogic(),
                                python=self.pythonExecutable(), library_parent=LIBRARY_PARENT,
                                temp_dir=slicer.app.temporaryPath, poll_scheduler=_pollWithTimer,
                                settings=qt.QSettings())

    def getParameterNode(self):
        return LesionDetectParameterNode(super().getParameterNode())

    @staticmethod
    def pythonExecutable() -> str:
        """Slicer's command-line Python (PythonSlicer), which has Slicer's packages."""
        return process.slicer_python(slicer.app.slicerHome)

    @staticmethod
    def requirementsPath() -> Path:
        return MODULE_DIR / "Resources" / "requirements.txt"

    def ensureDependencies(self) -> None:
        """Install what LesionDetectLib needs into Slicer's Python, on first use (see
        LesionDetectMRML/dependencies.py): torch/torchvision at the pins of requirements.txt
        through PyTorchUtils, the rest with Slicer's pip."""
        from LesionDetectMRML import dependencies

        dependencies.ensure_requirements(self.requirementsPath(), pip_install=self._pipInstall)

    @staticmethod
    def _pipInstall(requirements) -> None:
        """pip_ensure where Slicer has it (5.11+: asks, shows progress, skips in testing mode),
        else slicer.util.pip_install after asking."""
        import importlib

        for name in ("slicer.pydeps", "slicer.packaging"):
            try:
                pipEnsure = getattr(importlib.import_module(name), "pip_ensure", None)
            except ImportError:
                continue
            if pipEnsure is not None:
                pipEnsure(list(requirements), requester="LesionDetect")
                return
        names = [str(r) for r in requirements]
        if not slicer.app.testingEnabled() and not slicer.util.confirmOkCancelDisplay(
                _("LesionDetect needs these Python packages, which will be installed now:\n{packages}").format(
                    packages="\n".join(names))):
            raise RuntimeError(_("The required Python packages are not installed."))
        slicer.util.pip_install(names)

    def loadSampleStudy(self, kind: str, size: str = "full"):
        nodes = super().loadSampleStudy(kind, size=size)
        slicer.util.setSliceViewerLayers(background=nodes[0], fit=True)
        return nodes


def _pollWithTimer(poll):
    """Call `poll` every POLL_INTERVAL_MS from Qt's event loop; returns the function that stops it."""
    timer = qt.QTimer()
    timer.setInterval(POLL_INTERVAL_MS)
    timer.connect("timeout()", poll)
    timer.start()

    def stop():
        timer.stop()

    return stop


#
# LesionDetectTest
#

class LesionDetectTest(ScriptedLoadableModuleTest):
    """Self-contained tests on synthetic data (no network, no trained weights); their bodies are
    LesionDetectMRML/selftest.py (installed with the module), run on Slicer's scene and logic.

    Each test_* sets itself up, so they pass both under ctest (unittest runs every test_*)
    and from the Reload and Test button (runTest)."""

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        for test in (self.test_ResultShownAndLiveControls, self.test_ExportCorrected, self.test_ReviewAndExport,
                     self.test_CancelLeavesScene, self.test_SampleStudy, self.test_ModelSummary,
                     self.test_ModelVersions):
            self.setUp()
            test()

    def _scenarios(self):
        from LesionDetectMRML.selftest import ModuleSelfTest

        return ModuleSelfTest(self, LesionDetectLogic, processEvents=slicer.app.processEvents)

    def test_ResultShownAndLiveControls(self):
        self._scenarios().resultShownAndLiveControls()

    def test_ExportCorrected(self):
        self._scenarios().exportCorrected()

    def test_ReviewAndExport(self):
        self._scenarios().reviewAndExport()

    def test_CancelLeavesScene(self):
        self._scenarios().cancelLeavesScene()

    def test_SampleStudy(self):
        self._scenarios().sampleStudy()

    def test_ModelSummary(self):
        self._scenarios().modelSummary()

    def test_ModelVersions(self):
        self._scenarios().modelVersions()
