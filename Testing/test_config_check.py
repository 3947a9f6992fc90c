"""Training configs are checked: a key that neither the shared trainer nor the method knows is
an error naming the key, where it came from and the nearest valid keys; valid configs merge
exactly as before the check existed."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch

from LesionDetectLib.errors import LesionDetectError
from LesionDetectLib.methods import get_method, method_names
from LesionDetectLib.training import (TRAINER_DEFAULTS, check_config, config_defaults, lr_factor, make_optimizer,
                                      merge_config, read_config, train, training_config)

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "Resources" / "configs").glob("*/*.json"))


def write_config(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


# --- the experiment configs ---------------------------------------------------------------

def test_config_folders_are_method_names():
    folders = {p.parent.name for p in CONFIGS}
    assert folders and folders <= set(method_names())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_experiment_config_passes_the_check_and_merges_as_before(path):
    method = get_method(path.parent.name)
    doc = json.loads(path.read_text())
    check_config({k: v for k, v in doc.items() if k != "description"}, config_defaults(method), str(path))
    # as train() merged it before configs were checked
    assert training_config(method, path) == merge_config(TRAINER_DEFAULTS, method.defaults, read_config(path))


# --- the trainer's own keys ---------------------------------------------------------------

def test_trainer_defaults_are_the_values_the_trainer_used_to_fall_back_to():
    before = {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "weight_decay": 0.0, "lr_schedule": None,
              "warmup_epochs": 0, "epochs": 1, "batch_size": 32, "seed": 0, "pretrained": False, "weights": None,
              "time_limit_minutes": 0, "hard_example_epochs": 0,
              # added with spine-mtl; their defaults switch them off, so older configs train as before
              "label_smoothing": 0.0, "self_paced_start": 0.0, "self_paced_epochs": 10,
              # added with keep_best: off keeps the last epoch, as before
              "keep_best": False}
    assert TRAINER_DEFAULTS == before
    opt = make_optimizer([torch.nn.Parameter(torch.zeros(1))], {})
    assert isinstance(opt, torch.optim.SGD)
    assert opt.defaults["lr"] == 0.01 and opt.defaults["momentum"] == 0.9 and opt.defaults["weight_decay"] == 0.0
    assert lr_factor({}, 5, 10, 2) == 1.0


def test_method_defaults_override_the_trainers():
    for name in method_names():
        method = get_method(name)
        config = training_config(method)
        assert config == {**TRAINER_DEFAULTS, **method.defaults}
    assert training_config(get_method("ms-flair-fcn"))["optimizer"] == get_method("ms-flair-fcn").defaults["optimizer"]


def _keys_read(path: Path) -> set[str]:
    """String keys read as config["k"], config.get("k", ...) or _setting(config, "k") in a file."""
    keys = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "config" \
                and isinstance(node.slice, ast.Constant):
            keys.add(node.slice.value)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get" \
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "config" and node.args \
                and isinstance(node.args[0], ast.Constant):
            keys.add(node.args[0].value)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "_setting" \
                and len(node.args) == 2 and isinstance(node.args[1], ast.Constant):
            keys.add(node.args[1].value)
    return keys


def test_every_key_the_trainer_reads_is_a_trainer_default():
    lib = ROOT / "LesionDetectLib"
    read = set().union(*(_keys_read(p) for p in [lib / "training.py", *sorted((lib / "commands").glob("*.py"))]))
    assert read - set(TRAINER_DEFAULTS) == set()
    assert {"optimizer", "lr", "momentum", "lr_schedule", "epochs", "batch_size", "seed", "weights"} <= read


# --- unknown keys ----------------------------------------------------------------------------

def test_unknown_key_in_a_config_file(tmp_path):
    path = write_config(tmp_path / "exp.json", {"description": "notes", "lr": 0.001, "lr_schedul": "cosine"})
    with pytest.raises(LesionDetectError) as err:
        training_config(get_method("ms-flair-fcn"), path)
    message = str(err.value)
    assert message.startswith(f"{path}: ") and "\n" not in message
    assert "unknown ms-flair-fcn config key 'lr_schedul'" in message and "did you mean 'lr_schedule'" in message


def test_unknown_key_in_overrides_names_set():
    with pytest.raises(LesionDetectError, match=r"^--set: unknown bone-ct-patch config key 'epoch'; "
                                                r"did you mean 'epochs'"):
        training_config(get_method("bone-ct-patch"), None, {"epoch": 3})


def test_nested_unknown_key_is_found_one_level_down(tmp_path):
    method = get_method("bone-ct-patch")
    path = write_config(tmp_path / "w.json", {"windows_3c": {"low": [-900.0, 100.0], "hihg": [400.0, 2000.0]}})
    with pytest.raises(LesionDetectError, match=r"unknown bone-ct-patch config key 'windows_3c.hihg'; "
                                                r"did you mean 'windows_3c.high'"):
        training_config(method, path)
    with pytest.raises(LesionDetectError, match=r"'split.validation'.*valid keys: 'split.test', 'split.train', "
                                                r"'split.val'"):
        training_config(method, None, {"split": {"validation": 0.2}})
    # a valid nested update still merges into the defaults' dict
    merged = training_config(method, None, {"split": {"train": 0.8, "val": 0.02}})
    assert merged["split"] == {"train": 0.8, "val": 0.02, "test": 0.18}


def test_near_miss_suggestions_and_no_match():
    defaults = config_defaults(get_method("liver-frcnn"))
    with pytest.raises(LesionDetectError, match="did you mean 'lr_schedule'"):
        check_config({"lr_schedul": "cosine"}, defaults, "--set", "liver-frcnn")
    with pytest.raises(LesionDetectError, match="did you mean 'backbone'"):
        check_config({"backbon": "resnet18"}, defaults, "c.json")
    with pytest.raises(LesionDetectError, match=r"^c.json: unknown config key 'zzzzzz'; not a key of the shared "
                                                r"trainer"):
        check_config({"zzzzzz": 1}, defaults, "c.json")


def test_trainer_keys_are_valid_for_every_method():
    for name in method_names():
        check_config({k: v for k, v in TRAINER_DEFAULTS.items()}, config_defaults(get_method(name)), "--set")


def test_train_refuses_before_touching_data_or_out(tmp_path):
    out = tmp_path / "model"
    with pytest.raises(LesionDetectError, match="'warmup_epoch'"):
        train("liver-frcnn", tmp_path / "no-data", out, overrides={"warmup_epoch": 2})
    assert not out.exists()


# --- through the CLI -------------------------------------------------------------------------

def test_cli_train_unknown_set_key(run_cli, tmp_path):
    code, out, err = run_cli("train", "--method", "bone-ct-patch", "--data", tmp_path / "data", "--out",
                             tmp_path / "model", "--set", "lr_schedul=cosine", "--epochs", "1")
    assert code == 2 and out == ""
    assert err.strip() == ("lesiondetect: error: --set: unknown bone-ct-patch config key 'lr_schedul'; "
                           "did you mean 'lr_schedule'?")
    assert not (tmp_path / "model").exists()


def test_cli_train_unknown_key_in_config_file(run_cli, tmp_path):
    path = write_config(tmp_path / "exp.json", {"description": "x", "optimiser": "adam"})
    code, _, err = run_cli("train", "--method", "ms-flair-fcn", "--data", tmp_path / "data", "--out",
                           tmp_path / "model", "--config", path)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"lesiondetect: error: {path}: ")
    assert "unknown ms-flair-fcn config key 'optimiser'; did you mean 'optimizer'" in err


def test_cli_train_valid_keys_pass_the_check(run_cli, tmp_path):
    """A valid --set and --config get past the check: the run then stops at the missing dataset."""
    path = write_config(tmp_path / "exp.json", {"momentum": 0.8, "split": {"train": 0.7}})
    code, _, err = run_cli("train", "--method", "bone-ct-patch", "--data", tmp_path / "data", "--out",
                           tmp_path / "model", "--config", path, "--set", "lr_schedule=cosine", "--set",
                           'windows_3c={"soft": [0, 300]}', "--weights", tmp_path / "w.pth")
    assert code == 2 and "config key" not in err and "dataset" in err.lower()


def test_every_method_refuses_unknown_inference_options_by_name(run_cli, tmp_path):
    from LesionDetectLib.methods import get_method

    with pytest.raises(LesionDetectError, match="unknown ms-flair-fcn inference option\\(s\\) slices; use tta"):
        get_method("ms-flair-fcn").check_inference_options({"slices": "1:3"})
    with pytest.raises(LesionDetectError, match="unknown liver-frcnn inference option\\(s\\) slice; use slices"):
        get_method("liver-frcnn").check_inference_options({"slice": "1:3"})
    with pytest.raises(LesionDetectError, match="use parse_tile, "):
        get_method("bone-ct-patch").check_inference_options({"parse_tiles": 8})
    get_method("liver-frcnn").check_inference_options({"slices": "1:3"})  # a valid one passes
    # through the CLI, with the shipped FLAIR model: refused before the input is even read
    code, _, err = run_cli("infer", "--method", "ms-flair-fcn", "--input", tmp_path / "missing.nii.gz",
                           "--out", tmp_path / "out", "--set", "flips=1")
    assert code == 2 and "unknown ms-flair-fcn inference option(s) flips" in err
    assert not (tmp_path / "out").exists()
