"""Learn from corrections, without Qt: fine-tune the active model on the exported dataset, choose
the model version inference runs, and pick the next case worth reviewing.

- Fine-tune runs `lesiondetect --progress lines train --init <active model> --data DATASET
  --out <work folder> --register` as a child process (the runner of process.py: progress,
  Cancel kills the child and everything it started).  The library registers the new model
  as the next version of the method (LesionDetectLib.library, atomic writes); this logic only
  finds which version that is and *offers* it: nothing becomes active until `acceptOffer()`
  (the module asks first).  A cancel or a failure leaves the scene and the active version as
  they were, and a version the stopped run had registered anyway (a cancel in the last
  instant) is removed again, so "cancelled" means nothing changed.
- The version selector reads the library in process (LesionDetectLib.library needs only the
  standard library, so this works in Slicer before torch is installed): every version of a
  method with its key metric and lineage; `useVersion` is `lesiondetect models use`.
- Next case runs `lesiondetect rank --data DATASET --model <active model> --out ranking.json`
  and picks the best-ranked case that is still unreviewed (`pick_next_case`); the ranking is
  kept and reused while the model and the dataset's unreviewed cases are the same, because a
  case's score depends only on the model and that case.

Here: the child-process jobs (fine-tune, ranking) and LearningLogic; the model library as the
version selector reads it is versions.py, the choice of the next case nextcase.py (their names
are re-exported here).  Module-level imports are the standard library and the adapter's own
modules only (LesionDetect.py imports this before the library's dependencies are installed);
the library is imported in functions.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import process
# The version selector's model library (versions.py) and the next-case choice (nextcase.py),
# importable from here as before.
from .nextcase import NextCase, RankedCase, load_case_image, pick_next_case, ranking_covers  # noqa: F401
from .versions import ModelVersion, active_model_dir, active_version, model_versions, use_version  # noqa: F401

FINE_TUNE = "fine-tune"
RANK = "rank"
RANKING_FILE = "ranking.json"
_REGISTERED = re.compile(r"registered as (\S+) version (\d+)")  # `train --register`'s last line
_ERROR_LINE = re.compile(r"^lesiondetect(?: \w+)?: error: ")


# --- the child-process jobs -----------------------------------------------------------------------

def learn_command(python: str, action: str, args: list[str]) -> list[str]:
    """`python -m LesionDetectLib --progress lines <action> <args>`."""
    return [str(python), "-m", "LesionDetectLib", "--progress", "lines", action, *map(str, args)]


def fine_tune_command(python: str, *, init, data, out, device: str = "auto") -> list[str]:
    return learn_command(python, "train", ["--init", init, "--data", data, "--out", out, "--register",
                                           "--device", device])


def rank_command(python: str, *, data, model, out, device: str = "auto") -> list[str]:
    return learn_command(python, "rank", ["--data", data, "--model", model, "--out", out, "--device", device])


def failure_text(what: str, tail: str, code: int) -> str:
    """A clear message for a child that failed: its `lesiondetect: error:` line when it printed
    one, else its last line of output, else the exit code."""
    lines = [ln.strip() for ln in tail.splitlines() if ln.strip()]
    errors = [ln for ln in lines if _ERROR_LINE.match(ln)]
    if errors:
        reason = _ERROR_LINE.sub("", errors[-1])
    elif lines:
        reason = lines[-1]
    else:
        reason = f"it stopped with exit code {code}"
    return f"{what} failed: {reason}"


@dataclass
class FineTuneResult:
    """A finished fine-tune: the version the library registered (offered, not yet active)."""
    method: str
    parent: ModelVersion
    version: ModelVersion
    output: str = ""


@dataclass
class _RankingCache:
    dataset: str
    model_dir: str
    ranking: dict
    shown: set = field(default_factory=set)


class LearningLogic:
    """Fine-tune, model versions and the next case, with the runner and poll scheduler of
    DetectionLogic (see there).  One child process at a time: `isRunning()`, `cancel()`,
    `poll()` as for a detection."""

    def __init__(self, *, runner, python: str, library_parent, temp_dir=None, poll_scheduler=None) -> None:
        self.runner = runner
        self.python = python
        self.library_parent = Path(library_parent)
        self.temp_dir = temp_dir
        self.runs = process.ChildRuns(runner, self.library_parent, poll_scheduler)
        self.offeredVersion: ModelVersion | None = None  # a fine-tuned version waiting for the user's yes
        self._ranking: _RankingCache | None = None

    # --- versions ---------------------------------------------------------------------------

    @staticmethod
    def modelVersions(method: str) -> list[ModelVersion]:
        return model_versions(method) if method else []

    @staticmethod
    def activeVersion(method: str) -> str:
        return active_version(method)

    @staticmethod
    def useVersion(method: str, version: str) -> ModelVersion:
        return use_version(method, version)

    def acceptOffer(self) -> ModelVersion:
        """Make the offered fine-tuned version the active one."""
        offer = self.offeredVersion
        if offer is None:
            raise RuntimeError("No fine-tuned version is waiting to be used.")
        entry = use_version(offer.method, offer.version)
        self.offeredVersion = None
        return entry

    def declineOffer(self) -> None:
        """Keep the active version; the new one stays in the library (the version selector lists it)."""
        self.offeredVersion = None

    # --- running ----------------------------------------------------------------------------

    def isRunning(self) -> bool:
        return self.runs.isRunning()

    @property
    def lastRunCancelled(self) -> bool:
        return self.runs.lastRunCancelled

    def runningTask(self) -> str | None:
        """FINE_TUNE or RANK while one runs, else None."""
        return self.runs.task.kind if self.runs.task is not None else None

    def _start(self, kind: str, what: str, args: list[str], work_dir: Path, waitForCompletion: bool, **task):
        return self.runs.start(args, work_dir, kind=kind, blocking=waitForCompletion,
                               failed=lambda tail, code: failure_text(what, tail, code),
                               broken=lambda exc: f"{what} failed: {exc}", **task)

    def poll(self) -> bool:
        """Pass new progress on; finish once the child has ended.  True while it runs."""
        return self.runs.poll()

    def cancel(self) -> None:
        """Stop the running fine-tune or ranking and every process it started."""
        self.runs.cancel()

    def _work_dir(self, kind: str) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"LesionDetect-{kind}-", dir=self.temp_dir))

    @staticmethod
    def _check_dataset(dataset) -> Path:
        if dataset is None or str(dataset) in ("", "."):
            raise ValueError("Choose the dataset folder (the folder Export writes cases into) first.")
        folder = Path(dataset)
        if not (folder / "dataset.json").is_file():
            raise ValueError(f"{folder} holds no dataset.json: export corrected cases into it first.")
        return folder

    @staticmethod
    def _model_of(method: str) -> Path:
        if not method:
            raise ValueError("Choose a method first.")
        model = active_model_dir(method)
        if model is None:
            raise ValueError(f"{method} has no model to start from: no model is shipped for it and none is "
                             "in the model library.")
        return model

    # --- fine-tune --------------------------------------------------------------------------

    def fineTuneCommand(self, method: str, dataset, out, device: str = "auto") -> list[str]:
        return fine_tune_command(self.python, init=self._model_of(method), data=dataset, out=out, device=device)

    def startFineTune(self, method: str, dataset, device: str = "auto", onProgress=None, onFinished=None,
                      waitForCompletion: bool = False):
        """Fine-tune the active version of `method` on `dataset` and register the result as a new
        version, in a child process.  Non-blocking by default (progress to onProgress(fraction,
        text), the end to onFinished(FineTuneResult or None, error or None)); blocking returns the
        FineTuneResult or raises RuntimeError.  The new version is offered (`offeredVersion`),
        never made active here."""
        if self.isRunning():
            raise RuntimeError("A fine-tune or ranking is already running.")
        folder = self._check_dataset(dataset)
        init = self._model_of(method)
        parent = next((v for v in model_versions(method) if v.path == init), None) or \
            ModelVersion(method=method, version=active_version(method), model_id="", path=init)
        before = {v.version for v in model_versions(method)}
        self.offeredVersion = None
        work_dir = self._work_dir("finetune")
        try:
            args = fine_tune_command(self.python, init=init, data=folder, out=work_dir / "model", device=device)
        except Exception:
            shutil.rmtree(work_dir, ignore_errors=True)
            raise

        def finish(child) -> FineTuneResult:
            new = self._registered_by(method, parent, before, child.output_tail())
            if new is None:
                raise RuntimeError("the child process ended without registering a model")
            self.offeredVersion = new
            return FineTuneResult(method=method, parent=parent, version=new, output=child.output_tail())

        def undo() -> str | None:
            return self._remove_registered(method, parent, before)

        return self._start(FINE_TUNE, "Fine-tuning", args, work_dir, waitForCompletion, finish=finish, undo=undo,
                           on_progress=onProgress, on_finished=onFinished)

    @staticmethod
    def _registered_by(method: str, parent: ModelVersion, before: set, tail: str) -> ModelVersion | None:
        """The version the fine-tune registered: the new version of `method` whose lineage names
        `parent` (else the only new one), else the one its "registered as" line names."""
        new = [v for v in model_versions(method) if v.version not in before]
        named = [v for v in new if parent.model_id and v.parent_id == parent.model_id]
        if len(named) == 1 or len(new) == 1:
            return (named or new)[0]
        for line in reversed(tail.splitlines()):
            match = _REGISTERED.search(line)
            if match and match.group(1) == method:
                return next((v for v in new if v.version == match.group(2)), None)
        return None

    @staticmethod
    def _remove_registered(method: str, parent: ModelVersion, before: set) -> str | None:
        """A stopped fine-tune registers nothing: remove a version it registered in its last
        instant (new since the start and fine-tuned from `parent`); never the active one."""
        from LesionDetectLib import library

        try:
            stray = [v for v in model_versions(method) if v.version not in before and not v.active
                     and (not parent.model_id or v.parent_id == parent.model_id)]
            for v in stray:
                library.remove(method, v.version)
        except Exception as exc:  # noqa: BLE001 - reported, not raised: the run is over either way
            logging.exception("LesionDetect: removing what a stopped fine-tune registered failed")
            return f"It may have registered a version before it stopped; check `lesiondetect models list` ({exc})."
        if stray:
            return f"Version {', '.join(v.version for v in stray)} it had registered was removed again."
        return None

    # --- next case --------------------------------------------------------------------------

    def rankCommand(self, method: str, dataset, out, device: str = "auto") -> list[str]:
        return rank_command(self.python, data=dataset, model=self._model_of(method), out=out, device=device)

    def cachedRanking(self, method: str, dataset) -> dict | None:
        """The last ranking when it still holds (same dataset, same active model, every unreviewed
        case ranked), else None."""
        cache = self._ranking
        if cache is None or not method:
            return None
        model = active_model_dir(method)
        if model is None or cache.dataset != str(Path(dataset)) or cache.model_dir != str(model):
            return None
        return cache.ranking if ranking_covers(cache.ranking, dataset, model) else None

    def casesShown(self) -> set:
        return set(self._ranking.shown) if self._ranking is not None else set()

    def markShown(self, case_id: str) -> None:
        if self._ranking is not None:
            self._ranking.shown.add(case_id)

    def startRanking(self, method: str, dataset, device: str = "auto", onProgress=None, onFinished=None,
                     waitForCompletion: bool = False):
        """Rank the dataset's unreviewed cases with the active model of `method` (`lesiondetect
        rank`) in a child process; the result (to onFinished, or returned when blocking) is the
        ranking as a dict.  A ranking that still holds is reused without a child process: then
        onFinished is called at once and True is returned."""
        if self.isRunning():
            raise RuntimeError("A fine-tune or ranking is already running.")
        folder = self._check_dataset(dataset)
        model = self._model_of(method)
        cached = self.cachedRanking(method, folder)
        if cached is not None:
            if onFinished:
                onFinished(cached, None)
            return cached if waitForCompletion else True
        work_dir = self._work_dir("rank")
        out = work_dir / RANKING_FILE
        args = rank_command(self.python, data=folder, model=model, out=out, device=device)

        def finish(child) -> dict:
            ranking = json.loads(out.read_text(encoding="utf-8"))
            if not isinstance(ranking, dict) or not isinstance(ranking.get("cases"), list):
                raise RuntimeError(f"{out.name} is not a ranking")
            shown = self._ranking.shown if self._ranking is not None and self._ranking.dataset == str(folder) else set()
            self._ranking = _RankingCache(str(folder), str(model), ranking, shown)
            return ranking

        return self._start(RANK, "Ranking the cases", args, work_dir, waitForCompletion, finish=finish,
                           on_progress=onProgress, on_finished=onFinished)

    def pickNextCase(self, ranking: dict, dataset) -> RankedCase | None:
        """The top-ranked case still unreviewed and not shown yet this session."""
        return pick_next_case(ranking, dataset, skip=self.casesShown())
