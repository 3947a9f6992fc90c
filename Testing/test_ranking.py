"""`lesiondetect rank`: a dataset's unreviewed cases ordered by the model's uncertainty."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from LesionDetectLib.dataset import write_dataset_json
from LesionDetectLib.errors import LesionDetectError
from LesionDetectLib.findings import ClassResult, LesionBox, LesionPoint
from LesionDetectLib.geometry import Geometry
from LesionDetectLib.methods import get_method
from LesionDetectLib.models import ModelCard, save_model
from LesionDetectLib.prediction import Prediction, Provenance
from LesionDetectLib.ranking import binary_entropy, class_entropy, rank, score_prediction
from LesionDetectLib.training import config_defaults, merge_config


def _entropy(p: float) -> float:  # independent of the module's clipping
    return 0.0 if p in (0.0, 1.0) else -(p * math.log2(p) + (1 - p) * math.log2(1 - p))


def _geometry(shape=(4, 6, 8), spacing=(1.0, 1.0, 2.0)) -> Geometry:
    image = sitk.Image(shape[::-1], sitk.sitkUInt8)
    image.SetSpacing(spacing)
    return Geometry.of(image)


def _pred(**parts) -> Prediction:
    return Prediction(geometry=parts.pop("geometry", _geometry()), provenance=Provenance(method="x"), **parts)


# --- scores per output kind ---------------------------------------------------------------------------

def test_class_entropy_is_the_binary_entropy_and_peaks_at_one_half():
    for p in (0.01, 0.2, 0.5, 0.77, 0.999):
        assert class_entropy({"normal": 1 - p, "metastasis": p}) == pytest.approx(_entropy(p), abs=1e-9)
    assert class_entropy({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}) == pytest.approx(1.0)
    assert class_entropy({"a": 1.0, "b": 0.0, "c": 0.0}) == pytest.approx(0.0, abs=1e-9)
    sure = score_prediction(_pred(classes=[ClassResult({"normal": 0.95, "metastasis": 0.05})]))
    unsure = score_prediction(_pred(classes=[ClassResult({"normal": 0.45, "metastasis": 0.55})]))
    assert sure["kind"] == unsure["kind"] == "class entropy" and unsure["score"] > sure["score"]
    # the image-level result decides, not a slice-level one
    mixed = [ClassResult({"n": 0.5, "p": 0.5}, scope="slice", index=3), ClassResult({"n": 0.9, "p": 0.1})]
    assert score_prediction(_pred(classes=mixed))["score"] == pytest.approx(_entropy(0.1), abs=1e-6)


def test_map_score_is_the_mean_entropy_of_the_region_of_interest():
    prob = np.zeros((4, 6, 8), np.float32)
    prob[1, 2, 3], prob[1, 2, 4], prob[2, 2, 2] = 0.5, 0.9, 0.005  # the last is outside the ROI (< 0.01)
    result = score_prediction(_pred(probability=prob))
    assert result["kind"] == "map entropy"
    assert result["score"] == pytest.approx((_entropy(0.5) + _entropy(0.9)) / 2, abs=1e-5)
    assert result["detail"] == {"roi_voxels": 2, "uncertain_mm3": 2.0}  # one voxel over 0.5 bit, 2 mm^3
    assert score_prediction(_pred(probability=np.zeros((4, 6, 8), np.float32)))["score"] == 0.0


def test_box_score_counts_findings_near_the_threshold():
    boxes = [LesionBox((0, 0, 0), (1, 1, 1), score=s) for s in (0.52, 0.65, 0.95, 0.31)]
    result = score_prediction(_pred(boxes=boxes, threshold=0.5))
    assert result["kind"] == "score margin" and result["score"] == 3  # 0.52, 0.65, 0.31 are within 0.2
    assert result["tie_break"] == pytest.approx(np.mean([1 - 0.02 / 0.2, 1 - 0.15 / 0.2, 1 - 0.19 / 0.2]))
    points = score_prediction(_pred(points=[LesionPoint((0, 0, 0), 0.9)], threshold=0.5), margin=0.5)
    assert points["score"] == 1
    assert score_prediction(_pred())["kind"] == "nothing found"


def test_binary_entropy_matches_the_formula():
    p = np.array([0.0, 0.1, 0.5, 0.8, 1.0])
    np.testing.assert_allclose(binary_entropy(p), [_entropy(v) for v in p], atol=1e-9)


# --- end to end on a tiny synthetic dataset -------------------------------------------------------------

SCAN_TINY = {"compact_widths": [4, 8], "input_size": [32, 16], "tta_flip": False, "cam_points": 1}


def _scan_model(folder: Path) -> Path:
    method = get_method("bone-scan-cls")
    config = merge_config(config_defaults(method), SCAN_TINY)
    torch.manual_seed(3)
    net = method.build_model(config)
    save_model(folder, net.state_dict(), ModelCard(method.name, method.modality, config, class_names=
                                                   ["normal", "metastasis"], thresholds={"image": 0.5}))
    return folder


def _scan_dataset(root: Path, n: int = 6, reviewed=("s1",)) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    cases = []
    for k in range(n):
        counts = rng.gamma(2.0 + 3 * k, 10.0, (40, 20)).astype(np.float32)
        image = sitk.GetImageFromArray(counts)
        image.SetSpacing((2.0, 2.0))
        sitk.WriteImage(image, str(root / f"s{k}.nrrd"))
        entry = {"id": f"s{k}", "patient": f"p{k}", "image": f"s{k}.nrrd"}
        if entry["id"] in reviewed:
            entry["review"] = {"reviewer": "t", "findings": []}
        cases.append(entry)
    write_dataset_json(root, "scans", "NM", cases)
    return root


def test_rank_orders_unreviewed_cases_by_entropy_and_writes_the_file(tmp_path, run_cli):
    data, model = _scan_dataset(tmp_path / "ds"), _scan_model(tmp_path / "model")
    out = tmp_path / "ranking.json"
    code, stdout, err = run_cli("rank", "--data", data, "--model", model, "--out", out, "--device", "cpu")
    assert code == 0, err
    result = json.loads(out.read_text())
    ids = [r["id"] for r in result["cases"]]
    assert sorted(ids) == ["s0", "s2", "s3", "s4", "s5"] and result["reviewed"] == 1  # s1 was reviewed
    assert [r["rank"] for r in result["cases"]] == [1, 2, 3, 4, 5]
    # independently: the model's probability of each case, and its binary entropy
    from LesionDetectLib.training import load_trained

    method, net, card, device = load_trained(model, device="cpu")
    want = {}
    for case_id in ids:
        image = sitk.ReadImage(str(data / f"{case_id}.nrrd"))
        p = method.predict(net, card, image, device).classes[0].probabilities["metastasis"]
        want[case_id] = _entropy(p)
    assert ids == sorted(want, key=lambda c: -want[c])
    for row in result["cases"]:
        assert row["kind"] == "class entropy" and row["score"] == pytest.approx(want[row["id"]], abs=1e-4)
    lines = stdout.splitlines()
    assert "5 unreviewed case(s) ranked, 1 reviewed left out" in lines[0]
    assert [line.split()[1] for line in lines[2:7]] == ids  # the printed table, same order
    # CSV too; an existing file is refused without --overwrite
    code, _, err = run_cli("rank", "--data", data, "--model", model, "--out", out, "--device", "cpu")
    assert code == 2 and "already exists" in err
    code, _, _ = run_cli("rank", "--data", data, "--model", model, "--out", tmp_path / "r.csv", "--device", "cpu")
    assert code == 0 and (tmp_path / "r.csv").read_text().splitlines()[1].startswith(f"1,{ids[0]},")


def test_reviewing_a_case_removes_it_from_the_ranking(tmp_path):
    data, model = _scan_dataset(tmp_path / "ds", reviewed=()), _scan_model(tmp_path / "model")
    first = rank(data, model=model, device="cpu")
    top = first["cases"][0]["id"]
    doc = json.loads((data / "dataset.json").read_text())
    next(c for c in doc["cases"] if c["id"] == top)["review"] = {"findings": []}
    (data / "dataset.json").write_text(json.dumps(doc))
    second = rank(data, model=model, device="cpu")
    assert [r["id"] for r in second["cases"]] == [r["id"] for r in first["cases"][1:]]
    for c in doc["cases"]:
        c["review"] = {}
    (data / "dataset.json").write_text(json.dumps(doc))
    assert rank(data, model=model, device="cpu")["cases"] == []


def test_bad_inputs_are_clear_errors(tmp_path, run_cli):
    data, model = _scan_dataset(tmp_path / "ds"), _scan_model(tmp_path / "model")
    code, _, err = run_cli("rank", "--data", tmp_path / "nope", "--model", model)
    assert code == 2 and "nope: does not exist" in err
    code, _, err = run_cli("rank", "--data", data, "--model", model, "--out", tmp_path / "r.txt")
    assert code == 2 and "--out must end in .json or .csv" in err
    code, _, err = run_cli("rank", "--data", data, "--model", tmp_path / "no-model")
    assert code == 2 and "no-model" in err
    # a CT dataset with an NM model
    ct = tmp_path / "ct"
    ct.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 8, 8), np.float32)), str(ct / "a.nrrd"))
    write_dataset_json(ct, "ct", "CT", [{"id": "a", "patient": "p", "image": "a.nrrd"}])
    with pytest.raises(LesionDetectError, match="is a CT dataset; the model is a bone-scan-cls"):
        rank(ct, model=model, device="cpu")
    with pytest.raises(LesionDetectError, match="cannot tell which method.*pass --method or --model"):
        rank(ct, device="cpu")  # three CT methods
    with pytest.raises(LesionDetectError, match="score margin"):
        rank(data, model=model, margin=float("nan"))
    # one unreadable image: an error row ranked last, the rest still ranked
    (data / "s3.nrrd").write_bytes(b"not an image")
    result = rank(data, model=model, device="cpu")
    assert result["cases"][-1]["id"] == "s3" and result["cases"][-1]["score"] is None
    assert "s3.nrrd" in result["cases"][-1]["error"] and all(r["score"] is not None for r in result["cases"][:-1])


def test_map_method_ranks_by_entropy_and_writes_uncertainty_volumes(tmp_path, run_cli):
    method = get_method("ms-flair-fcn")
    config = merge_config(config_defaults(method), {"unet_base": 4, "unet_depth": 2, "context_slices": 0,
                                                    "operating_point": "pixel"})
    torch.manual_seed(0)
    save_model(tmp_path / "model", method.build_model(config).state_dict(),
               ModelCard(method.name, method.modality, config, thresholds={"pixel": 0.5}))
    root = tmp_path / "ds"
    root.mkdir()
    rng = np.random.default_rng(1)
    cases = []
    for k in range(3):
        head = np.zeros((6, 32, 32), np.float32)
        head[:, 4:28, 4:28] = 100 + rng.normal(0, 10 + 20 * k, (6, 24, 24))
        sitk.WriteImage(sitk.GetImageFromArray(head), str(root / f"f{k}.nii.gz"))
        cases.append({"id": f"f{k}", "patient": f"p{k}", "image": f"f{k}.nii.gz"})
    write_dataset_json(root, "flair", "MR", cases)
    code, out, err = run_cli("rank", "--data", root, "--model", tmp_path / "model", "--uncertainty-dir",
                             tmp_path / "unc", "--out", tmp_path / "r.json", "--device", "cpu")
    assert code == 0, err
    result = json.loads((tmp_path / "r.json").read_text())
    scores = [r["score"] for r in result["cases"]]
    assert scores == sorted(scores, reverse=True) and {r["kind"] for r in result["cases"]} == {"map entropy"}
    for row in result["cases"]:
        volume = sitk.ReadImage(row["uncertainty"])
        assert volume.GetSize() == (32, 32, 6)
        h = sitk.GetArrayFromImage(volume)
        assert h[h > 0].mean() == pytest.approx(row["score"], rel=1e-3)  # the map is what was scored
