"""The README's main command, end to end at the small size."""

import json

import pytest

from LesionDetectLib.prediction import read_prediction


def test_demo_writes_slicer_ready_results_and_a_bundle(tmp_path, run_cli):
    pytest.importorskip("slicer")
    out = tmp_path / "demo"
    code, stdout, err = run_cli("demo", "--out", out, "--size", "small")
    assert code == 0, err
    mrb = out / "LesionDetectDemo.mrb"
    assert stdout.strip().splitlines()[-1] == str(mrb) and mrb.stat().st_size > 1000
    manifest = json.loads((out / "prediction" / "prediction.json").read_text())
    pred = read_prediction(out / "prediction")
    assert pred.mask is not None and pred.mask.sum() > 0
    assert manifest["provenance"]["input"].endswith(".nii.gz")
    # refuses to run over an earlier demo, and changes nothing
    before = sorted(p.name for p in out.iterdir())
    code, _, err = run_cli("demo", "--out", out, "--size", "small")
    assert code == 2 and "not empty" in err and sorted(p.name for p in out.iterdir()) == before


def test_demo_without_bundle(tmp_path, run_cli):
    code, stdout, err = run_cli("demo", "--out", tmp_path / "d", "--size", "small", "--no-mrb",
                                "--method", "bone-ct-patch")
    assert code == 0, err
    assert (tmp_path / "d" / "prediction" / "prediction.json").exists()
    assert not (tmp_path / "d" / "LesionDetectDemo.mrb").exists()


def test_infer_with_shipped_model_writes_a_bundle(tmp_path, run_cli):
    """`lesiondetect infer --method ms-flair-fcn --input IMG --out DIR --mrb X.mrb`, as in Slicer's batch use."""
    pytest.importorskip("slicer")
    from LesionDetectLib import synth
    from LesionDetectLib.dataset import load_dataset

    case = load_dataset(synth.generate("ms-flair", tmp_path / "s", cases=1, seed=3, size="small")).cases[0]
    code, out, err = run_cli("infer", "--method", "ms-flair-fcn", "--input", case.image, "--out", tmp_path / "p",
                             "--mrb", tmp_path / "p.mrb")
    assert code == 0, err
    assert (tmp_path / "p.mrb").stat().st_size > 1000 and "scene bundle" in out
    pred = read_prediction(tmp_path / "p")
    assert pred.probability is not None and pred.provenance.method == "ms-flair-fcn"
