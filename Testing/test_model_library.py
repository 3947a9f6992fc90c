"""The per-user model library (LesionDetectLib/library.py, `lesiondetect models`): versions,
the active one inference runs, rollback, sha256 checks, refusals and atomic writes.  Every test
uses a library in tmp_path ($LESIONDETECT_MODELS) and a stand-in for the shipped model, so it
never reads or writes the real home folder or Resources/models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest

from LesionDetectLib import library
from LesionDetectLib.errors import LesionDetectError
from LesionDetectLib.models import ModelCard, read_card, save_model, sha256_of

METHOD = "ms-flair-fcn"
TINY = {"unet_base": 4, "unet_depth": 2}


def tiny_model(folder: Path, seed: int, **training) -> Path:
    """A real (tiny) ms-flair-fcn model; `seed` makes its weights differ."""
    import torch

    from LesionDetectLib.methods import get_method
    from LesionDetectLib.training import config_defaults, merge_config

    method = get_method(METHOD)
    config = merge_config(config_defaults(method), TINY)
    torch.manual_seed(seed)
    net = method.build_model(config)
    return save_model(folder, net.state_dict(), ModelCard(METHOD, "MR", config, thresholds={"pixel": 0.5},
                                                          training=training))


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def lib(tmp_path, monkeypatch):
    """An empty library in tmp_path and a shipped version 1 of ms-flair-fcn only."""
    shipped = tiny_model(tmp_path / "shipped" / METHOD, seed=0)
    monkeypatch.setenv(library.ENV, str(tmp_path / "lib"))
    monkeypatch.setattr(library, "shipped_model_dir", lambda m: shipped if m == METHOD else None)
    return tmp_path / "lib"


def test_env_var_chooses_the_folder_and_home_is_the_default(tmp_path, monkeypatch):
    monkeypatch.setenv(library.ENV, str(tmp_path / "mine"))
    assert library.library_dir() == tmp_path / "mine"
    monkeypatch.delenv(library.ENV)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert library.library_dir() == tmp_path / "home" / ".lesiondetect" / "models"
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv(library.ENV, str(tmp_path / "file"))
    with pytest.raises(LesionDetectError, match="is a file"):
        library.library_dir()


def test_add_use_rollback_and_infer_default(lib, tmp_path, run_cli):
    from LesionDetectLib.commands.infer import resolve_model

    shipped = library.shipped_model_dir(METHOD)
    before = snapshot(shipped)
    assert library.active_model_dir(METHOD) == shipped and [e.version for e in library.versions(METHOD)] == ["1"]
    model = tiny_model(tmp_path / "m2", seed=2)
    card = read_card(model)[1]
    code, out, err = run_cli("models", "add", model)
    assert code == 0, err
    copy = lib / METHOD / "2"
    copied = read_card(copy)[1]
    assert copied.version == "2" and copied.model_id == card.model_id  # the id names the weights: it stays
    assert sha256_of(copy / "model.safetensors") == card.weights_sha256 == copied.weights_sha256
    assert library.active_model_dir(METHOD) == shipped  # adding does not activate
    code, out, err = run_cli("models", "add", model)
    assert code == 2 and "already in the library as ms-flair-fcn version 2" in err
    code, out, err = run_cli("models", "use", METHOD, card.model_id)  # by model id
    assert code == 0, err
    assert json.loads((lib / "state.json").read_text())["active"] == {METHOD: "2"}
    assert resolve_model(Namespace(model=None, method=METHOD)) == copy
    code, out, err = run_cli("models", "list", METHOD)
    assert code == 0 and "*   2  " + card.model_id in out and "    1  " in out
    code, out, err = run_cli("models", "use", METHOD, "v1")  # rollback
    assert code == 0, err
    assert resolve_model(Namespace(model=None, method=METHOD)) == shipped
    assert library.active_version(METHOD) == "1"
    code, out, err = run_cli("models", "use", METHOD, "7")
    assert code == 2 and "no version or model id '7'" in err and "versions: 1, 2" in err
    assert snapshot(shipped) == before  # version 1 is never copied or changed


def test_version_numbers_are_not_reused(lib, tmp_path):
    library.register(tiny_model(tmp_path / "a", seed=2))
    library.register(tiny_model(tmp_path / "b", seed=3))
    library.remove(METHOD, "3")
    assert library.register(tiny_model(tmp_path / "c", seed=4)).version == "4"
    assert [e.version for e in library.versions(METHOD)] == ["1", "2", "4"]


def test_verify_finds_replaced_weights_and_use_refuses_them(lib, tmp_path, run_cli):
    library.register(tiny_model(tmp_path / "m2", seed=2))
    code, out, err = run_cli("models", "verify", METHOD)
    assert code == 0 and out.count("ok ") == 2
    weights = lib / METHOD / "2" / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    code, out, err = run_cli("models", "verify")
    assert code == 1 and "FAILED ms-flair-fcn version 2" in out and "does not match the sha256" in out
    code, out, err = run_cli("models", "use", METHOD, "2")
    assert code == 2 and "was not made active" in err
    assert library.active_version(METHOD) == "1"


def test_add_refuses_weights_that_do_not_match_their_card(lib, tmp_path, run_cli):
    model = tiny_model(tmp_path / "m2", seed=2)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"abcd")
    code, out, err = run_cli("models", "add", model)
    assert code == 2 and "do not match the sha256" in err
    assert not (lib / METHOD).exists()


def test_remove_refusals(lib, tmp_path, run_cli):
    shipped = library.shipped_model_dir(METHOD)
    parent = library.register(tiny_model(tmp_path / "m2", seed=2))
    child = library.register(tiny_model(tmp_path / "m3", seed=3, lineage={
        "parent_model_id": parent.model_id, "parent_weights_sha256": parent.card.weights_sha256}))
    code, out, err = run_cli("models", "remove", METHOD, "1")
    assert code == 2 and "shipped model" in err and shipped.is_dir()
    code, out, err = run_cli("models", "remove", METHOD, "2")
    assert code == 2 and f"is the parent of version 3 ({child.model_id})" in err
    assert (lib / METHOD / "2").is_dir()
    library.use(METHOD, "3")
    code, out, err = run_cli("models", "remove", METHOD, "3")
    assert code == 2 and "is the active version" in err and (lib / METHOD / "3").is_dir()
    code, out, err = run_cli("models", "remove", METHOD, "3", "--force")
    assert code == 0, err
    assert not (lib / METHOD / "3").exists() and library.active_version(METHOD) == "1"
    assert library.active_model_dir(METHOD) == shipped
    code, out, err = run_cli("models", "remove", METHOD, "2")  # no child any more
    assert code == 0, err
    assert sorted(p.name for p in (lib / METHOD).iterdir()) == []  # nothing half-removed left


def test_show_prints_the_lineage(lib, tmp_path, run_cli):
    parent = library.register(tiny_model(tmp_path / "m2", seed=2))
    library.register(tiny_model(tmp_path / "m3", seed=3, lineage={
        "parent_model_id": parent.model_id, "parent_weights_sha256": parent.card.weights_sha256,
        "dataset_cases": {"c0": {"image": "ab" * 32}}, "config_changes": {"lr": {"parent": 0.1, "new": 0.01}},
        "validation": {"before": {"val_loss": 0.5}, "after": {"val_loss": 0.25}}}))
    code, out, err = run_cli("models", "show", METHOD, "3")
    assert code == 0, err
    assert f"<- {parent.model_id} (version 2" in out
    assert "lr 0.1 -> 0.01" in out and "val loss after  0.2500" in out
    code, out, err = run_cli("models", "list", "--json")
    rows = {r["version"]: r for r in json.loads(out)["methods"][METHOD]}
    assert rows["3"]["parent"] == parent.model_id and rows["1"]["active"] and rows["1"]["shipped"]


def test_a_damaged_state_file_is_one_clear_error(lib, tmp_path):
    lib.mkdir(parents=True)
    (lib / "state.json").write_text('{"active": {"ms-flair-fcn": 2}}')
    with pytest.raises(LesionDetectError, match=r"state\.json: is not a valid model library state.*delete it"):
        library.active_model_dir(METHOD)


def test_a_registration_killed_midway_leaves_the_library_as_it_was(lib, tmp_path):
    library.register(tiny_model(tmp_path / "m2", seed=2))
    library.use(METHOD, "2")
    before = snapshot(lib)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "LESIONDETECT_TEST_KILL_AT": "before-swap"}
    # the child has no monkeypatched shipped model: the real one (if any) is version 1 there
    proc = subprocess.run([sys.executable, "-m", "LesionDetectLib", "models", "add", str(tiny_model(tmp_path / "m3",
                                                                                                    seed=3))],
                          env=env, capture_output=True, timeout=300)
    assert proc.returncode == -9, proc.stderr.decode()
    # what the killed run left (its temporary folder, its lock) is cleared by the next change
    assert {k: v for k, v in snapshot(lib).items() if "/.3.tmp-" not in k and k != library.LOCK_FILE} == before
    assert library.active_model_dir(METHOD) == lib / METHOD / "2"
    assert library.register(tmp_path / "m3").version == "3"  # the leftover is cleaned up by the next write
    assert sorted(p.name for p in (lib / METHOD).iterdir()) == ["2", "3"]


def test_changes_wait_for_another_process_and_take_over_a_killed_ones_lock(lib, tmp_path):
    """Two fine-tunes registering at once get different version numbers: a change waits while
    another process holds the library's lock, and a lock left by a killed process (its pid gone)
    is taken over instead of waited for."""
    import threading
    import time

    from LesionDetectLib.files import lock_owner, process_lock

    lib.mkdir(parents=True)
    first, second = tiny_model(tmp_path / "m1", seed=1), tiny_model(tmp_path / "m2", seed=2)
    held = threading.Event()

    def hold():
        with process_lock(lib / library.LOCK_FILE, "testing"):
            held.set()
            time.sleep(1.0)
    holder = threading.Thread(target=hold)
    holder.start()
    held.wait()
    t0 = time.monotonic()
    entry = library.register(first)
    waited = time.monotonic() - t0
    holder.join()
    assert waited >= 0.5 and entry.version == "2"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (lib / library.LOCK_FILE).write_text(json.dumps({**lock_owner(), "pid": int(dead.stdout)}))
    assert library.register(second).version == "3"
    assert not (lib / library.LOCK_FILE).exists()
