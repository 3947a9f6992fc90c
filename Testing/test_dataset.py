"""Dataset layout: the validator reports every problem at once; splits never divide a patient."""

from __future__ import annotations

import json
import random
from collections import Counter

import numpy as np
import pytest
import SimpleITK as sitk

from io_helpers import oblique_image, write_dicom_series
from LesionDetectLib.dataset import (Case, load_dataset, read_mask, split_by_patient, validate_dataset,
                                     write_dataset_json)
from LesionDetectLib.errors import LesionDetectError
from LesionDetectLib.geometry import Geometry
from LesionDetectLib.io import write_image
from LesionDetectLib.prediction import LesionBox, LesionPoint


def _image(root, case_id, seed=0):
    return write_image(oblique_image(np.int16, seed=seed), root / "images" / f"{case_id}.nii.gz")


def _mask(root, case_id, geometry: Geometry, value=1):
    labels = np.zeros(geometry.shape, np.uint8)
    labels[2, 3, 4] = value
    return write_image(geometry.image(labels), root / "labels" / f"{case_id}.nii.gz")


def _geometry(seed=0):
    return Geometry.of(oblique_image(np.int16, seed=seed))


def _case(case_id, patient, **paths):
    return {"id": case_id, "patient": patient, "image": f"images/{case_id}.nii.gz", **paths}


@pytest.fixture
def valid_dataset(tmp_path):
    root = tmp_path / "ds"
    geom = _geometry()
    for n, cid in enumerate(["c1", "c2", "c3"]):
        _image(root, cid, seed=n)
        _mask(root, cid, geom)
    write_dataset_json(root, "test", "CT", [
        _case("c1", "p1", mask="labels/c1.nii.gz", split="train"),
        _case("c2", "p1", mask="labels/c2.nii.gz", split="train"),
        _case("c3", "p2", mask=str((root / "labels/c3.nii.gz").resolve()), split="test"),  # absolute path
    ])
    return root


def test_valid_dataset(valid_dataset, run_cli):
    assert validate_dataset(valid_dataset) == []
    code, out, err = run_cli("validate", valid_dataset)
    assert code == 0, out + err
    assert "valid (3 cases, 2 patients, modality CT, splits test 1, train 2)" in out
    ds = load_dataset(valid_dataset / "dataset.json")
    assert [c.id for c in ds.cases] == ["c1", "c2", "c3"]
    assert ds.cases[0].mask == valid_dataset / "labels/c1.nii.gz"  # relative to dataset.json
    assert ds.cases[2].mask.is_absolute() and ds.cases[2].mask.exists()
    assert read_mask(ds.cases[0].mask).sum() == 1


def test_every_problem_reported_at_once(tmp_path, run_cli):
    root = tmp_path / "ds"
    geom = _geometry()
    _image(root, "ok")
    _image(root, "shifted")
    shifted = Geometry(geom.size, geom.spacing, tuple(np.add(geom.origin, (5.0, 0, 0))), geom.direction)
    _mask(root, "shifted", shifted)
    _image(root, "extra_label")
    _mask(root, "extra_label", geom, value=3)
    cases = [
        _case("ok", "p1"),
        _case("gone", "p2"),  # image file missing
        _case("shifted", "p3", mask="labels/shifted.nii.gz"),
        _case("extra_label", "p4", mask="labels/extra_label.nii.gz"),
        _case("ok", "p5"),  # duplicate id
        {"id": "nopatient", "image": "images/ok.nii.gz"},  # missing key
        _case("leak1", "p6", split="train") | {"image": "images/ok.nii.gz"},
        _case("leak2", "p6", split="test") | {"image": "images/ok.nii.gz"},
    ]
    (root / "dataset.json").write_text(json.dumps({"name": "bad", "modality": "XR", "labels": {"0": "bg", "1": "x"},
                                                   "cases": cases}))
    problems = validate_dataset(root)
    text = "\n".join(problems)
    assert '"modality" is \'XR\'; expected one of CT, MR, NM' in text
    assert 'case #5 ("nopatient"): missing or empty "patient"' in text
    assert 'case id "ok" is used by 2 cases' in text
    assert 'patient "p6" has cases in more than one split (test: leak2; train: leak1)' in text
    assert f'case "gone": image {root / "images/gone.nii.gz"}: does not exist' in text
    assert f'case "shifted": mask {root / "labels/shifted.nii.gz"}: has a different geometry from the image' in text
    assert "origin [-118.45, 67.89, -0.321] vs [-123.45, 67.89, -0.321]" in text
    assert 'holds label value(s) 3 that "labels" does not list (it lists 0, 1)' in text
    assert len(problems) == 7, text

    code, out, err = run_cli("validate", root)
    assert code == 1
    assert out.count("problem: ") == 7
    assert "7 problem(s) found" in out


def test_bad_json_and_missing_dataset(tmp_path, run_cli):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "dataset.json").write_text('{"name": "x", "cases": [,]}')
    code, out, _ = run_cli("validate", root)
    assert code == 1
    assert f"{root / 'dataset.json'}: is not valid JSON" in out
    with pytest.raises(LesionDetectError, match="is not valid JSON"):
        load_dataset(root)

    empty = tmp_path / "empty"
    empty.mkdir()
    code, out, _ = run_cli("validate", empty)
    assert code == 1 and "not found: a dataset is a folder with a dataset.json" in out

    code, out, err = run_cli("validate", tmp_path / "typo")
    assert code == 2 and f"{tmp_path / 'typo'}: does not exist" in err


def test_load_refuses_structural_problems(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    (root / "dataset.json").write_text(json.dumps({"name": "x", "modality": "CT", "labels": {}, "cases": [{}]}))
    with pytest.raises(LesionDetectError, match=r'case #0: missing or empty "id".*lesiondetect validate'):
        load_dataset(root)
    (root / "dataset.json").write_text(json.dumps({"name": "x", "modality": "CT", "labels": {"bg": "background"},
                                                   "cases": [{"id": "a", "patient": "p", "image": "a.nrrd",
                                                              "split": 1}]}))
    problems = validate_dataset(root)
    assert any('"labels" must be an object whose keys are label numbers' in p for p in problems)
    assert any('case #0 ("a"): "split" must be a name' in p for p in problems)
    assert any(p.startswith('case "a": image ') and "does not exist" in p for p in problems)


def test_wrong_modality_from_dicom_tag(tmp_path):
    root = tmp_path / "ds"
    write_dicom_series(root / "images" / "mr1", slices=3, modality="MR")
    write_dataset_json(root, "ct set", "CT", [{"id": "mr1", "patient": "p", "image": "images/mr1"}])
    problems = validate_dataset(root)
    assert problems == [f'case "mr1": image {root / "images/mr1"}: is a MR image (DICOM Modality tag) but the '
                        'dataset\'s modality is CT; move it to a MR dataset or fix "modality"']


def test_bad_image_content_reported(tmp_path):
    root = tmp_path / "ds"
    nan = sitk.GetArrayFromImage(oblique_image(np.float32))
    nan[0, 0, 0] = np.nan
    write_image(sitk.GetImageFromArray(nan), root / "images/nan.nrrd")
    (root / "images/broken.nii.gz").write_bytes(b"not an image")
    write_dataset_json(root, "x", "CT", [{"id": "nan", "patient": "a", "image": "images/nan.nrrd"},
                                         {"id": "broken", "patient": "b", "image": "images/broken.nii.gz"}])
    problems = validate_dataset(root)
    assert len(problems) == 2
    assert "NaN or infinite" in problems[0] and problems[0].startswith('case "nan": image ')
    assert "is not a readable NIfTI file" in problems[1]


def test_segmentation_and_markups(tmp_path):
    segnrrd = pytest.importorskip("LesionDetectLib.segnrrd")
    markups = pytest.importorskip("LesionDetectLib.markups")
    root = tmp_path / "ds"
    geom = _geometry()
    _image(root, "a")
    labels = np.zeros(geom.shape, np.uint8)
    labels[1:3, 2:4, 3:6] = 1
    segnrrd.write_segmentation(root / "labels/a.seg.nrrd", labels, geom, [segnrrd.lesion_segment()])
    other = _geometry()
    other = Geometry((4, 4, 4), other.spacing, other.origin, other.direction)
    segnrrd.write_segmentation(root / "labels/a_wrong.seg.nrrd", np.zeros(other.shape, np.uint8), other,
                               [segnrrd.lesion_segment()])
    inside = geom.index_to_lps((4.0, 3.0, 2.0))
    outside = geom.index_to_lps((4.0, 3.0, 40.0))
    markups.write_points(root / "points/a.mrk.json", [LesionPoint(inside, 0.9), LesionPoint(outside, 0.4)])
    centre, size, axes = geom.axis_aligned_box((3, 2, 1), (5, 3, 2))
    markups.write_boxes(root / "boxes/a.mrk.json", [LesionBox(centre, size, 0.8, axes=tuple(axes.ravel()))])
    (root / "points/bad.mrk.json").write_text("{not json")
    write_dataset_json(root, "x", "CT", [
        {"id": "a", "patient": "p", "image": "images/a.nii.gz", "mask": "labels/a.seg.nrrd",
         "points": "points/a.mrk.json", "boxes": "boxes/a.mrk.json"},
        {"id": "b", "patient": "q", "image": "images/a.nii.gz", "mask": "labels/a_wrong.seg.nrrd",
         "points": "points/bad.mrk.json"},
    ])
    problems = validate_dataset(root)
    assert len(problems) == 3, problems
    assert problems[0].startswith(f'case "a": points {root / "points/a.mrk.json"}: point 1 at LPS')
    assert "lies outside the image" in problems[0]
    assert problems[1].startswith('case "b": mask ') and "size [4, 4, 4] vs [9, 7, 5]" in problems[1]
    assert problems[2].startswith(f'case "b": points {root / "points/bad.mrk.json"}') and "JSON" in problems[2]
    ds = load_dataset(root)
    mask = read_mask(ds.cases[0].mask, geom)
    assert mask.shape == geom.shape and mask.sum() == labels.sum()


def _cases(rng: random.Random) -> list[Case]:
    patients = [f"P{n:03d}" for n in range(rng.randint(1, 60))]
    return [Case(id=f"{p}-{k}", patient=p, image=None) for p in patients for k in range(rng.randint(1, 4))]


def test_split_never_divides_a_patient_and_is_deterministic():
    rng = random.Random(1234)
    for trial in range(300):
        cases = _cases(rng)
        names = rng.sample(["train", "val", "test", "extra"], rng.randint(1, 4))
        fractions = {k: rng.choice([0.0, 0.05, 0.1, 0.2, 0.5, 0.7]) for k in names}
        if not any(fractions.values()):
            fractions[names[0]] = 1.0
        seed = rng.randint(0, 10 ** 6)
        splits = split_by_patient(cases, fractions, seed=seed)
        positive = [k for k, v in fractions.items() if v > 0]
        assert list(splits) == positive
        # every case exactly once, and each patient in exactly one split
        assert sorted(c.id for s in splits.values() for c in s) == sorted(c.id for c in cases)
        owner = {}
        for name, members in splits.items():
            for c in members:
                assert owner.setdefault(c.patient, name) == name, (trial, c.patient)
        # fractions honoured (in patients) to within one patient, plus one for each tiny split topped up
        n_patients = len({c.patient for c in cases})
        per_split = Counter(owner.values())
        total = sum(fractions[k] for k in positive)
        ideals = {k: n_patients * fractions[k] / total for k in positive}
        slack = 1 + sum(ideal < 1 for ideal in ideals.values())
        for k, ideal in ideals.items():
            assert abs(per_split[k] - ideal) < slack + 1e-9, (trial, k, per_split[k], ideal)
            if n_patients >= len(positive):
                assert per_split[k] >= 1
        assert split_by_patient(cases, fractions, seed=seed) == splits


def test_split_seed_changes_assignment_and_fractions_are_checked():
    cases = [Case(id=str(n), patient=f"p{n}", image=None) for n in range(40)]
    a = split_by_patient(cases, {"train": 0.8, "test": 0.2}, seed=0)
    b = split_by_patient(cases, {"train": 0.8, "test": 0.2}, seed=1)
    assert [len(a["train"]), len(a["test"])] == [32, 8]
    assert {c.id for c in a["test"]} != {c.id for c in b["test"]}
    with pytest.raises(LesionDetectError, match="split fractions"):
        split_by_patient(cases, {"train": -0.1, "test": 1.1})
    with pytest.raises(LesionDetectError, match="split fractions"):
        split_by_patient(cases, {"train": 0.0})


# --- the one case-selection policy: split_cases / cases_for ----------------------------------------

def test_split_cases_by_patient_when_the_dataset_has_no_splits():
    from LesionDetectLib.dataset import split_cases

    rng = random.Random(99)
    for trial in range(100):
        cases = _cases(rng)
        fractions = rng.choice([{"train": 0.72, "val": 0.10, "test": 0.18}, {"train": 0.85, "val": 0.15},
                                {"train": 1.0}, {"train": 0.8, "validation": 0.2}])
        seed = rng.randint(0, 1000)
        parts = split_cases(cases, fractions, seed=seed)
        assert list(parts) == ["train", "val", "test"]
        assert sorted(c.id for p in parts.values() for c in p) == sorted(c.id for c in cases)
        owner = {}
        for name, members in parts.items():
            for c in members:
                assert owner.setdefault(c.patient, name) == name, (trial, c.patient)
        expected = split_by_patient(cases, {"val" if k == "validation" else k: v for k, v in fractions.items()}, seed)
        assert {k: v for k, v in parts.items() if v or k in expected} == expected
        assert split_cases(cases, fractions, seed=seed) == parts  # same seed, same parts
    cases = [Case(id=str(n), patient=f"p{n}", image=None) for n in range(40)]
    assert split_cases(cases, {"train": 0.5, "test": 0.5}, 0) != split_cases(cases, {"train": 0.5, "test": 0.5}, 1)
    with pytest.raises(LesionDetectError, match="unknown split 'holdout'"):
        split_cases(cases, {"train": 0.8, "holdout": 0.2})


def test_split_cases_honours_the_dataset_splits():
    from LesionDetectLib.dataset import split_cases

    cases = [Case("a", "p1", None, split="train"), Case("b", "p2", None, split="validation"),
             Case("c", "p3", None, split="val"), Case("d", "p4", None, split="test"),
             Case("e", "p5", None), Case("f", "p6", None, split="extra"), Case("g", "p1", None, split="train")]
    for fractions in ({"train": 0.5, "test": 0.5}, {"train": 1.0}):  # fractions are not used
        parts = split_cases(cases, fractions, seed=3)
        assert {k: [c.id for c in v] for k, v in parts.items()} == {"train": ["a", "g"], "val": ["b", "c"],
                                                                    "test": ["d"]}
    only_train = [Case("a", "p1", None, split="train"), Case("b", "p2", None)]
    assert {k: [c.id for c in v] for k, v in split_cases(only_train, {"train": 1.0}).items()} == \
        {"train": ["a"], "val": [], "test": []}


def test_cases_for():
    from LesionDetectLib.dataset import cases_for

    plain = [Case(id=str(n), patient=f"p{n // 2}", image=None) for n in range(20)]
    fractions = {"train": 0.7, "test": 0.3}
    test = cases_for(plain, "test", fractions, seed=4)
    train = cases_for(plain, "train", fractions, seed=4)
    assert 0 < len(test) < 20 and {c.patient for c in test}.isdisjoint({c.patient for c in train})
    assert sorted(c.id for c in test + train) == sorted(c.id for c in plain)
    assert cases_for(plain, "test", fractions, seed=4) == test
    # a dataset without splits is trained and tested whole: an empty part gives every case
    assert cases_for(plain, "test", {"train": 1.0}) == plain
    assert cases_for(plain, "val", fractions) == plain
    assert cases_for(plain, "validation", fractions) == plain
    assert cases_for(plain, "all", fractions) == plain
    assert cases_for([], "test", fractions) == []
    # with the dataset's own splits, an empty part stays empty
    split = [Case("a", "p1", None, split="train"), Case("b", "p2", None, split="validation"),
             Case("c", "p3", None)]
    assert [c.id for c in cases_for(split, "val", fractions)] == ["b"]
    assert [c.id for c in cases_for(split, "validation", fractions)] == ["b"]
    assert cases_for(split, "test", fractions) == []
    assert [c.id for c in cases_for(split, "all", fractions)] == ["a", "b", "c"]
    with pytest.raises(LesionDetectError, match="unknown split 'holdout'.*train, val.*test, all"):
        cases_for(split, "holdout", fractions)


def test_stratified_split_keeps_each_class_share_per_part():
    from LesionDetectLib.dataset import Case, split_cases

    # 200 patients, 10 % positive; two cases (views) per patient
    cases = [Case(id=f"{p}-{v}", patient=str(p), image=f"{p}-{v}.png", label=int(p % 10 == 0))
             for p in range(200) for v in ("a", "b")]
    fractions = {"train": 0.595, "val": 0.105, "test": 0.3}
    parts = split_cases(cases, fractions, seed=3, stratify=lambda c: c.label)
    for name, share in fractions.items():
        patients = {c.patient for c in parts[name]}
        positives = {c.patient for c in parts[name] if c.label}
        assert abs(len(positives) - 20 * share) <= 1 and abs(len(patients) - 200 * share) <= 2
    seen = [c.patient for part in parts.values() for c in part]
    assert sorted(set(seen)) == sorted({c.patient for c in cases}) and len(seen) == len(cases)
    assert all(len({p for p in (c.patient for c in parts[n])} & {c.patient for c in parts[m]}) == 0
               for n in parts for m in parts if n < m)
    assert split_cases(cases, fractions, seed=3, stratify=lambda c: c.label) == parts
