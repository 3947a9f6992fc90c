"""Fine-tuning (`lesiondetect train --init MODEL`): the parent's weights, method and config with
the short schedule of training.FINETUNE_DEFAULTS, the lineage in the new card, the refusals,
and that a fine-tune killed mid-way changes neither the library nor the active model.  Tiny
synthetic FLAIR volumes and a tiny network: each run takes seconds."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from LesionDetectLib import library
from LesionDetectLib.models import read_card, sha256_of
from LesionDetectLib.training import FINETUNE_DEFAULTS, FINETUNE_LR_FACTOR, train
from test_ms_flair_fcn import write_tiny_dataset

FAST = ["--device", "cpu", "--set", "tiles_per_epoch=16", "--set", "batch_size=8"]
TINY = {"unet_base": 4, "unet_depth": 2, "tile_size": 16, "tile_jitter": 2}


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    """(tiny dataset with train/val/test cases, a model trained on it for one epoch)."""
    root = tmp_path_factory.mktemp("finetune")
    data = write_tiny_dataset(root / "ds")
    doc = json.loads((data / "dataset.json").read_text())
    doc["cases"][1]["split"] = "val"  # c0 train, c1 val, c2 test
    (data / "dataset.json").write_text(json.dumps(doc))
    model = train("ms-flair-fcn", data, root / "parent", device="cpu",
                  overrides={**TINY, "epochs": 1, "tiles_per_epoch": 16, "batch_size": 8})
    return data, model


@pytest.fixture
def lib(tmp_path, monkeypatch):
    monkeypatch.setenv(library.ENV, str(tmp_path / "lib"))
    return tmp_path / "lib"


def test_finetune_card_records_the_lineage(parent, tmp_path, lib, run_cli):
    data, parent_dir = parent
    pcard = read_card(parent_dir)[1]
    out = tmp_path / "ft"
    code, stdout, err = run_cli("train", "--init", parent_dir, "--data", data, "--out", out, "--register", *FAST)
    assert code == 0, err
    card = read_card(out)[1]
    assert card.method == "ms-flair-fcn" and card.version == "1-ft" and card.model_id.startswith("ms-flair-fcn-1-ft-")
    assert sha256_of(out / "model.safetensors") != pcard.weights_sha256  # it did train
    lineage = card.training["lineage"]
    assert lineage["parent_model_id"] == pcard.model_id
    assert lineage["parent_weights_sha256"] == sha256_of(parent_dir / "model.safetensors")
    cases = json.loads((data / "dataset.json").read_text())["cases"]
    assert lineage["dataset_cases"] == {c["id"]: {"image": sha256_of(data / c["image"]),
                                                   "mask": sha256_of(data / c["mask"])} for c in cases}
    # the short schedule on top of the parent's config; the network keys stay the parent's
    assert card.config["epochs"] == FINETUNE_DEFAULTS["epochs"] == len(card.training["history"])
    assert card.config["lr"] == pytest.approx(pcard.config["lr"] * FINETUNE_LR_FACTOR)
    assert card.config["lr_schedule"] == "warmup_cosine" and card.config["unet_base"] == 4
    changes = lineage["config_changes"]
    assert changes["epochs"] == {"parent": 1, "new": FINETUNE_DEFAULTS["epochs"]}
    assert changes["lr"]["parent"] == pcard.config["lr"] and "unet_base" not in changes
    validation = lineage["validation"]
    assert validation["cases"] == ["c1"]
    for when in ("before", "after"):
        assert validation[when]["val_loss"] > 0
        assert 0 <= validation[when]["evaluate"]["lesion_f1"] <= 1
    assert validation["after"]["val_loss"] == pytest.approx(card.training["history"][-1]["val_loss"], abs=1e-5)
    assert "fine-tuned from " + pcard.model_id in card.training["data"]
    # the parent's operating point is kept (one or two cases would overfit a new one)
    assert card.thresholds == pcard.thresholds and lineage["thresholds"] == "the parent's"
    # registered as version 2, not made active
    assert "registered as ms-flair-fcn version 2" in stdout
    entry = library.find("ms-flair-fcn", "2")
    assert entry.model_id == card.model_id and entry.lineage["parent_model_id"] == pcard.model_id
    assert library.active_version("ms-flair-fcn") == "1"


def test_user_settings_override_the_short_schedule(parent, tmp_path, run_cli):
    data, parent_dir = parent
    no_val = tmp_path / "ds"
    shutil.copytree(data, no_val)
    doc = json.loads((no_val / "dataset.json").read_text())
    for case in doc["cases"]:
        case["split"] = "train"
    (no_val / "dataset.json").write_text(json.dumps(doc))
    code, out, err = run_cli("train", "--init", parent_dir, "--method", "ms-flair-fcn", "--data", no_val, "--out",
                             tmp_path / "ft", "--epochs", "1", "--set", "lr=0.0005", "--recalibrate", *FAST)
    assert code == 0, err
    card = read_card(tmp_path / "ft")[1]
    assert card.config["epochs"] == 1 and card.config["lr"] == 0.0005
    assert card.training["lineage"]["config_changes"]["lr"]["new"] == 0.0005
    assert card.training["lineage"]["validation"]["after"]["val_loss"] is None  # no validation cases: said so
    assert card.training["lineage"]["thresholds"] == "chosen again on this dataset"
    assert set(card.training["lineage"]["dataset_cases"]) == {"c0", "c1", "c2"}


def test_refusals_name_the_model_and_the_dataset(parent, tmp_path, run_cli):
    data, parent_dir = parent
    model_id = read_card(parent_dir)[1].model_id
    code, out, err = run_cli("train", "--init", parent_dir, "--method", "bone-ct-patch", "--data", data,
                             "--out", tmp_path / "a")
    assert code == 2 and err.count("\n") == 1 and str(parent_dir) in err and "leave out --method bone-ct-patch" in err
    ct = tmp_path / "ct"
    shutil.copytree(data, ct)
    doc = json.loads((ct / "dataset.json").read_text())
    (ct / "dataset.json").write_text(json.dumps({**doc, "modality": "CT"}))
    code, out, err = run_cli("train", "--init", parent_dir, "--data", ct, "--out", tmp_path / "b")
    assert code == 2 and err.count("\n") == 1
    assert f"{ct}: is a CT dataset; model {parent_dir} ({model_id}) is a ms-flair-fcn model for MR images" in err
    code, out, err = run_cli("train", "--init", parent_dir, "--data", data, "--out", tmp_path / "c",
                             "--set", "unet_base=8")
    assert code == 2 and "changes the network" in err and "keeps the parent's architecture" in err
    code, out, err = run_cli("train", "--data", data, "--out", tmp_path / "d")
    assert code == 2 and "--init MODEL" in err
    assert not any((tmp_path / name).exists() for name in "abcd")


# killed while training, and (slow suite) while the model is swapped in (save_model's own
# atomicity is tested in test_faults.py)
@pytest.mark.parametrize("kill_at", ["checkpoint", pytest.param("before-swap", marks=pytest.mark.slow)])
def test_a_finetune_killed_midway_changes_nothing(parent, tmp_path, lib, kill_at):
    from test_model_library import snapshot, tiny_model

    data, parent_dir = parent
    library.register(tiny_model(tmp_path / "m2", seed=2))
    library.use("ms-flair-fcn", "2")
    before = snapshot(lib)
    out = tmp_path / "ft"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "LESIONDETECT_TEST_KILL_AT": kill_at}
    proc = subprocess.run([sys.executable, "-m", "LesionDetectLib", "train", "--init", str(parent_dir), "--data",
                           str(data), "--out", str(out), "--register", *FAST],
                          env=env, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()
    assert snapshot(lib) == before  # no new version, same active one
    assert library.active_model_dir("ms-flair-fcn") == lib / "ms-flair-fcn" / "2"
    assert not (out / "model.json").exists() and not (out / "model.safetensors").exists()
    assert [p.name for p in out.iterdir()] == ["checkpoint.pt"]  # whole (atomic_path), resumable
