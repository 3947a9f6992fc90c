"""Learn from corrections in the module (LesionDetectMRML/learn.py through DetectionLogic) on a real
MRML scene (slicer-core) with a fake child-process runner: fine-tune of the active model offered
and made active only on confirm; cancel and failure leaving the scene, the library and the
active version as they were; the version selector reading a temporary model library; Next case
loading the best-ranked unreviewed case of a rank JSON.

The library is always a folder in tmp_path ($LESIONDETECT_MODELS), never the real home; the
shipped models of Resources/models are only read.  The fake `train --register` child registers
its model through the real LesionDetectLib.library.register, as the real child does (its
weights are the parent's bytes plus a marker: the library checks their sha256, never loads them).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from module_support import PYTHON, ROOT, FakeScheduler, ScriptedChild, ScriptedRunner, mrml  # noqa: F401  (mrml: fixture)

from LesionDetectMRML import learn  # noqa: E402
from LesionDetectMRML.logic import DetectionLogic  # noqa: E402
from LesionDetectMRML.process import Progress  # noqa: E402

METHOD = "ms-flair-fcn"
STEPS = [[Progress(0.1, "epoch 1/2")], [], [Progress(0.6, "epoch 2/2"), Progress(0.9, "validation")]]
ERROR_LINE = "lesiondetect: error: data/dataset.json: is a CT dataset; the model is a ms-flair-fcn (MR) model"


# --- a fake runner for `train --init ... --register` and `rank` ------------------------------

def fine_tuned_copy(init: Path, out: Path, marker: str) -> Path:
    """A model folder fine-tuned from `init` as `train --init` writes it: the parent's card with a
    new id, the lineage naming the parent, new weights and their sha256."""
    from LesionDetectLib.models import read_card, sha256_of

    _, parent = read_card(init)
    out.mkdir(parents=True)
    card = json.loads((init / "model.json").read_text())
    weights = out / card["weights_file"]
    weights.write_bytes((init / card["weights_file"]).read_bytes() + marker.encode())
    card.update(model_id=f"{METHOD}-ft-{marker}", version=f"{parent.version}-ft", weights_sha256=sha256_of(weights),
                metrics={"finetune_val": {"lesion_f1": 0.5}})
    card["training"] = {**card["training"], "lineage": {"parent_model_id": parent.model_id,
                                                        "parent_weights_sha256": parent.weights_sha256}}
    (out / "model.json").write_text(json.dumps(card))
    return out


class FakeChild(ScriptedChild):
    """Stands in for process.ChildProcess running `lesiondetect train|rank`.  outcome: "succeed",
    "fail" (exit 2 with an error line), "hang" (runs until cancelled) or "register-then-hang"
    (registers its model, then runs until cancelled)."""

    hangs = ("hang", "register-then-hang")

    def __init__(self, args, env, outcome, steps, ranking=()):
        super().__init__(args, env, outcome, steps)
        self.ranking = list(ranking)
        self.action = args[args.index("lines") + 1]

    def _register(self):
        from LesionDetectLib import library

        model = fine_tuned_copy(Path(self.arg("--init")), Path(self.arg("--out")), marker=str(len(self.tail) + id(self)))
        entry = library.register(model)
        self.tail += [f"model written to {model}",
                      f"registered as {entry.method} version {entry.version} in {entry.path.parent.parent}"]

    def _rank(self):
        from LesionDetectLib.models import read_card

        model = self.arg("--model")
        rows = [{"rank": n, **row} for n, row in enumerate(self.ranking, start=1)]
        doc = {"dataset": self.arg("--data"), "method": METHOD, "model": model,
               "model_id": read_card(model)[1].model_id, "cases": rows}
        Path(self.arg("--out")).write_text(json.dumps(doc))

    def on_poll(self) -> None:
        if self.outcome == "register-then-hang" and not self.tail:
            self._register()

    def end(self) -> int:
        if self.outcome == "fail":
            self.tail += ["loading the model", ERROR_LINE]
            return 2
        self._register() if self.action == "train" else self._rank()
        return 0


class FakeRunner(ScriptedRunner):
    child_class = FakeChild

    def __init__(self, outcome="succeed", steps=STEPS, ranking=()):
        super().__init__(outcome, steps)
        self.ranking = list(ranking)  # a test may change it between runs

    def child_options(self) -> dict:
        return {"ranking": self.ranking}


# --- fixtures -----------------------------------------------------------------------------

@pytest.fixture
def lib(tmp_path, monkeypatch):
    """An empty model library in tmp_path; version 1 is the real shipped model (read only)."""
    from LesionDetectLib import library
    from LesionDetectLib.models import shipped_model_dir

    if shipped_model_dir(METHOD) is None:
        pytest.skip(f"no model is shipped for {METHOD}")
    monkeypatch.setenv(library.ENV, str(tmp_path / "library"))
    assert library.library_dir() == tmp_path / "library"
    return tmp_path / "library"


@pytest.fixture
def dataset(tmp_path):
    """An MR dataset of tiny images: a reviewed, b (unreviewed, its reviewed export b_v2), c, d."""
    import numpy as np
    import SimpleITK as sitk

    from LesionDetectLib.dataset import write_dataset_json
    from LesionDetectLib.io import write_image

    root = tmp_path / "dataset"
    cases = []
    for n, case_id in enumerate(["a", "b", "b_v2", "c", "d"]):
        image = sitk.GetImageFromArray(np.full((4, 5, 6), n, dtype=np.int16))
        image.SetSpacing((1.0, 1.5, 2.0))
        write_image(image, root / "images" / f"{case_id}.nrrd")
        entry = {"id": case_id, "patient": case_id[0], "image": f"images/{case_id}.nrrd"}
        if case_id in ("a", "b_v2"):
            entry["review"] = {"reviewer": "tester", "findings": []}
        cases.append(entry)
    write_dataset_json(root, "flair", "MR", cases)
    return root


def _logic(mrml, tmp_path, runner, **kwargs) -> DetectionLogic:
    return DetectionLogic(mrml.scene, mrml.logic("Segmentations"), runner=runner, app_logic=mrml.app_logic,
                          python=PYTHON, library_parent=ROOT, temp_dir=tmp_path, **kwargs)


def _node_ids(scene) -> list[str]:
    return [scene.GetNthNode(n).GetID() for n in range(scene.GetNumberOfNodes())]


def _library_files(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} \
        if folder.exists() else {}


def _work_dirs(tmp_path) -> list[Path]:
    return sorted(tmp_path.glob("LesionDetect-*"))


# --- the version selector -----------------------------------------------------------------------

def test_version_selector_lists_the_library_versions_and_sets_the_active_one(mrml, lib, tmp_path):
    from LesionDetectLib import library
    from LesionDetectLib.models import key_metric, read_card, shipped_model_dir

    logic = _logic(mrml, tmp_path, FakeRunner())
    shipped = shipped_model_dir(METHOD)
    [one] = logic.modelVersions(METHOD)
    assert (one.version, one.shipped, one.active, one.path) == ("1", True, True, shipped)
    name, where, value = key_metric(read_card(shipped)[1])
    assert one.label == f"v1 - shipped - {name} {value:.3f} ({where})"
    two = library.register(fine_tuned_copy(shipped, tmp_path / "m2", "two"))
    three = library.register(fine_tuned_copy(two.path, tmp_path / "m3", "three"))
    versions = logic.modelVersions(METHOD)
    assert [(v.version, v.active, v.parent_version) for v in versions] == [("1", True, None), ("2", False, "1"),
                                                                            ("3", False, "2")]
    assert versions[2].label == "v3 - fine-tuned from v2 - lesion F1 0.500 (finetune_val)"
    assert three.model_id in versions[2].tooltip
    summary = logic.modelSummary(METHOD, None)
    assert summary.splitlines()[0].startswith(f"{METHOD} model, version 1 ")
    logic.useModelVersion(METHOD, "3")  # choosing a version in the combo box
    assert library.active_version(METHOD) == "3"
    assert [v.active for v in logic.modelVersions(METHOD)] == [False, False, True]
    assert logic.modelSummary(METHOD, None).splitlines()[0] == f"{METHOD} model, version 3 ({three.model_id})"
    assert logic.modelSummary(METHOD, shipped).splitlines()[0].startswith(f"{METHOD} model, version 1 ")  # a folder wins
    (lib / METHOD / "2" / "model.safetensors").write_bytes(b"damaged")
    with pytest.raises(Exception, match="was not made active"):
        logic.useModelVersion(METHOD, "2")
    assert library.active_version(METHOD) == "3"
    logic.useModelVersion(METHOD, "1")  # roll back to the shipped model
    assert library.active_version(METHOD) == "1" and logic.modelVersions(METHOD)[0].active
    (lib / METHOD / "4").mkdir()  # a folder whose card cannot be read is listed, marked damaged
    assert logic.modelVersions(METHOD)[-1].label.startswith("v4 - damaged: ")


# --- fine-tune ----------------------------------------------------------------------------------

def test_fine_tune_offers_the_new_version_and_makes_it_active_on_confirm(mrml, lib, dataset, tmp_path):
    from LesionDetectLib import library
    from LesionDetectLib.models import shipped_model_dir

    runner, scheduler = FakeRunner(), FakeScheduler()
    logic = _logic(mrml, tmp_path, runner, poll_scheduler=scheduler)
    nodes = _node_ids(mrml.scene)
    progress, finished = [], []
    logic.startFineTune(METHOD, dataset, device="cpu", onProgress=lambda f, t: progress.append((f, t)),
                        onFinished=lambda result, error: finished.append((result, error)))
    child = runner.children[0]
    out = Path(child.arg("--out"))
    assert child.args == [PYTHON, "-m", "LesionDetectLib", "--progress", "lines", "train", "--init",
                          str(shipped_model_dir(METHOD)), "--data", str(dataset), "--out", str(out), "--register",
                          "--device", "cpu"]
    assert out.parent in _work_dirs(tmp_path) and not out.exists()
    assert child.env["LESIONDETECT_MODELS"] == str(lib)  # the child registers in the library the module reads
    assert child.env["PYTHONPATH"].split(":")[0] == str(ROOT)
    assert logic.isLearning() and logic.learning.runningTask() == learn.FINE_TUNE
    with pytest.raises(RuntimeError, match="fine-tune or ranking is running"):
        logic.startInference(object(), method=METHOD)
    for start in (logic.startFineTune, logic.startNextCase):  # one child at a time
        with pytest.raises(RuntimeError, match="already running"):
            start(METHOD, dataset)
    assert len(runner.children) == 1
    while scheduler.poll():
        pass
    assert progress == [(0.1, "epoch 1/2"), (0.6, "epoch 2/2"), (0.9, "validation")]
    [(result, error)] = finished
    assert error is None and not logic.isLearning() and scheduler.stops == 1
    assert (result.method, result.parent.version, result.version.version) == (METHOD, "1", "2")
    assert result.version.parent_version == "1"
    assert logic.learning.offeredVersion == result.version
    assert library.active_version(METHOD) == "1"  # offered, not active yet
    assert _node_ids(mrml.scene) == nodes and _work_dirs(tmp_path) == []
    logic.acceptFineTunedVersion()  # the user confirms
    assert library.active_version(METHOD) == "2" and logic.learning.offeredVersion is None
    assert "version 2" in logic.modelSummary(METHOD, None).splitlines()[0]
    with pytest.raises(RuntimeError, match="No fine-tuned version"):
        logic.acceptFineTunedVersion()
    # the next fine-tune starts from the active version 2; declining keeps version 2 active
    result = logic.startFineTune(METHOD, dataset, waitForCompletion=True)
    assert runner.children[1].arg("--init") == str(lib / METHOD / "2")
    assert (result.parent.version, result.version.version, result.version.parent_version) == ("2", "3", "2")
    logic.declineFineTunedVersion()
    assert library.active_version(METHOD) == "2" and logic.learning.offeredVersion is None
    assert [v.version for v in logic.modelVersions(METHOD)] == ["1", "2", "3"]


def test_cancelled_fine_tune_registers_nothing_and_changes_nothing(mrml, lib, dataset, tmp_path):
    from LesionDetectLib import library

    runner, scheduler = FakeRunner("hang"), FakeScheduler()
    logic = _logic(mrml, tmp_path, runner, poll_scheduler=scheduler)
    nodes, files = _node_ids(mrml.scene), _library_files(lib)
    progress, finished = [], []
    logic.startFineTune(METHOD, dataset, onProgress=lambda f, t: progress.append(f),
                        onFinished=lambda result, error: finished.append((result, error)))
    for _ in range(5):
        assert scheduler.poll()
    assert progress == [0.1, 0.6, 0.9]
    logic.cancelLearning()
    child = runner.children[0]
    assert child.cancelled and not logic.isLearning() and logic.learning.lastRunCancelled
    assert finished == [(None, "Cancelled.")]
    assert [v.version for v in logic.modelVersions(METHOD)] == ["1"] and library.active_version(METHOD) == "1"
    assert _library_files(lib) == files and logic.learning.offeredVersion is None
    assert _node_ids(mrml.scene) == nodes and _work_dirs(tmp_path) == [] and scheduler.stops == 1


def test_cancel_in_the_last_instant_removes_the_version_the_child_registered(mrml, lib, dataset, tmp_path):
    from LesionDetectLib import library

    runner = FakeRunner("register-then-hang")
    logic = _logic(mrml, tmp_path, runner)
    finished = []
    logic.startFineTune(METHOD, dataset, onFinished=lambda result, error: finished.append(error))
    logic.learning.poll()
    assert [v.version for v in logic.modelVersions(METHOD)] == ["1", "2"]  # registered, then the user cancels
    logic.cancelLearning()
    assert finished == ["Cancelled. Version 2 it had registered was removed again."]
    assert [v.version for v in logic.modelVersions(METHOD)] == ["1"] and library.active_version(METHOD) == "1"
    assert logic.learning.offeredVersion is None


def test_failed_fine_tune_reports_its_error_and_changes_nothing(mrml, lib, dataset, tmp_path):
    from LesionDetectLib import library

    library.use(METHOD, "1")
    logic = _logic(mrml, tmp_path, FakeRunner("fail"))
    nodes, files = _node_ids(mrml.scene), _library_files(lib)
    finished = []
    logic.startFineTune(METHOD, dataset, onFinished=lambda result, error: finished.append((result, error)))
    while logic.learning.poll():
        pass
    assert finished == [(None, "Fine-tuning failed: data/dataset.json: is a CT dataset; the model is a ms-flair-fcn "
                               "(MR) model")]
    assert not logic.learning.lastRunCancelled
    with pytest.raises(RuntimeError, match=r"^Fine-tuning failed: data/dataset.json: is a CT dataset"):
        logic.startFineTune(METHOD, dataset, waitForCompletion=True)
    assert _library_files(lib) == files and library.active_version(METHOD) == "1"
    assert _node_ids(mrml.scene) == nodes and _work_dirs(tmp_path) == [] and logic.learning.offeredVersion is None


def test_failure_text_prefers_the_error_line():
    assert learn.failure_text("Ranking", "a\nlesiondetect: error: x: broken\nTraceback tail", 1) == \
        "Ranking failed: x: broken"
    assert learn.failure_text("Ranking", "one\nlast words\n", 3) == "Ranking failed: last words"
    assert learn.failure_text("Ranking", "", -9) == "Ranking failed: it stopped with exit code -9"


def test_fine_tune_and_next_case_refuse_what_cannot_run(mrml, lib, dataset, tmp_path, monkeypatch):
    from LesionDetectLib import library

    runner = FakeRunner()
    logic = _logic(mrml, tmp_path, runner)
    for folder in ("", ".", None, tmp_path / "nowhere"):
        with pytest.raises(ValueError, match="dataset"):
            logic.startFineTune(METHOD, folder)
        with pytest.raises(ValueError, match="dataset"):
            logic.startNextCase(METHOD, folder)
    with pytest.raises(ValueError, match="Choose a method"):
        logic.startFineTune("", dataset)
    monkeypatch.setattr(library, "shipped_model_dir", lambda method: None)
    with pytest.raises(ValueError, match="no model to start from"):
        logic.startFineTune(METHOD, dataset)
    assert runner.children == [] and _work_dirs(tmp_path) == []
    from LesionDetectMRML import convert
    from LesionDetectMRML.samples import make_study

    logic = _logic(mrml, tmp_path, FakeRunner("hang"))  # a detection runs: neither starts (checked first)
    logic.startInference(convert.add_image_volume(mrml.scene, make_study("flair").image, "flair"), method=METHOD)
    for start in (logic.startFineTune, logic.startNextCase):
        with pytest.raises(RuntimeError, match="A detection is running"):
            start(METHOD, dataset)
    logic.cancel()
    assert not logic.isLearning() and _work_dirs(tmp_path) == []


# --- next case ----------------------------------------------------------------------------------

RANKING = [{"id": "a", "kind": "map entropy", "score": 0.9},  # reviewed since the ranking
           {"id": "b", "kind": "map entropy", "score": 0.8},  # its reviewed export b_v2 is in the dataset
           {"id": "bad", "kind": "error", "score": None, "error": "cannot read"},
           {"id": "c", "kind": "map entropy", "score": 0.5},
           {"id": "d", "kind": "map entropy", "score": 0.25}]


def test_pick_next_case_takes_the_best_ranked_unreviewed_case(dataset):
    ranking = {"cases": [{"rank": n, **row} for n, row in enumerate(RANKING, start=1)]}
    case = learn.pick_next_case(ranking, dataset)
    assert (case.id, case.rank, case.score, case.image) == ("c", 4, 0.5, dataset / "images" / "c.nrrd")
    assert case.unreviewed_left == 2
    assert learn.pick_next_case(ranking, dataset, skip={"c"}).id == "d"
    assert learn.pick_next_case(ranking, dataset, skip={"c", "d"}) is None
    shuffled = {"cases": list(reversed(ranking["cases"]))}  # the order is the rank, not the list order
    assert learn.pick_next_case(shuffled, dataset).id == "c"


def test_next_case_ranks_then_loads_the_top_unreviewed_case(mrml, lib, dataset, tmp_path):
    import numpy as np

    from LesionDetectLib.io import read_image
    from LesionDetectLib.models import shipped_model_dir
    from LesionDetectMRML import convert

    runner, scheduler = FakeRunner(ranking=RANKING), FakeScheduler()
    logic = _logic(mrml, tmp_path, runner, poll_scheduler=scheduler)
    progress, finished = [], []
    logic.startNextCase(METHOD, dataset, device="cpu", onProgress=lambda f, t: progress.append(f),
                        onFinished=lambda result, error: finished.append((result, error)))
    child = runner.children[0]
    assert child.args[:6] == [PYTHON, "-m", "LesionDetectLib", "--progress", "lines", "rank"]
    assert child.args[6:] == ["--data", str(dataset), "--model", str(shipped_model_dir(METHOD)), "--out",
                              child.arg("--out"), "--device", "cpu"]
    assert Path(child.arg("--out")).name == "ranking.json" and not Path(child.arg("--out")).exists()
    assert mrml.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 0  # nothing before the ranking ends
    while scheduler.poll():
        pass
    [(result, error)] = finished
    assert error is None and progress == [0.1, 0.6, 0.9]
    assert result.case.id == "c" and result.volume.GetName() == "c"
    assert mrml.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 1
    np.testing.assert_array_equal(convert.volume_array(result.volume),
                                  __import__("SimpleITK").GetArrayFromImage(read_image(dataset / "images" / "c.nrrd")))
    composite = mrml.scene.GetFirstNodeByClass("vtkMRMLSliceCompositeNode")
    assert composite.GetBackgroundVolumeID() == result.volume.GetID()
    assert "rank 4" in result.message and _work_dirs(tmp_path) == []
    # the ranking still holds (same model, no new case): the next one without ranking again
    result = logic.startNextCase(METHOD, dataset, waitForCompletion=True)
    assert result.case.id == "d" and len(runner.children) == 1
    result = logic.startNextCase(METHOD, dataset, waitForCompletion=True)
    assert result.case is None and "shown in this session" in result.message
    assert mrml.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == 2


def test_next_case_ranks_again_when_the_model_or_the_cases_change(mrml, lib, dataset, tmp_path):
    from LesionDetectLib import library
    from LesionDetectLib.models import shipped_model_dir

    runner = FakeRunner(ranking=RANKING)
    logic = _logic(mrml, tmp_path, runner)
    assert logic.startNextCase(METHOD, dataset, waitForCompletion=True).case.id == "c"
    two = library.register(fine_tuned_copy(shipped_model_dir(METHOD), tmp_path / "m2", "two"))
    logic.useModelVersion(METHOD, two.version)  # a new active model ranks differently
    assert logic.startNextCase(METHOD, dataset, waitForCompletion=True).case.id == "d"  # c was shown already
    assert len(runner.children) == 2 and runner.children[1].arg("--model") == str(two.path)
    doc = json.loads((dataset / "dataset.json").read_text())  # a new unreviewed case arrives
    doc["cases"].append({"id": "e", "patient": "e", "image": "images/c.nrrd"})
    (dataset / "dataset.json").write_text(json.dumps(doc))
    runner.ranking = [{"id": "e", "kind": "map entropy", "score": 0.95}, *RANKING]
    assert logic.startNextCase(METHOD, dataset, waitForCompletion=True).case.id == "e"
    assert len(runner.children) == 3


def test_failed_ranking_reports_its_error_and_loads_nothing(mrml, lib, dataset, tmp_path):
    logic = _logic(mrml, tmp_path, FakeRunner("fail"))
    nodes = _node_ids(mrml.scene)
    with pytest.raises(RuntimeError, match="^Ranking the cases failed: data/dataset.json: is a CT dataset"):
        logic.startNextCase(METHOD, dataset, waitForCompletion=True)
    assert _node_ids(mrml.scene) == nodes and _work_dirs(tmp_path) == []
    logic = _logic(mrml, tmp_path, FakeRunner("hang"))
    finished = []
    logic.startNextCase(METHOD, dataset, onFinished=lambda result, error: finished.append((result, error)))
    logic.cancelLearning()
    assert finished == [(None, "Cancelled.")] and _node_ids(mrml.scene) == nodes


def test_loading_a_case_starts_afresh(mrml, lib, dataset, tmp_path):
    """A result of the previous case is no longer the one reviewed or exported after Next case."""
    from LesionDetectMRML.samples import make_study

    logic = _logic(mrml, tmp_path, FakeRunner(ranking=RANKING))
    study = make_study("flair")
    from LesionDetectMRML import convert

    volume = convert.add_image_volume(mrml.scene, study.image, "previous")
    logic.showPrediction(volume, study.prediction)
    assert logic.result is not None
    result = logic.startNextCase(METHOD, dataset, waitForCompletion=True)
    assert logic.result is None and result.case.id == "c"
    with pytest.raises(RuntimeError, match="Run a detection first"):
        logic.exportResult(tmp_path / "out", "c")


# --- the real commands (slow: trains a tiny model; `pytest -m slow`) ------------------------------

@pytest.mark.slow
def test_real_fine_tune_cancel_and_next_case_through_the_cli(mrml, tmp_path, monkeypatch):
    """The module's command lines against the real `lesiondetect train --init --register` and
    `rank` in child processes (process.ChildProcess): a cancelled fine-tune registers nothing,
    a finished one is offered and made active on confirm, Next case loads the top-ranked case."""
    import time

    from LesionDetectLib import library
    from LesionDetectLib.training import train
    from LesionDetectMRML import process
    from test_ms_flair_fcn import write_tiny_dataset

    monkeypatch.setenv(library.ENV, str(tmp_path / "library"))
    data = write_tiny_dataset(tmp_path / "ds")
    doc = json.loads((data / "dataset.json").read_text())
    doc["cases"][1]["split"] = "val"
    (data / "dataset.json").write_text(json.dumps(doc))
    parent = train(METHOD, data, tmp_path / "parent", device="cpu",
                   overrides={"unet_base": 4, "unet_depth": 2, "tile_size": 16, "tile_jitter": 2, "epochs": 1,
                              "tiles_per_epoch": 16, "batch_size": 8})
    library.use(METHOD, library.register(parent).version)  # the tiny model is the active version 2
    logic = _logic(mrml, tmp_path, process.ChildProcess)
    logic.python = logic.learning.python = sys.executable
    seen, finished = [], []
    logic.startFineTune(METHOD, data, device="cpu", onProgress=lambda f, t: seen.append(f),
                        onFinished=lambda result, error: finished.append(error))
    deadline = time.monotonic() + 120
    while not seen and logic.learning.poll():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    logic.cancelLearning()
    assert finished == ["Cancelled."] and [v.version for v in logic.modelVersions(METHOD)] == ["1", "2"]
    result = logic.startFineTune(METHOD, data, device="cpu", waitForCompletion=True)
    assert (result.parent.version, result.version.version, result.version.parent_version) == ("2", "3", "2")
    assert library.active_version(METHOD) == "2"
    logic.acceptFineTunedVersion()
    assert library.active_version(METHOD) == "3"
    assert logic.modelSummary(METHOD, None).splitlines()[0].startswith(f"{METHOD} model, version 3 ")
    nodes = mrml.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    case = logic.startNextCase(METHOD, data, device="cpu", waitForCompletion=True)
    assert case.case.id in {"c0", "c1", "c2"} and case.case.rank == 1
    assert mrml.scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode") == nodes + 1
    assert _work_dirs(tmp_path) == []
