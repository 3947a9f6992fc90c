"""The review part of the module's logic, without Qt: the findings with their review states
(review.py keeps them on the MRML nodes), navigation (previous / next, accept / reject and move
on), "N of M reviewed", the reviewer's name (a module setting) and the boxes and points the user
adds.  A mixin of logic.DetectionLogic: it uses the logic's scene, segmentations and application
logics, settings, result and boxes.  Module-level imports are the standard library only.
"""

from __future__ import annotations

REVIEWER_SETTING = "LesionDetect/reviewer"


class ReviewMixin:
    """DetectionLogic's review and correction methods (see the module's docstring)."""

    def _minimumScore(self) -> float:
        return self._display[1] if self._display is not None else 0.0

    def reviewFindings(self, minimumScore: float | None = None) -> list:
        """The result's findings with their ids and review states (review.ReviewFinding), as the
        findings table lists them: points and boxes under the score filter are left out."""
        from . import review

        if self.result is None:
            return []
        return review.list_findings(self.result, self.segmentations_logic, boxes=self.currentBoxes(),
                                    min_score=self._minimumScore() if minimumScore is None else minimumScore)

    def setFindingState(self, findingId: str, state: str) -> None:
        from . import review

        if self.result is None:
            raise RuntimeError("Run a detection first.")
        review.set_state(self.result, findingId, state, boxes=self.currentBoxes())
        self.currentFindingId = findingId

    def findingState(self, findingId: str) -> str:
        from . import review

        return review.get_state(self.result, findingId, self.segmentations_logic, boxes=self.currentBoxes())

    def selectFinding(self, findingId: str | None) -> None:
        self.currentFindingId = findingId

    def nextFinding(self, step: int = 1, unreviewedOnly: bool = False):
        """Move the review to the next (step=1) or previous (step=-1) finding and return it (its
        `center_ras` is where the caller centres the views), or None when there is none."""
        from . import review

        finding = review.next_finding(self.reviewFindings(), self.currentFindingId, step=step,
                                      unreviewed_only=unreviewedOnly)
        self.currentFindingId = finding.id if finding is not None else self.currentFindingId
        return finding

    def previousFinding(self):
        return self.nextFinding(step=-1)

    def reviewCurrent(self, state: str):
        """Give the current finding `state` (accepted / rejected) and move on to the next one still
        unreviewed (None when every finding is reviewed).  Without a current finding nothing is
        decided: the review goes to the first unreviewed one, so the user sees what they decide on."""
        if self.currentFindingId is None:
            return self.nextFinding(unreviewedOnly=True)
        self.setFindingState(self.currentFindingId, state)
        return self.nextFinding(unreviewedOnly=True)

    def acceptCurrent(self):
        return self.reviewCurrent("accepted")

    def rejectCurrent(self):
        return self.reviewCurrent("rejected")

    def reviewProgress(self, findings=None) -> str:
        """"N of M reviewed" for the findings table (or for `findings`)."""
        from . import review

        return review.progress_text(self.reviewFindings() if findings is None else findings)

    def reviewerName(self) -> str:
        """The reviewer recorded in exports: the module setting, else the login name."""
        name = self.settings.value(REVIEWER_SETTING, "") or ""
        if name:
            return str(name)
        import getpass

        try:
            return getpass.getuser()
        except Exception:  # noqa: BLE001 - no login name (e.g. no USER and no passwd entry)
            return ""

    def setReviewerName(self, name: str) -> None:
        self.settings.setValue(REVIEWER_SETTING, (name or "").strip())

    def centreOn(self, finding) -> None:
        from . import overlay

        overlay.centre_views(self.scene, finding.center_ras)

    def placeNewBox(self):
        """A new ROI the user draws (two clicks in a slice view); it is exported with score 1."""
        from . import convert

        roi = self.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "drawn lesion")
        roi.SetAttribute(convert.ROLE_ATTRIBUTE, "box")
        roi.CreateDefaultDisplayNodes()
        self.userBoxes.append(roi)
        self._startPlacing(roi)
        return roi

    def placeNewPoint(self):
        """Start placing a lesion point in the result's fiducial list (made when it has none)."""
        from . import convert

        if self.result is None:
            raise RuntimeError("Run a detection first.")
        if self.result.points is None or self.result.points.GetScene() is None:
            self.result.points = convert.add_points(self.scene, [], name="Lesion points")
        self._startPlacing(self.result.points)
        return self.result.points

    def addBox(self, centerRas, sizeMm):
        """A lesion box with edge lengths `sizeMm` centred on `centerRas`, as if drawn (exported
        with score 1): for front ends that place boxes by typed sizes rather than by clicks in a
        view (the web page's "Add box").  Its edges run along the shown volume's voxel axes (as
        the slice views show it, so the box is not tilted on an oblique scan); along R, A, S when
        no result is shown."""
        import numpy as np

        from . import convert

        center, size = [float(c) for c in centerRas], [float(s) for s in sizeMm]
        if len(center) != 3 or len(size) != 3 or not all(0 < s < 1e4 for s in size):
            raise ValueError("a box is a centre (R, A, S) and three edge lengths in mm, each > 0")
        volume = self.result.input_volume if self.result is not None else None
        object_to_node = np.eye(4)
        if volume is not None and volume.GetScene() is not None:
            object_to_node[:3, :3] = convert.roi_axes_ras(convert.volume_geometry(volume).direction)
        object_to_node[:3, 3] = center
        roi = self.scene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "drawn lesion")
        roi.SetAttribute(convert.ROLE_ATTRIBUTE, "box")
        roi.SetROIType(roi.ROITypeBox)
        roi.SetSize(*size)  # size first: SetSize moves the centre, the matrix does not
        roi.SetAndObserveObjectToNodeMatrix(convert.vtk_matrix(object_to_node))
        roi.CreateDefaultDisplayNodes()
        roi.GetDisplayNode().SetFillVisibility(False)
        self.userBoxes.append(roi)
        return roi

    def addPoint(self, centerRas):
        """A lesion point at `centerRas` in the result's fiducial list (made when it has none)."""
        from . import convert

        if self.result is None:
            raise RuntimeError("Run a detection first.")
        center = [float(c) for c in centerRas]
        if len(center) != 3:
            raise ValueError("a point is three coordinates (R, A, S)")
        if self.result.points is None or self.result.points.GetScene() is None:
            self.result.points = convert.add_points(self.scene, [], name="Lesion points")
        self.result.points.AddControlPoint(*center, "added lesion")
        return self.result.points

    def _startPlacing(self, node) -> None:
        if self.app_logic is None:
            raise RuntimeError("placing needs the application logic (app_logic)")
        selection = self.app_logic.GetSelectionNode()
        selection.SetReferenceActivePlaceNodeClassName(node.GetClassName())
        selection.SetActivePlaceNodeID(node.GetID())
        interaction = self.app_logic.GetInteractionNode()
        interaction.SetPlaceModePersistence(0)
        interaction.SetCurrentInteractionMode(interaction.Place)
