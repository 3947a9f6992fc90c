"""The findings, review and export part of the LesionDetect widget: the findings table,
Previous / Next / Accept / Reject, the reviewer, adding boxes and points, and Export.  A mixin
of LesionDetect.py's LesionDetectWidget (it uses the widget's `ui`, `logic` and parameter
node); the work itself is the Qt-free LesionDetectMRML.logic_review / export.
"""

from __future__ import annotations

import qt
import slicer
from slicer.i18n import tr as _


class ReviewSectionMixin:
    """LesionDetectWidget's findings table, review, correction and export handlers."""

    def _updateFindings(self) -> None:
        table = self.ui.findingsTable
        minimumScore = self._parameterNode.minimumScore if self._parameterNode else 0.0
        self._findings = self.logic.reviewFindings(minimumScore) if self.logic.result is not None else []
        table.setRowCount(len(self._findings))
        for row, finding in enumerate(self._findings):
            score = "" if finding.score is None else f"{finding.score:.2f}"
            for column, text in enumerate((finding.kind, finding.name, score, finding.detail, finding.state)):
                table.setItem(row, column, qt.QTableWidgetItem(text))
            if finding.id == self.logic.currentFindingId:
                table.selectRow(row)
        self.ui.reviewProgressLabel.text = self.logic.reviewProgress(self._findings) if self._findings else ""

    def onFindingClicked(self, row: int, column: int) -> None:
        if 0 <= row < len(self._findings):
            self.logic.selectFinding(self._findings[row].id)
            self.logic.centreOn(self._findings[row])

    def _goTo(self, finding) -> None:
        """Show the review's new current finding: the table updated, the views centred on it."""
        self._updateFindings()
        if finding is not None:
            self.logic.centreOn(finding)

    def onPreviousFinding(self) -> None:
        self._goTo(self.logic.previousFinding())

    def onNextFinding(self) -> None:
        self._goTo(self.logic.nextFinding())

    def onAcceptFinding(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to accept the finding."), waitCursor=True):
            self._goTo(self.logic.acceptCurrent())

    def onRejectFinding(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to reject the finding."), waitCursor=True):
            self._goTo(self.logic.rejectCurrent())

    def onReviewerChanged(self) -> None:
        self.logic.setReviewerName(self.ui.reviewerLineEdit.text)

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
