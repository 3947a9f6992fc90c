"""The README's main command, end to end at the small size, and how a prediction did against
the study's truth (demo_check: found / missed / false and lesion-level P/R/F1, or the class
result against the label)."""

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk

from LesionDetectLib.demo_check import Truth, check_against_truth, choose_kind
from LesionDetectLib.findings import ClassResult, LesionBox, LesionPoint
from LesionDetectLib.geometry import Geometry
from LesionDetectLib.prediction import Prediction, Provenance, read_prediction


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


# --- how a prediction did against the study's truth (demo_check) -------------------------------

def _geometry(shape=(10, 40, 40), spacing=(1.0, 1.0, 2.0)) -> Geometry:
    image = sitk.Image(shape[2], shape[1], shape[0], sitk.sitkFloat32)  # x, y, z
    image.SetSpacing(spacing)
    image.SetOrigin((-20.0, 5.0, 100.0))
    return Geometry.of(image)


def _prediction(geometry, **parts) -> Prediction:
    return Prediction(geometry=geometry, provenance=Provenance(method="hand-made"), **parts)


def test_points_found_missed_false():
    g = _geometry()
    a, b = (0.0, 20.0, 110.0), (10.0, 30.0, 104.0)
    truth = Truth(points=[LesionPoint(a), LesionPoint(b)])
    points = [LesionPoint((3.0, 24.0, 110.0), 0.9),  # 5 mm from a: found
              LesionPoint((0.0, 20.0, 112.0), 0.5),  # a again: neither found nor false
              LesionPoint((-15.0, 8.0, 101.0), 0.7)]  # far from both: false; b is missed
    check = check_against_truth(_prediction(g, points=points), truth)
    assert (check.kind, check.truth, check.found, check.missed, check.false, check.predicted) == \
        ("points", 2, 1, 1, 1, 3)
    assert check.precision == 0.5 and check.recall == 0.5 and check.f1 == 0.5
    assert "within 10 mm" in check.rule
    # the card's hit radius: 4 mm no longer reaches the first point (5 mm away)
    check = check_against_truth(_prediction(g, points=points), truth, hit_radius_mm=4)
    assert (check.found, check.false) == (1, 2)  # the second point (2 mm) still finds a; the first is false
    check = check_against_truth(_prediction(g, points=points[2:]), truth, hit_radius_mm=4)
    assert (check.found, check.missed, check.false, check.f1) == (0, 2, 1, 0.0)


def test_points_inside_truth_boxes():
    g = _geometry()
    box = LesionBox.from_index_range(g, (10, 10, 2), (20, 20, 5))
    inside = g.index_to_lps((19.0, 11.0, 5.0))
    check = check_against_truth(_prediction(g, points=[LesionPoint(inside)]), Truth(boxes=[box]))
    assert (check.found, check.false) == (1, 0) and "inside a truth box" in check.rule


def test_boxes_by_their_centres_in_the_truth_boxes():
    g = _geometry()
    truth = Truth(boxes=[LesionBox.from_index_range(g, (10, 10, 2), (19, 19, 5)),
                         LesionBox.from_index_range(g, (25, 25, 6), (34, 34, 8))])
    boxes = [LesionBox.from_index_range(g, (11, 10, 3), (20, 19, 4), score=0.9),  # centre inside the 1st: found
             LesionBox.from_index_range(g, (12, 12, 2), (16, 16, 5), score=0.6),  # the 1st again: neither
             LesionBox.from_index_range(g, (25, 25, 0), (34, 34, 1), score=0.8),  # 2nd footprint, other slices: false
             LesionBox.from_index_range(g, (33, 33, 6), (39, 39, 8), score=0.7)]  # centre (36, 36) outside: false
    check = check_against_truth(_prediction(g, boxes=boxes), truth)
    assert (check.kind, check.truth, check.found, check.missed, check.false, check.predicted) == \
        ("boxes", 2, 1, 1, 2, 4)
    assert math.isclose(check.precision, 1 / 3) and check.recall == 0.5 and math.isclose(check.f1, 0.4)
    assert "centre" in check.rule


def test_mask_lesions_by_anima_rule():
    g = _geometry()
    truth = np.zeros(g.shape, np.uint8)
    truth[2:5, 5:10, 5:10] = 1  # found
    truth[6:9, 25:30, 25:30] = 2  # missed (label 2 is a lesion too)
    pred = np.zeros(g.shape, np.uint8)
    pred[2:5, 5:10, 6:10] = 1
    pred[2:4, 30:34, 5:9] = 1  # false
    pred[8, 0, 0] = 1  # 2 mm^3: under the 3 mm^3 floor, not a lesion
    check = check_against_truth(_prediction(g, mask=pred), Truth(mask=truth))
    assert (check.kind, check.truth, check.found, check.missed, check.false, check.predicted) == \
        ("mask", 2, 1, 1, 1, 2)
    assert check.precision == 0.5 and check.recall == 0.5


def test_class_result_against_the_label():
    g = _geometry()
    pred = _prediction(g, classes=[ClassResult({"normal": 0.3, "metastasis": 0.7})])
    check = check_against_truth(pred, Truth(label=1, label_name="metastatic hot spot"))
    assert (check.kind, check.predicted_class, check.truth_class, check.correct) == \
        ("class", "metastasis", "metastatic hot spot", True)
    assert check.probability == 0.7 and "correct" in check.lines()[0]
    assert check_against_truth(pred, Truth(label=0, label_name="background")).correct is False
    decided = _prediction(g, classes=[ClassResult({"normal": 0.7, "metastasis": 0.3}, decision="metastasis")])
    assert check_against_truth(decided, Truth(label=1)).correct is True  # the decision at the model's threshold


def test_kind_follows_what_prediction_and_truth_hold():
    g = _geometry()
    mask = np.zeros(g.shape, np.uint8)
    both = _prediction(g, mask=mask, points=[LesionPoint((0.0, 20.0, 110.0))])
    assert choose_kind(both, Truth(mask=mask, points=[LesionPoint((0.0, 20.0, 110.0))])) == "points"
    assert choose_kind(both, Truth(mask=mask)) == "mask"  # no truth points or boxes to match points with
    assert choose_kind(_prediction(g, boxes=[]), Truth(mask=mask)) is None
    assert check_against_truth(_prediction(g), Truth(mask=mask)) is None


@pytest.mark.parametrize("kind, part", [("liver-ct", "boxes"), ("bone-ct", "points"), ("ms-flair", "mask")])
def test_the_studys_own_truth_scores_perfectly(tmp_path, kind, part):
    """A case's truth read back from the study files, judged against itself: every lesion found."""
    from LesionDetectLib import synth
    from LesionDetectLib.dataset import load_dataset
    from LesionDetectLib.io import read_image

    study = load_dataset(synth.generate(kind, tmp_path / "s", cases=1, seed=7, size="small"))
    case = study.cases[0]
    g = Geometry.of(read_image(case.image))
    truth = Truth.of_case(case, g, study.labels)
    check = check_against_truth(_prediction(g, **{part: getattr(truth, part)}), case)
    assert check.kind == part and check.truth > 0
    assert (check.found, check.missed, check.false, check.f1) == (check.truth, 0, 0, 1.0)


def test_demo_prints_the_class_result_against_the_label(tmp_path, run_cli):
    pytest.importorskip("safetensors")
    from LesionDetectLib.models import shipped_model_dir

    if shipped_model_dir("bone-scan-cls") is None:
        pytest.skip("no bone-scan-cls model shipped")
    code, out, err = run_cli("demo", "--method", "bone-scan-cls", "--out", tmp_path / "d", "--size", "small",
                             "--no-mrb", "--device", "cpu")
    assert code == 0, err
    line = next(ln for ln in out.splitlines() if ln.startswith("class "))
    assert "the study's label: metastatic hot spot: " in line
    check = json.loads((tmp_path / "d" / "truth_check.json").read_text())
    assert check["kind"] == "class" and check["method"] == "bone-scan-cls"
    assert line.endswith("correct" if check["correct"] else "wrong")


def test_demo_without_a_model_shows_the_truth_and_says_so(tmp_path, run_cli, monkeypatch):
    from LesionDetectLib import models

    monkeypatch.setattr(models, "shipped_model_dir", lambda method: None)
    code, out, err = run_cli("demo", "--method", "liver-frcnn", "--out", tmp_path / "d", "--size", "small",
                             "--no-mrb")
    assert code == 0, err
    assert "none shipped for liver-frcnn: showing the study's ground truth" in out
    assert "lesions " not in out and not (tmp_path / "d" / "truth_check.json").exists()
