"""Detections a reviewer rejected in Slicer ("negative_points" / "negative_boxes" of a dataset
case) are read by dataset.hard_negatives and become negatives in the training samples of
bone-ct-patch (patches), ms-flair-fcn (tiles) and liver-frcnn (slices / crops with no lesion
target), each behind the config switch "rejected_negatives" (default on)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from LesionDetectLib import markups
from LesionDetectLib.dataset import (hard_negative_centres, hard_negatives, load_dataset, validate_dataset,
                                     write_dataset_json)
from LesionDetectLib.errors import LesionDetectError
from LesionDetectLib.findings import LesionBox, LesionPoint
from LesionDetectLib.geometry import Geometry
from LesionDetectLib.methods import get_method
from LesionDetectLib.training import merge_config


# --- the dataset reader -----------------------------------------------------------------------------

def _one_case_dataset(root: Path, **entry_extra) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    hu = np.full((6, 20, 20), -1000.0, np.float32)
    hu[:, 5:15, 5:15] = 400.0
    image = sitk.GetImageFromArray(hu)
    image.SetOrigin((-5.0, 3.0, 10.0))
    sitk.WriteImage(image, str(root / "img.nrrd"))
    write_dataset_json(root, "t", "CT", [{"id": "a", "patient": "p", "image": "img.nrrd", **entry_extra}])
    return root


def test_reader_returns_rejected_points_and_boxes_with_their_scores(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    markups.write_points(root / "neg.mrk.json", [LesionPoint((0.0, 8.0, 12.0), score=0.71),
                                                 LesionPoint((2.0, 9.0, 13.0), score=0.42)])
    markups.write_boxes(tmp_path / "negbox.mrk.json", [LesionBox((1.0, 10.0, 11.0), (4.0, 4.0, 2.0), score=0.66)])
    _one_case_dataset(root, negative_points="neg.mrk.json", negative_boxes=str(tmp_path / "negbox.mrk.json"))
    case = load_dataset(root).cases[0]
    assert case.negative_points == root / "neg.mrk.json"  # relative to dataset.json, like "points"
    points, boxes = hard_negatives(case)
    assert [p.score for p in points] == pytest.approx([0.71, 0.42]) and points[0].position == (0.0, 8.0, 12.0)
    assert len(boxes) == 1 and boxes[0].score == pytest.approx(0.66) and boxes[0].center == (1.0, 10.0, 11.0)
    np.testing.assert_allclose(hard_negative_centres(case), [[0, 8, 12], [2, 9, 13], [1, 10, 11]])
    assert validate_dataset(root) == []


def test_reader_gives_empty_lists_without_negatives(tmp_path):
    case = load_dataset(_one_case_dataset(tmp_path / "ds")).cases[0]
    assert hard_negatives(case) == ([], []) and hard_negative_centres(case).shape == (0, 3)


def test_missing_or_wrong_negative_files_are_errors_naming_the_file(tmp_path):
    root = _one_case_dataset(tmp_path / "ds", negative_points="gone.mrk.json")
    with pytest.raises(LesionDetectError, match=r"gone\.mrk\.json: not found: case \"a\" names it as its "
                                                r"\"negative_points\""):
        hard_negatives(load_dataset(root).cases[0])
    assert any("negative_points" in p and "gone.mrk.json" in p for p in validate_dataset(root))
    # a points file where boxes are expected
    markups.write_points(tmp_path / "p.mrk.json", [LesionPoint((0.0, 8.0, 12.0))])
    root = _one_case_dataset(tmp_path / "ds2", negative_boxes=str(tmp_path / "p.mrk.json"))
    with pytest.raises(LesionDetectError, match=r"p\.mrk\.json: holds Fiducial markups where only ROI"):
        hard_negatives(load_dataset(root).cases[0])
    (tmp_path / "bad.mrk.json").write_text("{not json")
    root = _one_case_dataset(tmp_path / "ds3", negative_points=str(tmp_path / "bad.mrk.json"))
    with pytest.raises(LesionDetectError, match=r"bad\.mrk\.json: not a markups file"):
        hard_negatives(load_dataset(root).cases[0])
    # a non-string path is a structural problem
    doc = json.loads((root / "dataset.json").read_text())
    doc["cases"][0]["negative_points"] = 3
    (root / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(LesionDetectError, match='"negative_points" must be a path string'):
        load_dataset(root)


def test_validate_flags_a_rejected_point_outside_the_image(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    markups.write_points(root / "neg.mrk.json", [LesionPoint((500.0, 8.0, 12.0))])
    _one_case_dataset(root, negative_points="neg.mrk.json")
    problems = validate_dataset(root)
    assert len(problems) == 1 and "negative_points" in problems[0] and "outside the image" in problems[0]


# --- bone-ct-patch ----------------------------------------------------------------------------------

BONE_TINY = {"width": 0.0625, "patch_pixels": 32, "fc_hidden": [16, 16], "augment": 2, "batch_size": 16,
             "parse_tile": 4, "epochs": 1, "split": {"train": 1.0}}


def _bone_dataset(root: Path, rejected_index_xyz) -> tuple[Path, Geometry]:
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    shape = (8, 56, 56)
    hu = rng.normal(40, 15, shape).astype(np.float32)
    hu[:, 8:48, 8:48] = 800
    hu[:, 10:46, 10:46] = 250 + rng.normal(0, 30, (8, 36, 36))
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((1.0, 1.0, 3.0))
    image.SetOrigin((-20.0, 15.0, -100.0))
    geometry = Geometry.of(image)
    sitk.WriteImage(image, str(root / "c.nrrd"))
    markups.write_points(root / "points.mrk.json", [LesionPoint(geometry.index_to_lps(np.array([20.0, 18.0, 3.0])))])
    markups.write_points(root / "rejected.mrk.json",
                         [LesionPoint(geometry.index_to_lps(np.asarray(rejected_index_xyz, float)), score=0.8)])
    write_dataset_json(root, "bone", "CT", [{"id": "c", "patient": "p", "image": "c.nrrd",
                                             "points": "points.mrk.json", "negative_points": "rejected.mrk.json"}])
    return root, geometry


def test_bone_ct_patch_trains_on_a_patch_centred_on_the_rejected_point(tmp_path):
    from LesionDetectLib.methods.bone_ct_patch import data

    method = get_method("bone-ct-patch")
    rejected = (40.0, 42.0, 6.0)  # x, y, z index: bone, its patch clear of the lesion's
    root, geometry = _bone_dataset(tmp_path / "ds", rejected)
    config = merge_config(method.defaults, BONE_TINY)
    train, _ = method.training_data(load_dataset(root), config, seed=0)
    hu = data.hu_array(sitk.ReadImage(str(root / "c.nrrd")))
    want = data.extract_patches(hu, geometry.spacing, np.array([rejected[::-1]]), 15.0, 32)[0]
    hits = [i for i in range(len(train)) if torch.allclose(train.patches[i], want, atol=1e-4)]
    assert hits and all(float(train.labels[i]) == 0.0 for i in hits)  # present, as a negative
    assert len(train) == 2 + 2 + 2  # 1 lesion x augment 2, 2 random negatives, rejected point x augment 2
    off, _ = method.training_data(load_dataset(root), {**config, "rejected_negatives": False}, seed=0)
    assert len(off) == 4 and not any(torch.allclose(p, want, atol=1e-4) for p in off.patches)


def test_bone_ct_patch_leaves_out_a_rejected_point_on_a_lesion(tmp_path):
    method = get_method("bone-ct-patch")
    root, _ = _bone_dataset(tmp_path / "ds", (21.0, 18.0, 3.0))  # 1 mm from the annotated lesion
    train, _ = method.training_data(load_dataset(root), merge_config(method.defaults, BONE_TINY), seed=0)
    assert len(train) == 4 and int(train.labels.sum()) == 2


# --- ms-flair-fcn -----------------------------------------------------------------------------------

FLAIR_TINY = {"tile_size": 16, "tile_jitter": 2, "context_slices": 0, "negative_ratio": 1.0, "unet_base": 4,
              "unet_depth": 2, "epochs": 1, "batch_size": 4}


def test_ms_flair_fcn_cuts_a_lesion_free_tile_round_the_rejected_point(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    rng = np.random.default_rng(0)
    brain = np.zeros((6, 48, 48), np.float32)
    brain[:, 6:42, 6:42] = 100 + rng.normal(0, 5, (6, 36, 36))
    mask = np.zeros(brain.shape, np.uint8)
    mask[2:4, 12:15, 12:15] = 1
    brain[mask > 0] = 180
    image = sitk.GetImageFromArray(brain)
    image.SetOrigin((10.0, -4.0, 2.0))
    geometry = Geometry.of(image)
    sitk.WriteImage(image, str(root / "flair.nii.gz"))
    sitk.WriteImage(geometry.image(mask), str(root / "mask.nii.gz"))
    rejected_xyz = (32.0, 30.0, 4.0)
    markups.write_boxes(root / "rejected.mrk.json", [LesionBox(geometry.index_to_lps(np.array(rejected_xyz)),
                                                               (3.0, 3.0, 1.0), score=0.6)])
    write_dataset_json(root, "flair", "MR", [{"id": "c", "patient": "p", "image": "flair.nii.gz",
                                              "mask": "mask.nii.gz", "negative_boxes": "rejected.mrk.json"}])
    method = get_method("ms-flair-fcn")
    config = merge_config(method.defaults, FLAIR_TINY)
    train, _ = method.training_data(load_dataset(root), config, seed=0)
    _, volume, _, _ = method.load_case(load_dataset(root).cases[0], config)
    x, y, z = (int(v) for v in rejected_xyz)
    want = volume[z, y - 10:y + 10, x - 10:x + 10]  # tile 16 + 2 x jitter 2, centred on the point
    hits = [i for i in range(len(train.images)) if np.allclose(train.images[i][0], want)]
    assert len(hits) == 1 and not train.labels[hits[0]].any()
    off, _ = method.training_data(load_dataset(root), {**config, "rejected_negatives": False}, seed=0)
    assert len(off.images) == len(train.images) - 1
    assert not any(np.allclose(im[0], want) for im in off.images)


# --- liver-frcnn -----------------------------------------------------------------------------------

LIVER_TINY = {"backbone": "resnet18", "image_size": 64, "anchor_sizes": [8, 12, 16, 24, 32], "epochs": 1,
              "batch_size": 2, "slice_batch": 4, "lr": 0.005, "rpn_proposals_test": 50, "backbone_stages": 2,
              "fpn_channels": 16, "box_head_size": 32}


def _liver_case_with_rejected_box(tmp_path):
    from LesionDetectLib import synth

    root = synth.generate("liver-ct", tmp_path / "ds", cases=1, seed=0, size="small")
    doc = json.loads((root / "dataset.json").read_text())
    image = sitk.ReadImage(str(root / doc["cases"][0]["image"]))
    geometry = Geometry.of(image)
    # a box in the body, on a slice with no lesion, far from every lesion key slice
    lesion_slices = {e["slice"] for e in doc["cases"][0]["key_slices"]}
    k = max(range(image.GetSize()[2]), key=lambda s: min(abs(s - t) for t in lesion_slices))
    centre = geometry.index_to_lps(np.array([image.GetSize()[0] / 2, image.GetSize()[1] / 2, float(k)]))
    markups.write_boxes(root / "rejected.mrk.json", [LesionBox(centre, (12.0, 12.0, 4.0), score=0.55)])
    doc["cases"][0]["negative_boxes"] = "rejected.mrk.json"
    (root / "dataset.json").write_text(json.dumps(doc))
    return load_dataset(root), k


def test_liver_frcnn_rejected_box_is_a_training_crop_with_no_lesion_target(tmp_path):
    from LesionDetectLib.methods.liver_frcnn import negatives

    dataset, k = _liver_case_with_rejected_box(tmp_path)
    method = get_method("liver-frcnn")
    config = merge_config(method.defaults, LIVER_TINY, {"train_crop": 32, "flip": False})
    items = negatives.rejected_items(dataset.cases[0], config)
    assert len(items) == 1
    stack, truth, focus = items[0]
    assert len(truth) == 0 and stack.dtype == np.uint8
    samples = negatives.RejectedSamples(dataset.cases, config)
    image, target = samples[0]
    assert image.shape == (3, 32, 32) and target["boxes"].shape == (0, 4) and len(target["labels"]) == 0
    combined = negatives.with_rejected([("x", {})], dataset.cases, config)
    assert len(combined) == 2
    assert negatives.with_rejected([1], dataset.cases, {**config, "rejected_negatives": False}) == [1]
    # torchvision's Faster R-CNN trains on the empty target
    torch.manual_seed(0)
    model = method.build_model(config).train()
    loss = method.batch_loss(model, method.collate([samples[0], samples[0]]), torch.device("cpu"))
    assert torch.isfinite(loss)
    loss.backward()


def test_liver_frcnn_rejected_box_over_a_lesion_is_left_out(tmp_path):
    from LesionDetectLib.methods.liver_frcnn import negatives

    dataset, _ = _liver_case_with_rejected_box(tmp_path)
    case = dataset.cases[0]
    lesion = markups.read_boxes(case.boxes)[0]
    markups.write_boxes(case.negative_boxes, [LesionBox(lesion.center, (6.0, 6.0, 2.0), score=0.9)], overwrite=True)
    config = merge_config(get_method("liver-frcnn").defaults, LIVER_TINY)
    assert negatives.rejected_items(case, config) == []


def test_liver_frcnn_training_data_includes_the_rejected_samples(tmp_path):
    """The method's training set holds the rejected-box samples once the method is wired to
    negatives.with_rejected (its DEFAULTS then hold "rejected_negatives")."""
    method = get_method("liver-frcnn")
    if "rejected_negatives" not in method.defaults:
        pytest.skip("liver-frcnn's training_data does not call negatives.with_rejected yet")
    dataset, _ = _liver_case_with_rejected_box(tmp_path)
    config = merge_config(method.defaults, LIVER_TINY, {"val_fraction": 0.0})
    train, _ = method.training_data(dataset, config, seed=0)
    off, _ = method.training_data(dataset, {**config, "rejected_negatives": False}, seed=0)
    assert len(train) == len(off) + 1
    image, target = train[len(train) - 1]
    assert target["boxes"].shape == (0, 4)
