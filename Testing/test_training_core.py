"""The shared trainer's pieces: config merging, schedules, devices, model files, offline weights."""

import math
import os
import stat

import pytest
import torch

from LesionDetectLib.errors import LesionDetectError
from LesionDetectLib.models import ModelCard, load_model, load_pretrained_weights, save_model
from LesionDetectLib.training import lr_factor, merge_config, select_device


def test_merge_config_is_deep_and_does_not_mutate():
    base = {"a": 1, "opt": {"lr": 0.1, "momentum": 0.9}}
    merged = merge_config(base, {"opt": {"lr": 0.01}}, {"a": 2})
    assert merged == {"a": 2, "opt": {"lr": 0.01, "momentum": 0.9}}
    assert base["opt"]["lr"] == 0.1


def test_warmup_cosine_schedule():
    cfg = {"lr_schedule": "warmup_cosine", "warmup_epochs": 1}
    # 10 steps per epoch, 50 steps: linear warm-up over the first 10, then cosine to 0
    assert lr_factor(cfg, 0, 50, 10) == pytest.approx(0.1)
    assert lr_factor(cfg, 9, 50, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 30, 50, 10) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_factor({}, 7, 50, 10) == 1.0


def test_device_selection():
    assert select_device("cpu").type == "cpu"
    assert select_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(LesionDetectError, match="no CUDA GPU"):
            select_device("cuda")


def test_model_round_trip_and_checks(tmp_path):
    net = torch.nn.Linear(3, 2)
    save_model(tmp_path / "m", net.state_dict(), ModelCard(method="toy", modality="CT", config={"k": 1}))
    state, card, _ = load_model(tmp_path / "m", method="toy", modality="CT")
    assert torch.equal(state["weight"], net.weight.detach())
    assert card.config == {"k": 1} and len(card.weights_sha256) == 64
    umask = os.umask(0)
    os.umask(umask)
    # a model is shared like any result: weights and card get a new file's permissions
    assert {stat.S_IMODE(f.stat().st_mode) for f in (tmp_path / "m").iterdir()} == {0o666 & ~umask}
    with pytest.raises(LesionDetectError, match="for method 'toy', not 'other'"):
        load_model(tmp_path / "m", method="other")
    with pytest.raises(LesionDetectError, match="for CT images, not MR"):
        load_model(tmp_path / "m", modality="MR")
    with pytest.raises(LesionDetectError, match="already exists"):
        save_model(tmp_path / "m", net.state_dict(), ModelCard(method="toy", modality="CT", config={}))
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"abcd")
    with pytest.raises(LesionDetectError, match="sha256"):
        load_model(tmp_path / "m")


def test_missing_pretrained_weights_say_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(LesionDetectError, match=r"vgg16-397923af\.pth.*hub/checkpoints"):
        load_pretrained_weights("vgg16-397923af.pth")
    ckpt = tmp_path / "hub" / "checkpoints"
    ckpt.mkdir(parents=True)
    torch.save({"w": torch.ones(2)}, ckpt / "vgg16-397923af.pth")
    assert torch.equal(load_pretrained_weights("vgg16-397923af.pth")["w"], torch.ones(2))
