"""One review session of the web page, without any UI: the page's buttons call these methods.

Everything goes through LesionDetectMRML's DetectionLogic (the body of the Slicer module's
logic): the child-process runner with progress and Cancel, the overlays, the live threshold,
the findings and their review states, the boxes and points the user adds and the export with
review=True.  The scene is trame-slicer's SlicerApp scene in the page (or a headless one in the
tests); the segment editor, when given, is trame-slicer's SegmentationEditor.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import cases
from .security import resolve_inside

DEFAULT_BOX_MM = (10.0, 10.0, 10.0)
UNDO_STEPS = 10
# the page's effect names -> trame-slicer's effect classes (trame_slicer.segmentation)
EFFECTS = {"Paint": "SegmentationEffectPaint", "Erase": "SegmentationEffectErase", "Draw": "SegmentationEffectDraw",
           "Scissors": "SegmentationEffectScissors", "Smoothing": "SegmentationEffectSmoothing",
           "Islands": "SegmentationEffectIslands", "Threshold": "SegmentationEffectThreshold",
           "Logical operators": "SegmentationEffectLogicalOperators"}
# whole-segment operations (apply_effect): the effect, the default of its number
OPERATIONS = {"keep largest island": ("Islands", 0), "remove small islands": ("Islands", 10),
              "median": ("Smoothing", 3.0), "opening": ("Smoothing", 3.0), "closing": ("Smoothing", 3.0),
              "gaussian": ("Smoothing", 1.0), "threshold": ("Threshold", 0.0),
              "invert": ("Logical operators", 0), "clear": ("Logical operators", 0)}


@dataclass
class DetectState:
    running: bool = False
    fraction: float = 0.0
    text: str = ""
    error: str | None = None
    done: int = 0  # runs finished (ok), for the page to notice


@dataclass
class ReviewSession:
    root: Path
    scene: object
    segmentations_logic: object
    app_logic: object
    model: str | None = None
    method: str | None = None
    runner: object = None
    python: str | None = None
    poll_scheduler: object = None
    segmentation_editor: object = None  # trame_slicer.core.SegmentationEditor
    reviewer: str = ""
    case_id: str | None = None
    volume: object = None
    detect: DetectState = field(default_factory=DetectState)
    shown: set = field(default_factory=set)

    def __post_init__(self):
        from LesionDetectMRML.logic import DetectionLogic

        self.root = Path(self.root).resolve()
        self.logic = DetectionLogic(self.scene, self.segmentations_logic, runner=self.runner,
                                    app_logic=self.app_logic, python=self.python,
                                    poll_scheduler=self.poll_scheduler)
        if self.reviewer:
            self.logic.setReviewerName(self.reviewer)
        self.threshold = None
        self.min_score = 0.0
        self.opacity = 0.5
        if self.segmentation_editor is not None and self.segmentation_editor.undo_stack is None:
            from undo_stack import UndoStack

            self.segmentation_editor.set_undo_stack(UndoStack(undo_limit=UNDO_STEPS))

    # --- cases ----------------------------------------------------------------------------

    def case_rows(self) -> list[dict]:
        return [r.as_dict() for r in cases.read_cases(self.root)]

    def open_case(self, case_id):
        """Load the case's image (kept inside the dataset root) as the views' background."""
        from LesionDetectLib.io import read_image
        from LesionDetectMRML import convert, overlay

        if self.logic.isRunning():
            raise RuntimeError("A detection is running: wait for it or cancel it first.")
        path = cases.case_image(self.root, case_id)
        image = read_image(path)
        self.volume = convert.add_image_volume(self.scene, image, case_id)
        overlay.show_background(self.scene, self.volume)
        self.logic.forgetResult()
        if self.undo_stack is not None:
            self.undo_stack.clear()  # the edits were on the previous case's segment
        self.case_id = case_id
        self.shown.add(case_id)
        self.detect = DetectState()
        return self.volume

    def open_path(self, relative: str):
        """Open an image the page names by its path inside the dataset (resolve_inside)."""
        from LesionDetectLib.io import read_image
        from LesionDetectMRML import convert, overlay

        path = resolve_inside(self.root, relative)
        if not path.is_file():
            raise FileNotFoundError(f"{relative}: no such file in the dataset")
        self.volume = convert.add_image_volume(self.scene, read_image(path), path.stem)
        overlay.show_background(self.scene, self.volume)
        self.logic.forgetResult()
        self.case_id = path.name.split(".")[0]
        return self.volume

    def has_ranking_model(self) -> bool:
        """Whether "Next case" can rank with the adapter: the method has an active model."""
        from LesionDetectMRML.learn import active_model_dir

        try:
            return bool(self.method) and active_model_dir(self.method) is not None
        except Exception:  # noqa: BLE001 - an unreadable model library: no ranking
            return False

    def start_next_case(self, on_update=None, wait: bool = False) -> tuple[str | None, str]:
        """Open the next case to review; (case id or None, how it was chosen).

        With a method that has a model: the adapter's ranking (DetectionLogic.startNextCase runs
        `lesiondetect rank` in a child process, with progress and Cancel, and loads the most
        informative unreviewed case; the id comes later through on_update, ("", "ranking") is
        returned).  Otherwise a ranking.json in the dataset folder, else the dataset's order
        (cases.next_unreviewed)."""
        if self.logic.isRunning() or self.logic.isLearning():
            raise RuntimeError("A detection or ranking is running: wait for it or cancel it first.")
        if not self.has_ranking_model():
            case_id, how = cases.next_unreviewed(self.root, self.case_id, shown=self.shown)
            if case_id is not None:
                self.open_case(case_id)
            return case_id, how
        for row in cases.read_cases(self.root):  # the ranked case's image is loaded by the adapter
            if not row.reviewed:
                resolve_inside(self.root, row.image)

        def progress(fraction, text):
            self.detect.fraction, self.detect.text = fraction, text
            if on_update:
                on_update(self.detect)

        def finished(next_case, error):
            self.detect.running, self.detect.error = False, error
            if next_case is not None and next_case.case is not None:
                self.volume, self.case_id = next_case.volume, next_case.case.id
                self.shown.add(next_case.case.id)
            self.detect.text = next_case.message if next_case is not None else ""
            if on_update:
                on_update(self.detect)

        self.detect = DetectState(running=True, text="ranking the cases", done=self.detect.done)
        self.logic.startNextCase(self.method, self.root, onProgress=progress, onFinished=finished)
        if wait:
            import time

            while self.logic.learning.poll():
                time.sleep(0.05)
        return "", "ranking"

    def next_case(self) -> tuple[str | None, str]:
        return self.start_next_case(wait=True)

    # --- detection ------------------------------------------------------------------------

    def start_detect(self, on_update=None, wait: bool = False):
        """Run the detector on the open case in a child process; progress and the end go to
        on_update(DetectState).  Non-blocking unless wait=True."""
        if self.volume is None:
            raise RuntimeError("Open a case first.")

        def progress(fraction, text):
            self.detect.fraction, self.detect.text = fraction, text
            if on_update:
                on_update(self.detect)

        def finished(result, error):
            self.detect.running = False
            self.detect.error = error
            if result is not None:
                self.detect.fraction, self.detect.text = 1.0, "done"
                self.detect.done += 1
                self.threshold = result.threshold
                self._attach_editor()
            if on_update:
                on_update(self.detect)

        self.detect = DetectState(running=True, text="starting", done=self.detect.done)
        self.logic.startInference(self.volume, method=self.method, model=self.model, opacity=self.opacity,
                                  onProgress=progress, onFinished=finished, waitForCompletion=False)
        if wait:
            import time

            while self.logic.poll():
                time.sleep(0.05)
        return self.detect

    def cancel_detect(self) -> None:
        """Cancel the running detection or ranking; the scene stays as it was."""
        if self.logic.isLearning():
            self.logic.cancelLearning()
            self.detect.running = False
        self.logic.cancel()

    def _attach_editor(self):
        """Hand the result's segmentation to trame-slicer's segment editor (lesion segment active)."""
        result = self.logic.result
        if self.segmentation_editor is not None and result is not None and result.segmentation is not None:
            self.segmentation_editor.set_active_segmentation(result.segmentation, result.input_volume)
            self.segmentation_editor.set_active_segment_id(result.segment_id)
        self.box_handles_on_current()

    def box_handles_on_current(self) -> None:
        """Show the boxes' interaction (resize) handles on the box under review and on the boxes
        the user added, not on every model box: less clutter, and on a server's software OpenGL
        the handles were about 40 % of a slice view's draw (Testing/benchmarks/review_web_render.py)."""
        from LesionDetectMRML.review import box_finding

        if self.logic.result is None:
            return
        current = self.logic.currentFindingId
        for roi in self.logic.currentBoxes():
            display = roi.GetDisplayNode()
            if display is not None:
                finding_id, by_model = box_finding(roi)
                display.SetHandlesInteractive(finding_id == current or not by_model)

    # --- display and review -----------------------------------------------------------------

    def set_display(self, threshold=None, min_score=None, opacity=None) -> None:
        if threshold is not None:
            self.threshold = float(threshold)
        if min_score is not None:
            self.min_score = float(min_score)
        if opacity is not None:
            self.opacity = float(opacity)
        if self.logic.result is None:
            return
        threshold = self.threshold if self.threshold is not None else self.logic.result.threshold
        rethreshold = threshold != self.logic.result.threshold
        self.logic.updateDisplay(threshold, self.min_score, self.opacity)
        if rethreshold and self.undo_stack is not None:
            self.undo_stack.clear()  # the model's mask at the new threshold replaced the edits

    def findings(self, found=None) -> list[dict]:
        """The findings table's rows (of `found`, the adapter's ReviewFindings, when given)."""
        rows = []
        for f in self.logic.reviewFindings() if found is None else found:
            rows.append({"id": f.id, "kind": f.kind, "state": f.state, "name": f.name, "detail": f.detail,
                         "score": None if f.score is None else round(float(f.score), 3),
                         "current": f.id == self.logic.currentFindingId})
        return rows

    def classes(self) -> list[dict]:
        from LesionDetectMRML import convert

        result = self.logic.result
        if result is None or result.classes is None or result.classes.GetScene() is None:
            return []
        rows = []
        for c in convert.table_to_classes(result.classes):
            where = c.scope if c.index is None else f"{c.scope} {c.index}"
            likeliest = max(c.probabilities, key=c.probabilities.get) if c.probabilities else ""
            rows.append({"label": f"{where}: {c.decision or likeliest}",
                         "probability": ", ".join(f"{k} {v:.2f}" for k, v in c.probabilities.items())})
        return rows

    def select_finding(self, finding_id) -> None:
        if not isinstance(finding_id, str):
            raise ValueError("a finding id must be a text")
        found = next((f for f in self.logic.reviewFindings() if f.id == finding_id), None)
        if found is None:
            raise KeyError(f"no finding {finding_id!r}")
        self.logic.selectFinding(finding_id)
        self.box_handles_on_current()
        self.logic.centreOn(found)

    def review(self, action: str):
        """accept / reject the current finding and move on, or go to the next / previous one."""
        actions = {"accept": self.logic.acceptCurrent, "reject": self.logic.rejectCurrent,
                   "next": self.logic.nextFinding, "previous": self.logic.previousFinding}
        if action not in actions:
            raise ValueError(f"unknown review action {action!r}")
        if self.logic.result is None:
            raise RuntimeError("Run a detection first.")
        finding = actions[action]()
        self.box_handles_on_current()
        if finding is not None:
            self.logic.centreOn(finding)
        return finding

    def progress_text(self, found=None) -> str:
        return self.logic.reviewProgress(found) if self.logic.result is not None else ""

    # --- editing ----------------------------------------------------------------------------

    def set_effect(self, name: str, brush_mm: float | None = None):
        """Activate one of trame-slicer's segment editor effects on the lesion segment (EFFECTS:
        "Paint", "Erase", "Draw", "Scissors", "Smoothing" brush, "Islands", "Threshold", "Logical
        operators"; "" or "None" for none).  `brush_mm` sets the brush effects' diameter."""
        if name in ("", None, "None"):
            if self.segmentation_editor is not None:
                self.segmentation_editor.deactivate_effect()
            return None
        if not isinstance(name, str) or name not in EFFECTS:
            raise ValueError(f"unknown effect {name!r}; the page offers {', '.join(EFFECTS)}")
        effect = self._editor_effect(EFFECTS[name])
        if brush_mm is not None and hasattr(effect, "set_brush_diameter"):
            from trame_slicer.segmentation import BrushDiameterMode

            effect.set_brush_diameter(float(brush_mm), BrushDiameterMode.Absolute)
        return effect

    def _editor_effect(self, effect_name: str):
        """The active effect of trame-slicer's type `effect_name`, on the result's lesion segment."""
        if self.segmentation_editor is None:
            raise RuntimeError("No segment editor in this session.")
        if self.logic.result is None or self.logic.result.segmentation is None:
            raise RuntimeError("Run a detection first: the editor works on its lesion segment.")
        import trame_slicer.segmentation as effects

        if self.segmentation_editor.active_segmentation_node is None:
            self._attach_editor()
        return self.segmentation_editor.set_active_effect_type(getattr(effects, effect_name))

    def apply_effect(self, operation: str, value=None, upper=None):
        """Apply one whole-segment operation of trame-slicer's effects to the lesion segment (one
        undo step; the review states follow: a changed model component reads as edited).

        "keep largest island", "remove small islands" (value: minimum voxels, default 10),
        "median", "opening", "closing" (value: kernel mm, default 3), "gaussian" (value: sigma mm,
        default 1), "threshold" (adds the input's voxels with value <= intensity <= upper),
        "invert", "clear" (logical operators on the segment)."""
        if not isinstance(operation, str) or operation not in OPERATIONS:
            raise ValueError(f"unknown operation {operation!r}; the page offers {', '.join(OPERATIONS)}")
        effect_name, default = OPERATIONS[operation]
        effect = self._editor_effect(EFFECTS[effect_name])
        number = float(default if value in (None, "") else value)
        if not (number == number and abs(number) < 1e6):
            raise ValueError(f"{operation}: {value!r} is not a usable number")
        segment_id = self.logic.result.segment_id
        if operation == "keep largest island":
            # trame-slicer 2.0.0's keep_largest_island left the segment as it was on the (oblique)
            # test volume; its remove_small_islands works: keep the islands as large as the largest
            from vtk.util.numpy_support import vtk_to_numpy

            islands = vtk_to_numpy(effect.get_island_labelmap().GetPointData().GetScalars())
            sizes = np.bincount(islands.astype(np.int64).ravel())[1:]
            if sizes.any():
                effect.remove_small_islands(int(sizes.max()))
        elif operation == "remove small islands":
            effect.remove_small_islands(max(1, int(number)))
        elif operation in ("median", "opening", "closing", "gaussian"):
            if number <= 0:
                raise ValueError(f"{operation}: the size must be > 0 mm")
            apply = {"median": effect.apply_median_smoothing, "opening": effect.apply_opening,
                     "closing": effect.apply_closing, "gaussian": effect.apply_gaussian_smoothing}[operation]
            apply(number, segment_id)
        elif operation == "threshold":
            if upper is None or float(upper) < number:
                raise ValueError("threshold: give the lower and the upper intensity (lower <= upper)")
            effect.set_threshold_min_max_values((number, float(upper)))
            effect.apply()
        else:
            getattr(effect, operation)()
        return effect

    @property
    def undo_stack(self):
        return self.segmentation_editor.undo_stack if self.segmentation_editor is not None else None

    def can_undo(self) -> bool:
        return self.logic.result is not None and self.undo_stack is not None and self.undo_stack.can_undo()

    def can_redo(self) -> bool:
        return self.logic.result is not None and self.undo_stack is not None and self.undo_stack.can_redo()

    def undo(self) -> None:
        """Undo the last segment edit (paint, erase, draw, scissors, an effect operation); the
        review decisions made since stay (review.keep_review_states)."""
        from LesionDetectMRML.review import keep_review_states

        if not self.can_undo():
            raise RuntimeError("Nothing to undo.")
        with keep_review_states(self.logic.result):
            self.undo_stack.undo()

    def redo(self) -> None:
        from LesionDetectMRML.review import keep_review_states

        if not self.can_redo():
            raise RuntimeError("Nothing to redo.")
        with keep_review_states(self.logic.result):
            self.undo_stack.redo()

    def view_centre_ras(self, view: str = "Red") -> tuple[float, float, float]:
        node = self.scene.GetNodeByID(f"vtkMRMLSliceNode{view}")
        m = node.GetSliceToRAS()
        return (m.GetElement(0, 3), m.GetElement(1, 3), m.GetElement(2, 3))

    def add_box(self, size_mm=DEFAULT_BOX_MM, center_ras=None):
        """A lesion box of `size_mm` (RAS-aligned) centred on `center_ras` (default: the axial
        view's centre); exported with score 1 like a box drawn in Slicer."""
        if self.logic.result is None:
            raise RuntimeError("Run a detection first.")
        size = [float(s) for s in size_mm]
        if len(size) != 3 or not all(0 < s < 1e4 for s in size):
            raise ValueError("a box size is three lengths in mm, each > 0")
        center = [float(c) for c in (center_ras or self.view_centre_ras())]
        return self.logic.addBox(center, size)

    def add_point(self, center_ras=None):
        """A lesion point at `center_ras` (default: the axial view's centre)."""
        if self.logic.result is None:
            raise RuntimeError("Run a detection first.")
        center = [float(c) for c in (center_ras or self.view_centre_ras())]
        return self.logic.addPoint(center)

    def place_box(self):
        """Start placing a box by clicks in a slice view (the adapter's placeNewBox)."""
        return self.logic.placeNewBox()

    def place_point(self):
        return self.logic.placeNewPoint()

    # --- export -----------------------------------------------------------------------------

    def export(self):
        """Export into the dataset (export.export_from_scene with review=True: atomic, never
        overwriting, rejected findings as hard negatives, the review record)."""
        if self.case_id is None:
            raise RuntimeError("Open a case first.")
        if self.logic.result is None:
            raise RuntimeError("Run a detection first.")
        return self.logic.exportResult(self.root, self.case_id)
