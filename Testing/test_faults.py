"""Faults: a result folder is replaced whole (SIGKILL at any step leaves the old result or the
new one, never a mix, never stale files); checkpoints are written atomically and a damaged
one is one clear error on --resume."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from fuzz_corpus import flair_array, write
from LesionDetectLib.errors import LesionDetectError
from LesionDetectLib.files import atomic_dir
from LesionDetectLib.geometry import Geometry
from LesionDetectLib.models import shipped_model_dir
from LesionDetectLib.prediction import LesionPoint, Prediction, Provenance, read_prediction, write_prediction
from LesionDetectLib.training import _resume

needs_model = pytest.mark.skipif(shipped_model_dir("ms-flair-fcn") is None, reason="no shipped ms-flair-fcn model")
KILL_POINTS = ("probability", "mask", "parts", "before-swap", "after-swap")


def snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _prediction(points: int, probability: bool, tag: str) -> Prediction:
    import SimpleITK as sitk

    geom = Geometry.of(sitk.GetImageFromArray(flair_array()))
    pred = Prediction(geometry=geom, provenance=Provenance(method="test", input=tag))
    if probability:
        pred.probability = np.full(geom.shape, 0.25, np.float32)
    pred.points = [LesionPoint(position=np.array([1.0, 2.0, float(k)]), score=0.5) for k in range(points)]
    return pred


def test_overwrite_leaves_no_stale_file_of_the_earlier_result(tmp_path):
    out = tmp_path / "out"
    write_prediction(_prediction(points=3, probability=False, tag="old"), out)
    (out / "notes.txt").write_text("the user's own file")
    assert (out / "points.mrk.json").exists()
    with pytest.raises(LesionDetectError, match="already exists"):
        write_prediction(_prediction(points=0, probability=True, tag="new"), out)
    write_prediction(_prediction(points=0, probability=True, tag="new"), out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "prediction.json", "probability.nrrd"]
    assert (out / "notes.txt").read_text() == "the user's own file"
    assert read_prediction(out).provenance.input == "new"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary folder left


def test_a_failing_write_leaves_the_earlier_result_whole(tmp_path):
    out = tmp_path / "out"
    write_prediction(_prediction(points=2, probability=True, tag="old"), out)
    before = snapshot(out)
    with pytest.raises(RuntimeError):
        with atomic_dir(out, replaced=["prediction.json"]) as tmp:
            (tmp / "prediction.json").write_text("{}")
            raise RuntimeError("disk full")
    assert snapshot(out) == before
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_full_disk_is_one_error_and_changes_nothing(tmp_path, monkeypatch):
    from LesionDetectLib import markups

    out = tmp_path / "out"
    write_prediction(_prediction(points=2, probability=True, tag="old"), out)
    before = snapshot(out)

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(markups, "write_points", full)
    with pytest.raises(LesionDetectError, match=r"out: cannot be written \(No space left on device\); nothing was"):
        write_prediction(_prediction(points=1, probability=True, tag="new"), out, overwrite=True)
    assert snapshot(out) == before and [p.name for p in tmp_path.iterdir()] == ["out"]


def test_a_folder_with_subfolders_is_not_replaced(tmp_path):
    (tmp_path / "out" / "mine").mkdir(parents=True)
    with pytest.raises(LesionDetectError, match="holds folders that are not part of a result"):
        write_prediction(_prediction(points=1, probability=False, tag="x"), tmp_path / "out")
    assert (tmp_path / "out" / "mine").is_dir()


def _infer(image, out, kill_at=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("LESIONDETECT_TEST_KILL_AT", None)
    if kill_at:
        env["LESIONDETECT_TEST_KILL_AT"] = kill_at
    return subprocess.Popen([sys.executable, "-m", "LesionDetectLib", "infer", "--method", "ms-flair-fcn",
                             "--input", str(image), "--out", str(out), "--overwrite", "--device", "cpu"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _whole(out, old, new_input) -> str:
    """'old' or 'new' when `out` holds one complete result, else an assertion error."""
    files = snapshot(out)
    if files == old:
        return "old"
    manifest = json.loads(files["prediction.json"])
    assert manifest["provenance"]["input"] == str(new_input), "a result of neither run"
    assert sorted(files) == sorted([*manifest["files"].values(), "prediction.json"]), "files beside the manifest"
    read_prediction(out)  # every part readable
    return "new"


def _kill_test(tmp_path, points, timed=()):
    old_image = write(flair_array(0), tmp_path / "old.nii.gz", compress=True)
    new_image = write(flair_array(1)[:, :, ::-1].copy(), tmp_path / "new.nii.gz", compress=True)
    out = tmp_path / "out"
    proc = _infer(old_image, out)
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    old = snapshot(out)
    seen = []
    for point in points:
        proc = _infer(new_image, out, kill_at=point)
        code = proc.wait(timeout=300)
        assert code == -9, (point, proc.stderr.read().decode())
        seen.append(_whole(out, old, new_image))
        if seen[-1] == "new" and point != points[-1]:  # back to the old result for the next kill
            proc = _infer(old_image, out)
            assert proc.wait(timeout=300) == 0
            old = snapshot(out)
    for delay in timed:  # kills at moments nobody chose
        proc = _infer(new_image, out)
        time.sleep(delay)
        proc.kill()
        proc.wait(timeout=60)
        _whole(out, old, new_image)
    proc = _infer(new_image, out)  # a later run finishes and clears what the killed ones left
    assert proc.wait(timeout=300) == 0
    assert _whole(out, old, new_image) == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.nii.gz", "old.nii.gz", "out"]
    return seen


@needs_model
def test_sigkill_before_and_after_the_swap(tmp_path):
    assert _kill_test(tmp_path, ("parts", "after-swap")) == ["old", "new"]


@needs_model
@pytest.mark.slow
def test_sigkill_at_every_step_and_at_random_moments(tmp_path):
    assert _kill_test(tmp_path, KILL_POINTS, timed=(0.5, 2.0, 3.0, 4.0)) == ["old"] * 4 + ["new"]


# --- checkpoints -------------------------------------------------------------------------------------

def _model_and_optimizer():
    model = torch.nn.Linear(3, 2)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "pickle", "foreign"])
def test_a_damaged_checkpoint_is_one_clear_error(tmp_path, damage):
    model, optimizer = _model_and_optimizer()
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": 2,
                "history": json.dumps([{"epoch": 1}, {"epoch": 2}])}, path)
    assert _resume(path, *_model_and_optimizer(), "cpu") == (2, [{"epoch": 1}, {"epoch": 2}], None)
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(bytes(range(256)) * 10)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "pickle":
        torch.save({"model": model.state_dict(), "evil": os.system, "epoch": 1}, path)
    else:
        torch.save({"model": torch.nn.Linear(5, 5).state_dict(), "optimizer": {}, "epoch": 1, "history": "[]"}, path)
    with pytest.raises(LesionDetectError) as info:
        _resume(path, *_model_and_optimizer(), "cpu")
    message = str(info.value)
    assert message.startswith(f"{path}: cannot be resumed from") and "\n" not in message
    assert "Delete it to train from the start" in message


def _flair_dataset(tmp_path):
    from LesionDetectLib.cli import main

    assert main(["synth", "ms-flair", "--out", str(tmp_path / "ds"), "--cases", "2", "--size", "small"]) == 0
    return tmp_path / "ds"


def _train_args(ds, out, *extra):
    return ["train", "--method", "ms-flair-fcn", "--data", str(ds), "--out", str(out), "--device", "cpu",
            "--set", "tiles_per_epoch=4", "--set", "batch_size=2", *extra]


def test_resume_from_a_damaged_checkpoint_is_one_line(tmp_path, run_cli, capsys):
    ds = _flair_dataset(tmp_path)
    capsys.readouterr()  # synth's progress
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "checkpoint.pt").write_bytes(b"PK\x03\x04" + bytes(100))  # a zip cut short
    code, out, err = run_cli(*_train_args(ds, tmp_path / "m", "--epochs", "1", "--resume"))
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"lesiondetect: error: {tmp_path / 'm' / 'checkpoint.pt'}: cannot be resumed from")


@pytest.mark.slow
def test_sigkill_after_a_checkpoint_leaves_a_whole_one_that_resumes(tmp_path):
    ds = _flair_dataset(tmp_path)
    out = tmp_path / "m"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "LESIONDETECT_TEST_KILL_AT": "checkpoint"}
    proc = subprocess.run([sys.executable, "-m", "LesionDetectLib", *_train_args(ds, out, "--epochs", "2")], env=env,
                          capture_output=True, timeout=600)
    assert proc.returncode == -9, proc.stderr.decode()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]  # no temporary file beside it
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 1
    env.pop("LESIONDETECT_TEST_KILL_AT")
    proc = subprocess.run([sys.executable, "-m", "LesionDetectLib", *_train_args(ds, out, "--epochs", "2", "--resume")],
                          env=env, capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr.decode()
    history = json.loads((out / "model.json").read_text())["training"]["history"]
    assert [h["epoch"] for h in history] == [1, 2] and not (out / "checkpoint.pt").exists()


# --- models: weights and card are written as a whole -------------------------------------------------

_SAVE = """
import sys, torch
from LesionDetectLib.models import ModelCard, save_model
seed = int(sys.argv[2])
torch.manual_seed(seed)
save_model(sys.argv[1], torch.nn.Linear(64, 32).state_dict(),
           ModelCard(method="toy", modality="CT", config={"seed": seed}), overwrite=True)
"""


def _save_child(out, seed, kill_at=None):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("LESIONDETECT_TEST_KILL_AT", None)
    if kill_at:
        env["LESIONDETECT_TEST_KILL_AT"] = kill_at
    return subprocess.run([sys.executable, "-c", _SAVE, str(out), str(seed)], env=env, capture_output=True,
                          timeout=300).returncode


def _model_seed(out):
    """The seed of the one complete model in `out` (its sha256 checked), or None when there is none."""
    from LesionDetectLib.models import load_model

    names = sorted(p.name for p in out.iterdir()) if out.exists() else []
    if not names:
        return None
    assert names == ["model.json", "model.safetensors"], names  # never weights without a card, nor leftovers
    state, card, _ = load_model(out, method="toy")  # raises if the card's sha256 does not match the weights
    torch.manual_seed(card.config["seed"])
    assert torch.equal(state["weight"], torch.nn.Linear(64, 32).weight.detach())
    return card.config["seed"]


def test_sigkill_while_saving_a_model_leaves_none_or_a_whole_one(tmp_path):
    out = tmp_path / "m"
    assert _save_child(out, 1, kill_at="model-between-files") == -9
    assert _model_seed(out) is None  # killed before the swap: no model at all
    assert _save_child(out, 1) == 0 and _model_seed(out) == 1
    seen = []
    for point in ("model-between-files", "before-swap", "after-swap"):
        assert _save_child(out, 2 + len(seen), kill_at=point) == -9, point
        seen.append(_model_seed(out))
    assert seen == [1, 1, 4]  # the previous model until the swap, the new one after it
    assert _save_child(out, 5) == 0 and _model_seed(out) == 5
    assert [p.name for p in tmp_path.iterdir()] == ["m"]  # the killed runs' temporary folders are gone


@pytest.mark.slow
def test_sigkill_while_training_writes_the_model(tmp_path):
    ds = _flair_dataset(tmp_path)
    out = tmp_path / "m"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "LESIONDETECT_TEST_KILL_AT": "model-between-files"}
    cmd = [sys.executable, "-m", "LesionDetectLib", *_train_args(ds, out, "--epochs", "1")]
    proc = subprocess.run(cmd, env=env, capture_output=True, timeout=600)
    assert proc.returncode == -9, proc.stderr.decode()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt"]  # no weights without a card
    env["LESIONDETECT_TEST_KILL_AT"] = "after-swap"
    proc = subprocess.run(cmd + ["--resume"], env=env, capture_output=True, timeout=600)
    assert proc.returncode == -9, proc.stderr.decode()
    assert sorted(p.name for p in out.iterdir()) == ["model.json", "model.safetensors"]  # checkpoint gone with it
    from LesionDetectLib.models import load_model

    assert load_model(out, method="ms-flair-fcn")[1].training["history"][0]["epoch"] == 1


# --- free space -------------------------------------------------------------------------------------------

def _disk_with(monkeypatch, free):
    import shutil
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10 * 2**30, 10 * 2**30 - free, free))


def test_a_prediction_needs_room_before_anything_is_written(tmp_path, monkeypatch):
    pred = _prediction(points=1, probability=True, tag="new")
    _disk_with(monkeypatch, 2**20)
    with pytest.raises(LesionDetectError) as info:
        write_prediction(pred, tmp_path / "out")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'out'}: not enough free space for the prediction: it needs about ")
    assert "MiB, the file system has 1.0 MiB free; nothing was written" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []
    _disk_with(monkeypatch, 2**30)
    write_prediction(pred, tmp_path / "out")
    assert read_prediction(tmp_path / "out").provenance.input == "new"


def test_a_model_needs_room_for_its_weights(tmp_path, monkeypatch):
    from LesionDetectLib.models import ModelCard, save_model

    net = torch.nn.Linear(1024, 2048)  # 8 MiB of weights
    _disk_with(monkeypatch, 12 * 2**20)  # room for the margin alone, not for the weights
    with pytest.raises(LesionDetectError, match=r"/m: not enough free space for the model: it needs about 17\.\d MiB, "
                                                r"the file system has 12\.0 MiB free; nothing was written"):
        save_model(tmp_path / "m", net.state_dict(), ModelCard(method="toy", modality="CT", config={}))
    assert list(tmp_path.iterdir()) == []
    _disk_with(monkeypatch, 64 * 2**20)
    save_model(tmp_path / "m", net.state_dict(), ModelCard(method="toy", modality="CT", config={}))
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["model.json", "model.safetensors"]


def test_training_needs_room_before_it_starts(tmp_path, run_cli, monkeypatch, capsys):
    ds = _flair_dataset(tmp_path)
    capsys.readouterr()
    _disk_with(monkeypatch, 2**20)
    code, out, err = run_cli(*_train_args(ds, tmp_path / "m", "--epochs", "1"))
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"lesiondetect: error: {tmp_path / 'm'}: not enough free space for the model and its "
                          "checkpoints: it needs about ")
    assert not (tmp_path / "m").exists() or not any((tmp_path / "m").iterdir())


def test_training_into_a_folder_with_subfolders_is_refused_before_any_work(tmp_path, run_cli):
    (tmp_path / "m" / "mine").mkdir(parents=True)  # the model's swap could not keep it: refused up front
    code, out, err = run_cli(*_train_args(tmp_path / "no-dataset", tmp_path / "m", "--epochs", "1"))
    assert code == 2 and err == f"lesiondetect: error: {tmp_path / 'm'}: holds folders (mine); write the model into a " \
                                 "new or empty folder\n"
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["mine"]


# --- a real full disk: a 2 MiB tmpfs ----------------------------------------------------------------------

SMALL_DISK = "2m"


@pytest.fixture
def small_disk(tmp_path):
    """A real, tiny file system (tmpfs of SMALL_DISK) mounted at tmp_path/disk.  Skipped, with
    the reason, where mounting is not allowed (not root, not Linux, a container without
    CAP_SYS_ADMIN, no `mount`)."""
    import shutil

    disk = tmp_path / "disk"
    disk.mkdir()
    if sys.platform != "linux" or os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a full-disk test mounts a tmpfs: needs root on Linux with `mount`")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SMALL_DISK}", "tmpfs", str(disk)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not allowed here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(disk)], capture_output=True)  # a file still open: detach it


def fill_disk(disk) -> None:
    """Fill the file system of `disk` to the last byte with one file, disk/filler."""
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        while True:
            os.write(fd, bytes(1 << 16))
    except OSError:
        pass
    try:
        while True:
            os.write(fd, b"\0")
    except OSError:
        pass
    finally:
        os.close(fd)


def leftovers(folder) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.name != "filler")


@needs_model
def test_infer_on_a_full_disk_refuses_before_writing_and_leaves_nothing_half_written(tmp_path, small_disk, run_cli,
                                                                                     monkeypatch):
    from LesionDetectLib import prediction

    old_image = write(flair_array(0), tmp_path / "old.nii.gz", compress=True)
    new_image = write(flair_array(1), tmp_path / "new.nii.gz", compress=True)
    out = small_disk / "out"
    args = ["infer", "--method", "ms-flair-fcn", "--out", out, "--device", "cpu", "--overwrite", "--input"]
    # 1. the check before any work: the real file system's free space is too small for the margin
    code, _, err = run_cli(*args, old_image)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"lesiondetect: error: {out}: not enough free space for the prediction: it needs about ")
    assert err.endswith("MiB free; nothing was written\n") and leftovers(small_disk) == []
    # 2. the disk fills up after the check passed (another program, a growing log): the write fails
    monkeypatch.setattr(prediction, "check_free_space", lambda *a, **k: None)
    code, _, err = run_cli(*args, old_image)
    assert code == 0, err
    before = snapshot(out)
    fill_disk(small_disk)
    code, _, err = run_cli(*args, new_image)
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"lesiondetect: error: {out}: cannot be written (no space left on the device (0 KiB "
                          "free)); nothing was changed")
    assert snapshot(out) == before and read_prediction(out).provenance.input == str(old_image)
    assert leftovers(small_disk) == ["out", *[f"out/{name}" for name in sorted(before)]]  # no temporary folder


def test_save_model_on_a_full_disk_names_the_folder_and_keeps_the_old_model(small_disk, monkeypatch):
    from LesionDetectLib import models
    from LesionDetectLib.models import ModelCard, save_model

    out = small_disk / "m"
    with pytest.raises(LesionDetectError, match=rf"^{out}: not enough free space for the model: it needs about "
                                                r"\d+\.\d MiB, the file system has 2\.0 MiB free; nothing was written$"):
        save_model(out, torch.nn.Linear(256, 256).state_dict(), ModelCard(method="toy", modality="CT", config={}))
    assert leftovers(small_disk) == []
    monkeypatch.setattr(models, "check_free_space", lambda *a, **k: None)  # the disk fills up after the check
    save_model(out, torch.nn.Linear(16, 16).state_dict(), ModelCard(method="toy", modality="CT", config={"seed": 1}))
    before = snapshot(out)
    fill_disk(small_disk)
    with pytest.raises(LesionDetectError, match=rf"^{out}: cannot be written \(no space left on the device \(0 KiB "
                                                r"free\)\); nothing was changed$"):
        save_model(out, torch.nn.Linear(256, 256).state_dict(), ModelCard(method="toy", modality="CT", config={}),
                   overwrite=True)
    assert snapshot(out) == before and models.load_model(out, method="toy")[1].config == {"seed": 1}
    assert leftovers(small_disk) == ["m", "m/model.json", "m/model.safetensors"]
