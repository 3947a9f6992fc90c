"""The "Learn from corrections" part of the LesionDetect widget: the model version selector,
Fine-tune (and the offer of the fine-tuned version) and Next case.  A mixin of
LesionDetect.py's LesionDetectWidget (it uses the widget's `ui`, `logic` and parameter node);
the work itself is the Qt-free LesionDetectMRML.learn / logic_learn.
"""

from __future__ import annotations

import qt
import slicer
from slicer.i18n import tr as _

from LesionDetectMRML import learn


class LearnSectionMixin:
    """LesionDetectWidget's model version, fine-tune and next-case handlers."""

    def _updateModelVersions(self) -> None:
        """List the method's model versions in the selector, the active one current."""
        combo, method = self.ui.modelVersionComboBox, self._parameterNode.method if self._parameterNode else ""
        self._versionsOf = method
        combo.clear()
        try:
            versions = self.logic.modelVersions(method)
        except Exception as exc:  # a damaged library: say so where the versions would be
            combo.addItem(_("The model library cannot be read: {error}").format(error=exc), "")
            combo.enabled = False
            return
        for version in versions:
            combo.addItem(version.label, version.version)
            combo.setItemData(combo.count - 1, version.tooltip, qt.Qt.ToolTipRole)
            if version.active:
                combo.setCurrentIndex(combo.count - 1)
        combo.enabled = bool(versions) and not self.logic.isLearning()

    def _refreshModelVersions(self) -> None:
        """The library changed: list its versions again and show the active model's card."""
        self._versionsOf, self._summaryOf = None, None
        self._onParameterNodeModified()

    def onModelVersionChosen(self, index: int) -> None:
        version = self.ui.modelVersionComboBox.itemData(index)
        if version:
            with slicer.util.tryWithErrorDisplay(_("Failed to make this model version active."), waitCursor=True):
                self.logic.useModelVersion(self._parameterNode.method, version)
        self._refreshModelVersions()

    def _onLearnProgress(self, fraction: float, text: str) -> None:
        self.ui.learnProgressBar.value = int(round(fraction * self.ui.learnProgressBar.maximum))
        self.ui.learnStatusLabel.text = text

    def _learnFailed(self, error: str, cancelledText: str, title: str) -> None:
        self.ui.learnProgressBar.value = 0
        if self.logic.learning.lastRunCancelled:
            extra = error.removeprefix("Cancelled.").strip()  # e.g. a version registered in the last instant, removed
            self.ui.learnStatusLabel.text = f"{cancelledText} {extra}".strip()
        else:
            self.ui.learnStatusLabel.text = error
            slicer.util.errorDisplay(title, detailedText=error)

    def onFineTuneButton(self) -> None:
        if self.logic.learning.runningTask() == learn.FINE_TUNE:
            self.logic.cancelLearning()
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to start the fine-tune."), waitCursor=True):
            self.logic.ensureDependencies()
            self.ui.learnProgressBar.value = 0
            self.ui.learnStatusLabel.text = _("Starting the fine-tune...")
            self.logic.startFineTune(p.method, p.datasetFolder, device=p.device, onProgress=self._onLearnProgress,
                                     onFinished=self._onFineTuneFinished)
        self._onParameterNodeModified()

    def _onFineTuneFinished(self, result, error: str | None) -> None:
        if error is not None:
            self._learnFailed(error, _("Cancelled; no model was registered and the active model is unchanged."),
                              _("The fine-tune failed; the active model is unchanged."))
        else:
            self.ui.learnProgressBar.value = self.ui.learnProgressBar.maximum
            new = result.version
            self.ui.learnStatusLabel.text = _("Fine-tuned {method} version {parent} on the dataset: registered as "
                                              "version {version} ({label}).").format(
                method=result.method, parent=result.parent.version, version=new.version, label=new.label)
            self._refreshModelVersions()
            if slicer.util.confirmYesNoDisplay(
                    _("The fine-tuned model is {method} version {version}:\n{label}\n\nUse it for detection now? "
                      "(The model version selector can go back to any version.)").format(
                        method=result.method, version=new.version, label=new.label)):
                self.onUseFineTunedButton()
        self._onParameterNodeModified()

    def onUseFineTunedButton(self) -> None:
        with slicer.util.tryWithErrorDisplay(_("Failed to make the fine-tuned version active."), waitCursor=True):
            entry = self.logic.acceptFineTunedVersion()
            self.ui.learnStatusLabel.text = _("{method} version {version} is now the active model.").format(
                method=entry.method, version=entry.version)
        self._refreshModelVersions()

    def onNextCaseButton(self) -> None:
        if self.logic.learning.runningTask() == learn.RANK:
            self.logic.cancelLearning()
            return
        p = self._parameterNode
        with slicer.util.tryWithErrorDisplay(_("Failed to rank the dataset's cases."), waitCursor=True):
            self.logic.ensureDependencies()
            self.ui.learnProgressBar.value = 0
            self.ui.learnStatusLabel.text = _("Ranking the unreviewed cases...")
            self.logic.startNextCase(p.method, p.datasetFolder, device=p.device, onProgress=self._onLearnProgress,
                                     onFinished=self._onNextCaseFinished)
        self._onParameterNodeModified()

    def _onNextCaseFinished(self, result, error: str | None) -> None:
        if error is not None:
            self._learnFailed(error, _("Cancelled; no case was loaded."), _("Next case failed."))
        else:
            self.ui.learnProgressBar.value = self.ui.learnProgressBar.maximum
            self.ui.learnStatusLabel.text = result.message
            if result.case is not None:
                self._parameterNode.inputVolume = result.volume
                self._parameterNode.caseId = result.case.id
                slicer.util.setSliceViewerLayers(background=result.volume, fit=True)
        self._updateFindings()
        self._onParameterNodeModified()
