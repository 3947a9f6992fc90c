"""The module's logic without Qt: run a detector out of process and keep its result in the scene.

`DetectionLogic` is the body of `LesionDetectLogic` in LesionDetect.py.  It starts
`lesiondetect infer` on a volume through an injected runner (`process.ChildProcess` in Slicer,
a fake in the tests), passes progress on, and only once the child has succeeded reads its
prediction folder and adds the overlays, so a cancel or a failure leaves the scene as it was.
It then owns the live display (threshold, score filter, opacity), the findings and their
review (accept / reject / previous / next, "N of M reviewed"; review.py), the boxes and
points the user adds, the export and the synthetic sample studies.  Everything it uses comes
in through the constructor (scene, segmentations and application logics, runner, and for
non-blocking runs something that calls `poll()` periodically: a QTimer in Slicer), so the
tests run it against slicer-core's MRML.  The review and correction methods are the mixin
logic_review.ReviewMixin, the model version / fine-tune / next-case ones logic_learn.LearnMixin.
Module-level imports are the standard library and the adapter's own modules only:
LesionDetect.py imports this before LesionDetectLib's dependencies are installed.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from . import learn, process
from .logic_learn import LearnMixin
from .logic_review import REVIEWER_SETTING, ReviewMixin  # noqa: F401  (REVIEWER_SETTING: importable from here)


class DictSettings:
    """The part of QSettings the logic uses (value / setValue), in memory: the default outside
    Slicer; LesionDetect.py passes qt.QSettings(), so the reviewer's name is kept across sessions."""

    def __init__(self, values: dict | None = None) -> None:
        self.values = dict(values or {})

    def value(self, key: str, default=None):
        return self.values.get(key, default)

    def setValue(self, key: str, value) -> None:
        self.values[key] = value


class RunningProcess(Protocol):
    """A started child process, as `process.ChildProcess` is."""

    cancelled: bool

    def poll(self) -> tuple[list[process.Progress], int | None]:
        """New progress reports since the last call, and the exit code (None while it runs)."""

    def wait(self, timeout: float | None = None, on_progress=None) -> int:
        """Block until it ends, passing each Progress to `on_progress`; the exit code."""

    def cancel(self) -> None:
        """Stop it and everything it started; `cancelled` becomes True."""

    def output_tail(self) -> str:
        """Its last lines of output other than progress (the error, when it fails)."""


class Runner(Protocol):
    def __call__(self, args: list[str], env: dict | None = None) -> RunningProcess:
        """Start `args` with environment `env`."""


# Given the poll function, start calling it periodically; returns the function that stops it.
PollScheduler = Callable[[Callable[[], object]], Callable[[], None]]


def default_library_parent() -> Path:
    """The folder holding the LesionDetectLib package (found without importing it)."""
    spec = importlib.util.find_spec("LesionDetectLib")
    if spec is None or spec.origin is None:
        raise RuntimeError("LesionDetectLib is not importable: put the folder that holds it on sys.path")
    return Path(spec.origin).resolve().parents[1]


def model_summary_text(method: str | None, model_path=None) -> str:
    """What the module shows under the method selector: the active model's card summary
    (method, version, training data, key metric; LesionDetectLib.models.card_summary) for the
    model folder `model_path` when set, else for the active version of `method` in the model
    library (`lesiondetect models use`; version 1 is the model shipped for it).  Reads only the
    card (standard library), so it works before torch is installed; a problem is the text."""
    from LesionDetectLib import library
    from LesionDetectLib.errors import LesionDetectError
    from LesionDetectLib.models import card_summary, read_card, shipped_model_dir

    if DetectionLogic.isSet(model_path):
        source = Path(model_path)
    elif method:
        try:
            version = library.active_version(method)
        except LesionDetectError as exc:
            return f"The model library cannot be read: {exc}"
        source = library.active_model_dir(method) if version != library.SHIPPED else shipped_model_dir(method)
        if source is None:
            return f"No model is shipped for {method}: train one and choose its folder below."
    else:
        return "Choose a method."
    try:
        _, card = read_card(source)
    except LesionDetectError as exc:
        return f"The model card cannot be read: {exc}"
    return "\n".join(card_summary(card))


def _in_scene(node):
    """`node` while it is still in a scene (the user may have deleted it), else None."""
    return node if node is not None and node.GetScene() is not None else None


class DetectionLogic(ReviewMixin, LearnMixin):
    """Runs the detector and manages its result in a scene; works without Qt and without the GUI.

    scene, segmentations_logic: the MRML scene and vtkSlicerSegmentationsModuleLogic to use.
    runner:         starts the child process (default `process.ChildProcess`).
    app_logic:      vtkSlicerApplicationLogic, for placing new boxes and points (optional).
    python:         the Python that runs `-m LesionDetectLib` (default: this one).
    library_parent: the folder holding LesionDetectLib, put on the child's PYTHONPATH.
    temp_dir:       where each run's work folder is made (default: the system's).
    poll_scheduler: calls `poll()` periodically during non-blocking runs; without one the
                    caller calls `poll()`.
    settings:       module settings with QSettings' value/setValue (the reviewer's name);
                    default: in memory (DictSettings).
    """

    def __init__(self, scene, segmentations_logic, *, runner: Runner | None = None, app_logic=None,
                 python: str | None = None, library_parent: str | Path | None = None,
                 temp_dir: str | Path | None = None, poll_scheduler: PollScheduler | None = None,
                 settings=None) -> None:
        self.scene = scene
        self.segmentations_logic = segmentations_logic
        self.runner = runner or process.ChildProcess
        self.app_logic = app_logic
        self.python = python or sys.executable
        self.library_parent = Path(library_parent) if library_parent is not None else default_library_parent()
        self.temp_dir = temp_dir
        self.runs = process.ChildRuns(self.runner, self.library_parent, poll_scheduler)
        self.result = None  # overlay.PredictionNodes of the last run
        self.prediction = None  # the model's own output, for the export's "corrected" flag
        self.userBoxes = []  # ROIs the user drew after the run
        self._display = None  # (threshold, minimum score, opacity) last applied
        self.settings = settings if settings is not None else DictSettings()
        self.currentFindingId = None  # the finding the review is on
        # fine-tune, model versions, next case (learn.py): same runner, Python and poll scheduler
        self.learning = learn.LearningLogic(runner=self.runner, python=self.python,
                                            library_parent=self.library_parent, temp_dir=temp_dir,
                                            poll_scheduler=poll_scheduler)

    @staticmethod
    def isSet(path) -> bool:
        """An optional path parameter holds something (an empty one reads back as '.')."""
        return path is not None and str(path) not in ("", ".")

    def methodNames(self) -> list[str]:
        return process.available_methods(self.library_parent / "LesionDetectLib")

    def ensureDependencies(self) -> None:
        """Install what LesionDetectLib needs; nothing to do outside Slicer (the environment has it)."""

    def modelSummary(self, method=None, model=None) -> str:
        """The active model's summary for the panel (`model_summary_text`)."""
        return model_summary_text(method, model)

    # --- running the detector -----------------------------------------------------------

    def isRunning(self) -> bool:
        return self.runs.isRunning()

    @property
    def lastRunCancelled(self) -> bool:
        return self.runs.lastRunCancelled

    def inferenceCommand(self, inputPath, outDir, method=None, model=None, threshold=None, device="auto") -> list:
        model = model if self.isSet(model) else None
        return process.infer_command(self.python, input_path=inputPath, out_dir=outDir, model=model,
                                     method=None if model else method, threshold=threshold, device=device)

    def startInference(self, inputVolume, method=None, model=None, threshold=None, device="auto", opacity=0.5,
                       onProgress=None, onFinished=None, waitForCompletion=False):
        """Run `lesiondetect infer` on `inputVolume` in a child process.

        Non-blocking by default: progress goes to onProgress(fraction, text), the end to
        onFinished(PredictionNodes or None, error text or None).  waitForCompletion=True
        blocks (tests, batch) and returns the PredictionNodes or raises RuntimeError.  The
        scene is only changed once the child has succeeded.
        """
        from LesionDetectLib.io import write_image

        from . import convert

        if self.isRunning():
            raise RuntimeError("A detection is already running.")
        if self.learning.isRunning():
            raise RuntimeError("A fine-tune or ranking is running: wait for it or cancel it first.")
        if inputVolume is None:
            raise ValueError("Select an input volume.")
        work_dir = Path(tempfile.mkdtemp(prefix="LesionDetect-", dir=self.temp_dir))
        try:
            input_path = write_image(convert.volume_to_image(inputVolume), work_dir / "input.nrrd")
            args = self.inferenceCommand(input_path, work_dir / "prediction", method=method, model=model,
                                         threshold=threshold, device=device)
        except Exception:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise

        def show(child):
            from LesionDetectLib.prediction import read_prediction

            return self.showPrediction(inputVolume, read_prediction(work_dir / "prediction"), opacity=opacity)

        return self.runs.start(args, work_dir, kind="detection", finish=show, blocking=waitForCompletion,
                               on_progress=onProgress, on_finished=onFinished,
                               failed=lambda tail, code: tail or f"The detector stopped with exit code {code}.")

    def poll(self) -> bool:
        """Pass new progress on; finish (show the result or report the error) once the child
        has ended.  True while it runs."""
        return self.runs.poll()

    def cancel(self) -> None:
        """Stop the running detection and every process it started; the scene stays as it was."""
        self.runs.cancel()

    # --- the result in the scene --------------------------------------------------------

    def showPrediction(self, inputVolume, prediction, threshold=None, opacity=0.5):
        """Add a Prediction's nodes to the scene (styled) and make it the current result.

        All or nothing: if adding fails part way, the nodes added so far are removed again.
        """
        from . import overlay

        before = {self.scene.GetNthNode(n).GetID() for n in range(self.scene.GetNumberOfNodes())}
        try:
            result = overlay.add_prediction(self.scene, self.segmentations_logic, inputVolume, prediction,
                                            threshold=threshold, opacity=opacity)
        except Exception:
            added = [self.scene.GetNthNode(n) for n in range(self.scene.GetNumberOfNodes())]
            for node in reversed([n for n in added if n.GetID() not in before]):
                if self.scene.IsNodePresent(node):
                    self.scene.RemoveNode(node)
            raise
        self.result, self.prediction, self.userBoxes = result, prediction, []
        self._display = (result.threshold, 0.0, opacity)
        self.currentFindingId = None
        return result

    def useResultInScene(self):
        """Make the result nodes already in the scene (e.g. an .mrb saved during a review and
        opened again) the current result, with the review states they carry; returns them, or
        None when the scene holds no result.  The model's own output is not in a scene, so an
        export from it counts as corrected."""
        from . import overlay

        result = overlay.nodes_in_scene(self.scene)
        if result is None:
            return None
        composite = self.scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
        opacity = composite.GetForegroundOpacity() if composite is not None else 0.5
        self.result, self.prediction, self.userBoxes = result, None, []
        self._display = (result.threshold, 0.0, opacity)
        self.currentFindingId = None
        return result

    def forgetResult(self) -> None:
        self.result, self.prediction, self.userBoxes, self._display = None, None, [], None
        self.currentFindingId = None

    def displayChanged(self, threshold: float, minimumScore: float, opacity: float) -> bool:
        return self._display != (threshold, minimumScore, opacity)

    def updateDisplay(self, threshold: float, minimumScore: float, opacity: float) -> None:
        """Apply threshold (re-threshold, no model run), score filter and overlay opacity."""
        from . import overlay

        if self.result is None:
            return
        previous = self._display or (None, None, None)
        if threshold != previous[0] and self.result.probability is not None:
            overlay.set_threshold(self.result, threshold, self.segmentations_logic)
        if minimumScore != previous[1]:
            overlay.filter_boxes(self.currentBoxes(), minimumScore)
        if opacity != previous[2]:
            overlay.set_opacity(self.scene, opacity)
        self._display = (threshold, minimumScore, opacity)

    def currentBoxes(self) -> list:
        """The result's boxes the user kept, and the ones they drew."""
        boxes = [*self.result.boxes, *self.userBoxes] if self.result is not None else []
        return [roi for roi in boxes if roi.GetScene() is not None]

    def findings(self, minimumScore: float = 0.0) -> list:
        from . import overlay

        if self.result is None:
            return []
        return overlay.findings(self.result, self.segmentations_logic, minimumScore)

    def defaultCaseId(self) -> str:
        name = self.result.input_volume.GetName() if self.result is not None else "case"
        return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._-") or "case"

    def exportResult(self, datasetFolder, caseId: str):
        """Write the corrected result into a dataset with its review: rejected findings left out
        and kept as hard negatives, every finding's decision recorded (export.export_from_scene)."""
        from . import export

        result = self.result
        if result is None:
            raise RuntimeError("Run a detection first.")
        return export.export_from_scene(
            datasetFolder, caseId, result.input_volume, self.segmentations_logic,
            segmentation=_in_scene(result.segmentation), segment_id=result.segment_id,
            box_nodes=self.currentBoxes() if (result.boxes or self.userBoxes) else (),
            points_node=_in_scene(result.points), prediction=self.prediction, threshold=result.threshold,
            review=True, classes_node=_in_scene(result.classes), probability_node=_in_scene(result.probability),
            reviewer=self.reviewerName())

    def loadSampleStudy(self, kind: str, size: str = "full"):
        """A synthetic study made by LesionDetectLib.synth (no network) as a volume node shown in
        the slice views; returns [node] like SampleData."""
        from LesionDetectLib import synth

        from . import convert, overlay

        self.ensureDependencies()
        case = synth.make_case(kind, seed=0, index=0, size=size)
        node = convert.add_image_volume(self.scene, case.image, f"LesionDetect {kind}")
        overlay.show_background(self.scene, node)
        return [node]
