"""The "learn from corrections" part of the module's logic, without Qt: model versions,
fine-tune and next case, delegated to learn.LearningLogic (`self.learning`, which shares the
logic's runner, Python and poll scheduler) and refused while a detection runs.  A mixin of
logic.DetectionLogic.  Module-level imports are the standard library and the adapter's own
modules only.
"""

from __future__ import annotations

import logging

from . import learn


class LearnMixin:
    """DetectionLogic's model version, fine-tune and next-case methods (see the module's docstring)."""

    def modelVersions(self, method) -> list:
        """The versions of `method`'s model in the library (learn.ModelVersion), oldest first."""
        return self.learning.modelVersions(method)

    def useModelVersion(self, method: str, version: str):
        """Make `version` the one Apply runs when no model folder is given (`lesiondetect models use`)."""
        return self.learning.useVersion(method, version)

    def isLearning(self) -> bool:
        """A fine-tune or a ranking runs."""
        return self.learning.isRunning()

    def cancelLearning(self) -> None:
        self.learning.cancel()

    def startFineTune(self, method, datasetFolder, device="auto", onProgress=None, onFinished=None,
                      waitForCompletion=False):
        """Fine-tune the active version of `method` on the dataset the module exports into, as a
        child process (learn.LearningLogic.startFineTune); the new version is offered
        (`learning.offeredVersion`), made active only by `acceptFineTunedVersion()`."""
        if self.isRunning():
            raise RuntimeError("A detection is running: wait for it or cancel it first.")
        return self.learning.startFineTune(method, datasetFolder, device=device, onProgress=onProgress,
                                           onFinished=onFinished, waitForCompletion=waitForCompletion)

    def acceptFineTunedVersion(self):
        return self.learning.acceptOffer()

    def declineFineTunedVersion(self) -> None:
        self.learning.declineOffer()

    def startNextCase(self, method, datasetFolder, device="auto", onProgress=None, onFinished=None,
                      waitForCompletion=False):
        """Load the most informative unreviewed case of the dataset: rank its unreviewed cases with
        the active model of `method` (`lesiondetect rank`, a child process; a ranking that still
        holds is reused), then load the best one not shown yet (`loadCase`).  The end goes to
        onFinished(learn.NextCase or None, error or None); blocking returns the NextCase."""
        if self.isRunning():
            raise RuntimeError("A detection is running: wait for it or cancel it first.")
        outcome = {}

        def ranked(ranking, error):
            result = None
            if error is None:
                try:
                    result = self._loadNextCase(ranking, datasetFolder)
                except Exception as exc:  # noqa: BLE001 - reported like a failed ranking
                    logging.exception("LesionDetect: loading the next case failed")
                    error = f"Loading the next case failed: {exc}"
            outcome["result"], outcome["error"] = result, error
            if onFinished:
                onFinished(result, error)

        self.learning.startRanking(method, datasetFolder, device=device, onProgress=onProgress,
                                   onFinished=ranked, waitForCompletion=waitForCompletion)
        if not waitForCompletion:
            return None
        if outcome.get("error") is not None:
            raise RuntimeError(outcome["error"])
        return outcome.get("result")

    def _loadNextCase(self, ranking, datasetFolder):
        case = self.learning.pickNextCase(ranking, datasetFolder)
        if case is None:
            shown = self.learning.casesShown()
            message = ("Every unreviewed case of the dataset has been shown in this session."
                       if shown else "Every case of the dataset is reviewed.")
            return learn.NextCase(None, None, message)
        volume = self.loadCase(case)
        return learn.NextCase(case, volume, f"Case {case.id}: rank {case.rank} of the ranking "
                                            f"({case.kind} {case.score}); {case.unreviewed_left - 1} more unreviewed.")

    def loadCase(self, case):
        """Load a dataset case's image (learn.RankedCase) into the scene as the background and start
        afresh on it: the previous result stays in the scene but is no longer the one reviewed or
        exported."""
        volume = learn.load_case_image(self.scene, case)
        self.forgetResult()
        self.learning.markShown(case.id)
        return volume
