"""`lesiondetect infer` on many images at once: a folder or a .txt list in, one result folder
per image and summary.csv out; bad files are rows, not the end of the batch."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from io_helpers import write_dicom_series
from LesionDetectLib.commands.infer import SUMMARY_COLUMNS, batch_inputs, input_stem
from LesionDetectLib.geometry import Geometry
from LesionDetectLib.models import shipped_model_dir
from LesionDetectLib.prediction import (ClassResult, LesionBox, LesionPoint, Prediction, Provenance, read_prediction,
                                        summary_probability)

needs_model = pytest.mark.skipif(shipped_model_dir("ms-flair-fcn") is None, reason="no shipped ms-flair-fcn model")


def write_flair(path, seed=0):
    """A tiny FLAIR-like volume (10 x 40 x 40, 1 mm) with a few bright plaques."""
    rng = np.random.default_rng(seed)
    vol = np.zeros((10, 40, 40), np.float32)
    vol[1:9, 5:35, 5:35] = 100 + rng.normal(0, 3, (8, 30, 30))
    for _ in range(2):
        z, y, x = rng.integers(2, 7), rng.integers(10, 30), rng.integers(10, 30)
        vol[z - 1:z + 2, y - 2:y + 3, x - 2:x + 3] += 80
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(sitk.GetImageFromArray(vol), str(path))
    return path


def corrupt(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(np.random.default_rng(7).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    return path


def read_summary(out):
    with open(out / "summary.csv", newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames) == SUMMARY_COLUMNS
        return list(reader)


def snapshot(folder):
    return {str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}


def infer(run_cli, src, out, *extra):
    return run_cli("infer", "--method", "ms-flair-fcn", "--input", src, "--out", out, "--device", "cpu", *extra)


# --- what a batch is (no model) ----------------------------------------------------------------

def test_what_counts_as_a_batch(tmp_path):
    images = tmp_path / "images"
    write_flair(images / "b.nii.gz")
    write_flair(images / "a.nrrd")
    (images / "notes.txt").write_text("not an image\n")
    (images / "sub").mkdir()
    write_flair(images / "sub" / "c.nii.gz")  # not recursive
    assert [p.name for p in batch_inputs(images)] == ["a.nrrd", "b.nii.gz"]
    assert batch_inputs(images / "a.nrrd") is None  # one file
    assert batch_inputs(tmp_path / "missing") is None  # reading it says what is wrong

    series = tmp_path / "series"
    write_dicom_series(series, slices=3, modality="MR")
    assert batch_inputs(series) is None  # a DICOM series folder stays one volume
    write_flair(series / "extra.nii.gz")
    assert batch_inputs(series) is None

    singles = tmp_path / "singles"  # single-file DICOM images of different series: a batch
    write_dicom_series(singles, slices=1, modality="MR")
    write_dicom_series(singles, slices=1, modality="MR")
    first = sorted(singles.iterdir())[0]
    first.rename(singles / "IMG0001")  # extension-less DICOM counts too
    assert [p.name for p in batch_inputs(singles)] == sorted(["IMG0001", *(p.name for p in singles.glob("*.dcm"))])

    one = tmp_path / "one"  # a folder with one DICOM file is that image, as always
    write_dicom_series(one, slices=1, modality="MR")
    assert batch_inputs(one) is None

    reports = tmp_path / "reports"  # no image files: not a batch, reading it explains
    reports.mkdir()
    (reports / "r.pdf").write_bytes(b"%PDF-1.4\n")
    assert batch_inputs(reports) is None

    listing = tmp_path / "lists" / "cases.txt"
    listing.parent.mkdir()
    listing.write_text("# my cases\n\n../images/a.nrrd\n  b.nii.gz  \n/abs/c.nii.gz\n")
    assert batch_inputs(listing) == [listing.parent / "../images/a.nrrd", listing.parent / "b.nii.gz",
                                     listing.parent / "/abs/c.nii.gz"]
    assert input_stem(images / "b.nii.gz") == "b" and input_stem(images / "a.nrrd") == "a"
    assert input_stem(singles / "IMG0001") == "IMG0001" and input_stem(series) == "series"


def test_an_empty_list_is_a_usage_error(tmp_path, run_cli):
    listing = tmp_path / "cases.txt"
    listing.write_text("# nothing yet\n\n")
    code, out, err = infer(run_cli, listing, tmp_path / "out")
    assert code == 2 and "lists no images" in err and str(listing) in err
    assert not (tmp_path / "out").exists()


def test_summary_probability_rule():
    geometry = Geometry.of(sitk.Image([4, 3, 2], sitk.sitkFloat32))
    prov = Provenance(method="x")
    assert summary_probability(Prediction(geometry, prov)) is None
    prob = np.zeros(geometry.shape, np.float32)
    prob[1, 2, 3] = 0.4
    assert summary_probability(Prediction(geometry, prov, probability=prob)) == pytest.approx(0.4)
    with_points = Prediction(geometry, prov, probability=prob,
                             points=[LesionPoint((0, 0, 0), 0.2)], boxes=[LesionBox((0, 0, 0), (1, 1, 1), 0.3)])
    assert summary_probability(with_points) == pytest.approx(0.3)  # findings before the map
    classes = [ClassResult({"normal": 0.1, "metastasis": 0.9}, scope="slice", index=0),
               ClassResult({"normal": 0.75, "metastasis": 0.25})]
    with_classes = Prediction(geometry, prov, probability=prob, points=[LesionPoint((0, 0, 0), 0.2)], classes=classes)
    assert summary_probability(with_classes) == pytest.approx(0.25)  # the image-level positive class
    slices_only = Prediction(geometry, prov, classes=[ClassResult({"background": 0.4, "lesion": 0.6}, "slice", 0),
                                                      ClassResult({"background": 0.8, "lesion": 0.2}, "slice", 1)])
    assert summary_probability(slices_only) == pytest.approx(0.6)


# --- end to end with the shipped ms-flair-fcn model ------------------------------------------------

@needs_model
def test_folder_with_a_corrupt_file_goes_on_and_reruns_never_overwrite(tmp_path, run_cli):
    images = tmp_path / "images"
    write_flair(images / "a.nii.gz", seed=1)
    write_flair(images / "b.nrrd", seed=2)
    bad = corrupt(images / "bad.nii.gz")
    out = tmp_path / "out"
    code, stdout, err = infer(run_cli, images, out)
    assert code == 1, err
    assert "1 of 3" in err and str(out / "summary.csv") in err
    assert sorted(p.name for p in out.iterdir()) == ["a", "b", "summary.csv"]
    rows = read_summary(out)
    assert [r["input"] for r in rows] == [str(images / n) for n in ("a.nii.gz", "b.nrrd", "bad.nii.gz")]
    card = json.loads((shipped_model_dir("ms-flair-fcn") / "model.json").read_text())
    for row in rows[:2]:
        pred = read_prediction(out / row["result"])
        assert row["error"] == "" and row["view"] == ""
        assert float(row["probability"]) == pytest.approx(summary_probability(pred), abs=1e-5)
        # the threshold of the card's operating point (lesion level or pixel level)
        point = card["config"].get("operating_point", "pixel")
        assert float(row["threshold"]) == pytest.approx(card["thresholds"][point], abs=1e-5) == pred.threshold
        assert row["decision"] == ("positive" if float(row["probability"]) >= float(row["threshold"]) else "negative")
        assert row["model_id"] == card["model_id"] and int(row["findings"]) == len(pred.boxes) + len(pred.points)
        assert pred.provenance.input == row["input"]
    assert rows[2]["result"] == rows[2]["probability"] == rows[2]["decision"] == rows[2]["findings"] == ""
    assert str(bad) in rows[2]["error"] and "\n" not in rows[2]["error"]

    # a rerun without --overwrite is refused before any work; nothing changes
    before = snapshot(out)
    code, stdout, err = infer(run_cli, images, out)
    assert code == 2 and "summary.csv: already exists" in err and "--overwrite" in err
    assert snapshot(out) == before

    # without summary.csv (an interrupted batch): existing result folders are rows, untouched
    (out / "summary.csv").unlink()
    before = snapshot(out)
    code, stdout, err = infer(run_cli, images, out)
    assert code == 1
    rows = read_summary(out)
    assert all("already exists" in r["error"] for r in rows[:2]) and str(bad) in rows[2]["error"]
    assert {k: v for k, v in snapshot(out).items() if k != "summary.csv"} == before

    # --overwrite replaces them
    code, stdout, err = infer(run_cli, images, out, "--overwrite")
    assert code == 1 and [r["error"] == "" for r in read_summary(out)] == [True, True, False]


@needs_model
def test_list_file_with_relative_paths_and_duplicate_stems(tmp_path, run_cli):
    write_flair(tmp_path / "site1" / "case.nii.gz", seed=1)
    write_flair(tmp_path / "site2" / "case.nrrd", seed=2)
    write_flair(tmp_path / "lists" / "case-2.nii.gz", seed=3)  # the name a duplicate would get: taken first
    listing = tmp_path / "lists" / "batch.txt"
    listing.write_text("# two sites\n../site1/case.nii.gz\n\n../site2/case.nrrd\ncase-2.nii.gz\n")
    out = tmp_path / "out"
    code, stdout, err = infer(run_cli, listing, out)
    assert code == 0, err
    rows = read_summary(out)
    assert [r["result"] for r in rows] == ["case", "case-3", "case-2"]
    assert [r["input"] for r in rows] == [str(listing.parent / e) for e in
                                          ("../site1/case.nii.gz", "../site2/case.nrrd", "case-2.nii.gz")]
    assert all(r["error"] == "" and r["decision"] in ("positive", "negative") for r in rows)
    for row in rows:
        assert read_prediction(out / row["result"]).provenance.input == row["input"]
    assert "3 of 3" in stdout


@needs_model
def test_mrb_is_refused_in_batch_mode(tmp_path, run_cli):
    write_flair(tmp_path / "images" / "a.nii.gz")
    code, stdout, err = infer(run_cli, tmp_path / "images", tmp_path / "out", "--mrb", tmp_path / "s.mrb")
    assert code == 2 and "--mrb" in err and "batch" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "s.mrb").exists()


@needs_model
def test_a_file_with_several_views_writes_one_result_per_view(tmp_path, run_cli, monkeypatch):
    from LesionDetectLib.methods import get_method
    from LesionDetectLib.io import read_image

    def two_views(self, path):
        image = read_image(path)
        return [("anterior", image), ("posterior", sitk.Flip(image, [True, False, False]))]

    monkeypatch.setattr(type(get_method("ms-flair-fcn")), "read_inputs", two_views)
    write_flair(tmp_path / "images" / "scan.nii.gz")
    write_flair(tmp_path / "images" / "other.nii.gz")
    out = tmp_path / "out"
    code, stdout, err = infer(run_cli, tmp_path / "images", out)
    assert code == 0, err
    rows = read_summary(out)
    assert [(r["view"], r["result"]) for r in rows] == [
        ("anterior", "other_anterior"), ("posterior", "other_posterior"),
        ("anterior", "scan_anterior"), ("posterior", "scan_posterior")]
    assert read_prediction(out / "scan_posterior").provenance.parameters["view"] == "posterior"

    # one such file alone: a result folder per view inside --out
    code, stdout, err = infer(run_cli, tmp_path / "images" / "scan.nii.gz", tmp_path / "one")
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["anterior", "posterior"]
    assert read_prediction(tmp_path / "one" / "anterior").provenance.parameters["view"] == "anterior"
