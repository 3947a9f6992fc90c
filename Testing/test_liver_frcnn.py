"""Method 003 `liver-frcnn`: 3-slice input, networks, slice linking into 3-D boxes, FROC
(checked against MONAI), training/inference/evaluation end to end on tiny CT volumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from LesionDetectLib.dataset import load_dataset, write_dataset_json
from LesionDetectLib.errors import LesionDetectError
from LesionDetectLib.geometry import Geometry
from LesionDetectLib.methods import get_method
from LesionDetectLib.methods.liver_frcnn import (KeySliceSamples, case_stacks, froc_of,
                                                 key_slices)
from LesionDetectLib.methods.liver_frcnn.slices import (neighbour_offset, parse_slice_range, three_slice_stack,
                                                        window_to_uint8)
from LesionDetectLib.methods.liver_frcnn.volume import SliceLinker, chains_to_boxes, iou_3d, nms_3d
from LesionDetectLib.metrics import matching
from LesionDetectLib.metrics.froc import froc_summary
from LesionDetectLib.models import ModelCard

# an asymmetric, anisotropic, oblique grid: boxes must land where the voxels are
OBLIQUE = (0.98, 0.17, 0.0, -0.17, 0.98, 0.05, -0.0085, -0.05, 0.9986)


def _orthonormal(direction):
    q, _ = np.linalg.qr(np.asarray(direction).reshape(3, 3))
    return tuple((q * np.sign(np.diag(q))).ravel())


TINY = {"backbone": "resnet18", "image_size": 64, "anchor_sizes": [8, 12, 16, 24, 32], "epochs": 1,
        "batch_size": 2, "slice_batch": 4, "lr": 0.005, "rpn_proposals_test": 50}


def liver_volume(rng, shape=(10, 48, 56), spacing=(1.4, 1.2, 2.5), direction=None, lesions=1):
    """A small CT: fat, a 'liver' ellipse at 60 HU, dark spherical lesions at 0 HU.
    Returns (image, list of (z, y0, x0, y1, x1, zmin, zmax) per lesion in voxels)."""
    nz, ny, nx = shape
    z, y, x = np.mgrid[:nz, :ny, :nx]
    hu = np.full(shape, -100.0, dtype=np.float32)
    hu[((y - ny / 2) / (0.42 * ny)) ** 2 + ((x - nx / 2) / (0.42 * nx)) ** 2 <= 1] = 60.0
    truth = []
    for _ in range(lesions):
        cz, cy, cx = rng.integers(3, nz - 3), rng.integers(14, ny - 14), rng.integers(14, nx - 14)
        r = rng.uniform(4.0, 6.0)  # mm
        ball = (((z - cz) * spacing[2]) ** 2 + ((y - cy) * spacing[1]) ** 2 + ((x - cx) * spacing[0]) ** 2) <= r * r
        hu[ball] = 0.0
        zs, ys, xs = np.nonzero(ball)
        key = ball[cz]
        ky, kx = np.nonzero(key)
        truth.append((int(cz), ky.min(), kx.min(), ky.max() + 1, kx.max() + 1, zs.min(), zs.max()))
    hu += rng.normal(0, 5, shape).astype(np.float32)
    image = sitk.GetImageFromArray(hu.astype(np.int16))
    image.SetSpacing(spacing)
    image.SetOrigin((-31.5, 12.25, -140.0))
    if direction is not None:
        image.SetDirection(direction)
    return image, truth


def write_liver_dataset(root, n_cases=6, seed=0, test_patients=1, lesions=1):
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    cases = []
    for n in range(n_cases):
        image, truth = liver_volume(rng, lesions=lesions)
        sitk.WriteImage(image, str(root / "images" / f"c{n}.nrrd"))
        split = "test" if n >= n_cases - test_patients else ("val" if n == 0 else "train")
        cases.append({"id": f"c{n}", "patient": f"p{n}", "image": f"images/c{n}.nrrd", "split": split,
                      "key_slices": [{"slice": t[0], "box": [float(t[2]), float(t[1]), float(t[4]), float(t[3])],
                                      "lesion": i + 1} for i, t in enumerate(truth)]})
    write_dataset_json(root, "tiny-liver", "CT", cases)
    return root


# --- 3-slice input --------------------------------------------------------------------------

def test_window_maps_hu_to_0_255():
    out = window_to_uint8(np.array([-1000, -160, 40, 240, 3000]), (-160, 240))
    assert out.dtype == np.uint8 and out.tolist() == [0, 0, 128, 255, 255]
    with pytest.raises(ValueError):
        window_to_uint8(np.zeros(2), (100, 100))


def test_neighbours_are_interpolated_at_a_physical_distance():
    vol = np.arange(6, dtype=np.float32)[:, None, None] * np.ones((1, 2, 3), np.float32) * 10  # slice k holds 10k
    # 5 mm slices, neighbours 2 mm away: 0.4 slice -> values 10k -+ 4
    stack = three_slice_stack(vol, 3, neighbour_offset(5.0, 2.0), (0, 255))
    assert stack.shape == (3, 2, 3) and stack.dtype == np.uint8
    assert stack[:, 0, 0].tolist() == [26, 30, 34]
    # 1 mm slices: 2 slices away; None: adjacent slices; ends are clamped to the volume
    assert three_slice_stack(vol, 3, neighbour_offset(1.0, 2.0), (0, 255))[:, 1, 2].tolist() == [10, 30, 50]
    assert three_slice_stack(vol, 0, neighbour_offset(1.0, None), (0, 255))[:, 0, 0].tolist() == [0, 0, 10]


def test_slice_ranges():
    assert parse_slice_range(None, 4) == [0, 1, 2, 3]
    assert parse_slice_range("1:2", 4) == [1, 2]
    assert parse_slice_range(":1", 4) == [0, 1]
    assert parse_slice_range("2:", 4) == [2, 3]
    assert parse_slice_range([2, 99], 4) == [2, 3]
    with pytest.raises(ValueError, match="selects no slice"):
        parse_slice_range("7:9", 4)


def test_key_slice_samples_flip_boxes_with_the_image(tmp_path):
    ds = load_dataset(write_liver_dataset(tmp_path / "ds", n_cases=2))
    cfg = {**get_method("liver-frcnn").defaults, "flip": True}
    samples = KeySliceSamples(ds.cases[:1], cfg, train=True)
    torch.manual_seed(1)
    seen = set()
    for _ in range(12):
        image, target = samples[0]
        (x0, y0, x1, y1), = target["boxes"].tolist()
        # the dark lesion lies inside its box on the key slice (channel 1) whichever way it is flipped
        key = image[1].numpy()
        inside = key[int(y0):int(y1), int(x0):int(x1)]
        assert inside.mean() < key[key > 0.4].mean() - 0.1
        seen.add(round(x0, 1))
    assert len(seen) == 2  # both orientations occurred


def test_bad_key_slices_are_clear_errors(tmp_path):
    root = write_liver_dataset(tmp_path / "ds", n_cases=1)
    doc = json.loads((root / "dataset.json").read_text())
    doc["cases"][0]["key_slices"] = [{"slice": 99, "box": [1, 1, 5, 5]}]
    (root / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(LesionDetectError, match="key slice 99 is outside"):
        KeySliceSamples(load_dataset(root).cases, get_method("liver-frcnn").defaults, train=False)
    doc["cases"][0]["key_slices"] = [{"slice": 2, "box": [5, 1, 1, 5]}]
    (root / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(LesionDetectError, match=r"c0\.nrrd.*x1 > x0"):
        key_slices(load_dataset(root).cases[0])


# --- 2-D detections to 3-D boxes -------------------------------------------------------------

def test_iou_3d_matches_monai():
    from monai.data.box_utils import box_iou as monai_box_iou

    rng = np.random.default_rng(3)
    lo = rng.uniform(0, 20, (7, 3))
    a = np.concatenate([lo, lo + rng.uniform(1, 15, (7, 3))], axis=1)
    lo = rng.uniform(0, 20, (5, 3))
    b = np.concatenate([lo, lo + rng.uniform(1, 15, (5, 3))], axis=1)
    np.testing.assert_allclose(iou_3d(a, b), monai_box_iou(a, b), atol=1e-6)  # MONAI adds a small eps


def test_nms_3d_equals_torchvision_nms_when_all_boxes_share_their_slices():
    from torchvision.ops import nms

    rng = np.random.default_rng(4)
    lo = rng.uniform(0, 30, (40, 2))
    xy = np.concatenate([lo, lo + rng.uniform(3, 12, (40, 2))], axis=1)
    scores = rng.uniform(0, 1, 40)
    boxes3d = np.stack([xy[:, 0], xy[:, 1], np.full(40, 2.0), xy[:, 2], xy[:, 3], np.full(40, 5.0)], axis=1)
    expected = nms(torch.tensor(xy, dtype=torch.float64), torch.tensor(scores), 0.3).tolist()
    assert nms_3d(boxes3d, scores, 0.3) == expected


def test_linked_slices_become_one_physical_box():
    geometry = Geometry((56, 48, 12), (1.4, 1.2, 2.5), (-31.5, 12.25, -140.0), _orthonormal(OBLIQUE))
    linker = SliceLinker(link_iou=0.3)
    lesion = [[20, 10, 30, 18], [19, 9, 31, 19], [21, 10, 29, 17]]  # slices 4, 5, 6
    linker.add(3, np.zeros((0, 4)), np.zeros(0))
    linker.add(4, np.array([lesion[0], [40, 40, 44, 44]]), np.array([0.6, 0.3]))
    linker.add(5, np.array([lesion[1]]), np.array([0.9]))
    linker.add(6, np.array([lesion[2]]), np.array([0.7]))
    linker.add(7, np.array([[2, 2, 6, 6]]), np.array([0.2]))  # far away: a lesion of its own
    chains = linker.finish()
    assert sorted(len(c.slices) for c in chains) == [1, 1, 3]
    boxes = chains_to_boxes(chains, geometry, nms_iou=0.3, min_score=0.25, max_boxes=10)
    assert [round(b.score, 2) for b in boxes] == [0.9, 0.3]  # 0.2 fell under the score floor
    box = boxes[0]
    # x 19..31 px edges, y 9..19, slices 4..6 -> voxel centres 19.5..30.5 etc.; centre index (25, 14, 5)
    np.testing.assert_allclose(box.center, geometry.index_to_lps([24.5, 13.5, 5.0]), atol=1e-9)
    np.testing.assert_allclose(box.size, [12 * 1.4, 10 * 1.2, 3 * 2.5], atol=1e-9)
    np.testing.assert_allclose(np.reshape(box.axes, (3, 3)), np.reshape(geometry.direction, (3, 3)))
    assert box.extra["key_slice"] == 5
    assert [s["slice"] for s in box.extra["slices"]] == [4, 5, 6]
    assert box.extra["slices"][1]["box"] == lesion[1]


def test_overlapping_3d_boxes_are_suppressed():
    geometry = Geometry((40, 40, 10), (1, 1, 1), (0, 0, 0))
    linker = SliceLinker(link_iou=0.9)  # strict linking: two chains for one lesion
    linker.add(2, np.array([[10, 10, 20, 20], [10.5, 10.5, 20, 20]]), np.array([0.8, 0.7]))
    linker.add(3, np.array([[10, 10, 20, 20], [10.5, 10.5, 20, 20]]), np.array([0.6, 0.75]))
    chains = linker.finish()
    assert len(chains) == 2
    assert len(chains_to_boxes(chains, geometry, nms_iou=0.5, min_score=0.0, max_boxes=10)) == 1
    assert len(chains_to_boxes(chains, geometry, nms_iou=0.99, min_score=0.0, max_boxes=10)) == 2


def test_mean_chain_score_ranks_a_steady_lesion_above_one_bright_slice():
    geometry = Geometry((40, 40, 10), (1, 1, 2.5), (0, 0, 0))
    linker = SliceLinker(link_iou=0.3)
    linker.add(1, np.array([[5, 5, 12, 12], [25, 25, 30, 30]]), np.array([0.8, 0.2]))
    linker.add(2, np.array([[5, 5, 12, 12], [25, 25, 30, 30]]), np.array([0.85, 0.99]))
    linker.add(3, np.array([[5, 5, 12, 12], [25, 25, 30, 30]]), np.array([0.9, 0.3]))
    chains = linker.finish()
    by_max = chains_to_boxes(chains, geometry, nms_iou=0.3, min_score=0.0, max_boxes=10)
    by_mean = chains_to_boxes(chains, geometry, nms_iou=0.3, min_score=0.5, max_boxes=10, score_rule="mean")
    assert [round(b.score, 3) for b in by_max] == [0.99, 0.9]
    assert [round(b.score, 3) for b in by_mean] == [0.85]  # the bright-slice chain's mean 0.497 < 0.5
    np.testing.assert_allclose(by_mean[0].center, by_max[1].center)
    with pytest.raises(ValueError, match="chain score"):
        chains[0].scored("median")


# --- FROC --------------------------------------------------------------------------------------

def match_detections(boxes, scores, truth, iou_threshold):
    """The DeepLesion rule the method evaluates with: the shared matching with box_hits."""
    return matching.match_detections(scores, matching.box_hits(boxes, truth, iou_threshold))


def test_matching_counts_each_lesion_once():
    truth = np.array([[10, 10, 20, 20], [40, 40, 50, 50]], dtype=float)
    boxes = np.array([[10, 10, 20, 21], [11, 10, 20, 20], [0, 0, 5, 5], [41, 42, 50, 50]], dtype=float)
    fp, lesions = match_detections(boxes, np.array([0.9, 0.95, 0.5, 0.4]), truth, 0.5)
    assert lesions == [0.95, 0.4]  # the duplicate hit (0.9) is neither a hit nor a false positive
    assert fp == [0.5]
    fp, lesions = match_detections(boxes[3:], np.array([0.4]), truth, 0.8)  # IoU 0.72 < 0.8
    assert fp == [0.4] and lesions == [None, None]


def test_froc_agrees_with_monai():
    from monai.metrics.froc import compute_froc_curve_data, compute_froc_score

    rng = np.random.default_rng(11)
    n_images = 20
    fp_all, lesions_all = [], []
    for _ in range(n_images):
        truth = []
        for _ in range(rng.integers(1, 4)):
            x, y = rng.uniform(20, 400, 2)
            truth.append([x, y, x + rng.uniform(10, 60), y + rng.uniform(10, 60)])
        truth = np.array(truth)
        dets, scores = [], []
        for t in truth:
            if rng.uniform() < 0.85:  # found, with jitter; sometimes twice
                for _ in range(rng.integers(1, 3)):
                    dets.append(t + rng.normal(0, 2, 4))
                    scores.append(rng.uniform(0.2, 1.0))
        for _ in range(rng.integers(10, 14)):  # false positives (more than 8 per image)
            x, y = rng.uniform(450, 500, 2)
            dets.append([x, y, x + 8, y + 8])
            scores.append(rng.uniform(0.0, 0.9))
        fp, lesions = match_detections(np.array(dets), np.array(scores), truth, 0.5)
        fp_all += fp
        lesions_all += lesions
    ours = froc_summary(fp_all, lesions_all, n_images)
    fps, sens = compute_froc_curve_data(np.array(fp_all), np.array([s or 0.0 for s in lesions_all]),
                                        num_targets=len(lesions_all), num_images=n_images)
    rates = (0.5, 1, 2, 4, 8)
    monai_each = np.interp(rates, fps[::-1], sens[::-1])
    np.testing.assert_allclose(list(ours["froc"].values()), monai_each, atol=1e-12)
    assert ours["froc_mean"] == pytest.approx(compute_froc_score(fps, sens, eval_thresholds=rates), abs=1e-12)
    assert 0.1 < ours["froc"]["1"] < ours["froc"]["4"] < ours["froc"]["8"] <= 1.0  # a real curve, not a constant


# --- networks and weights ----------------------------------------------------------------------

def test_paper_anchors_and_input_size():
    model = get_method("liver-frcnn").build_model(get_method("liver-frcnn").defaults)
    anchors = model.rpn.anchor_generator
    assert anchors.sizes == ((16,), (24,), (32,), (48,), (96,))
    assert all(r == (0.5, 1.0, 2.0) for r in anchors.aspect_ratios)
    assert model.transform.min_size == (512,) and model.transform.max_size == 512
    assert model.roi_heads.box_predictor.cls_score.out_features == 2
    assert type(model.backbone.body.layer1[0].conv1).__name__ == "Conv2d"
    assert sum(p.numel() for p in model.parameters()) > 40e6  # ResNet-50 FPN


@pytest.mark.parametrize("backbone", ["vgg16", "mobilenet_v3_large"])
def test_other_backbones_detect(backbone):
    method = get_method("liver-frcnn")
    model = method.build_model({**method.defaults, **TINY, "backbone": backbone}).eval()
    out = model([torch.rand(3, 64, 64)])[0]
    assert set(out) == {"boxes", "scores", "labels"}


def test_imagenet_weights_load_from_local_file_or_fail_clearly(tmp_path, monkeypatch):
    from torchvision.models import resnet18

    method = get_method("liver-frcnn")
    cfg = {**method.defaults, **TINY, "pretrained": True}
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(LesionDetectError, match=r"resnet18-f37072fd\.pth.*hub/checkpoints"):
        method.build_model(cfg, pretrained=True)
    stand_in = resnet18().state_dict()
    stand_in["conv1.weight"].fill_(0.125)
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(stand_in, tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    model = method.build_model(cfg, pretrained=True)
    assert torch.all(model.backbone.body.conv1.weight == 0.125)
    assert type(model.backbone.body.bn1).__name__ == "FrozenBatchNorm2d"  # torchvision's fine-tuning rule
    # a model rebuilt from the same config without loading has the same structure
    model.load_state_dict(method.build_model(cfg, pretrained=False).state_dict())


# --- end to end --------------------------------------------------------------------------------

class DarkBlobDetector(torch.nn.Module):
    """A stand-in detector: boxes around dark blobs of the key-slice channel, score by size."""

    def forward(self, images):
        out = []
        for image in images:
            key = image[1].numpy()
            labels, _ = ndimage.label((key > 0.3) & (key < 0.47))  # lesion 0 HU, not fat or liver
            boxes, scores = [], []
            for sl in ndimage.find_objects(labels):
                if sl[0].stop - sl[0].start >= 2:
                    boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
                    scores.append(0.9)
            out.append({"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                        "scores": torch.tensor(scores, dtype=torch.float32), "labels": torch.ones(len(boxes))})
        return out


def test_whole_volume_boxes_land_on_the_lesion_in_physical_space():
    image, truth = liver_volume(np.random.default_rng(5), shape=(12, 48, 56), direction=_orthonormal(OBLIQUE))
    method = get_method("liver-frcnn")
    card = ModelCard(method="liver-frcnn", modality="CT", config={**method.defaults, **TINY}, thresholds={"score": 0.5})
    pred = method.predict(DarkBlobDetector(), card, image, torch.device("cpu"))
    assert len(pred.boxes) == 1
    cz, y0, x0, y1, x1, z0, z1 = truth[0]
    geometry = Geometry.of(image)
    # the lesion's voxels, as the stand-in sees them on each slice (noise-free threshold region)
    lo = np.array([x0, y0, z0], dtype=float)
    hi = np.array([x1 - 1, y1 - 1, z1], dtype=float)
    box = pred.boxes[0]
    corners_idx = geometry.lps_to_index(box.corners())
    np.testing.assert_allclose(corners_idx.min(axis=0)[2], lo[2] - 0.5, atol=1.01)  # slices: +- one slice
    np.testing.assert_allclose(corners_idx.min(axis=0)[:2], lo[:2] - 0.5, atol=1.01)
    np.testing.assert_allclose(corners_idx.max(axis=0)[:2], hi[:2] + 0.5, atol=1.01)
    assert geometry.contains(box.center)
    assert cz in [s["slice"] for s in box.extra["slices"]]
    # a slice range: only those slices are looked at
    part = method.predict(DarkBlobDetector(), card, image, torch.device("cpu"), slices=f"{cz}:{cz}")
    assert [s["slice"] for s in part.boxes[0].extra["slices"]] == [cz]
    assert part.provenance.parameters["slices"] == [cz, cz]
    with pytest.raises(LesionDetectError, match="selects no slice"):
        method.predict(DarkBlobDetector(), card, image, torch.device("cpu"), slices="50:60")


def test_froc_of_a_perfect_detector_is_one(tmp_path):
    ds = load_dataset(write_liver_dataset(tmp_path / "ds", n_cases=3))
    summary = froc_of(DarkBlobDetector(), {**get_method("liver-frcnn").defaults, **TINY}, ds.cases,
                      torch.device("cpu"))
    assert summary["lesions"] == 3 and summary["images"] == 3
    assert summary["froc"] == {"0.5": 1.0, "1": 1.0, "2": 1.0, "4": 1.0, "8": 1.0}
    assert summary["top1_iou_0.1_sensitivity"] == 1.0


def test_train_infer_evaluate_on_tiny_ct(tmp_path, run_cli):
    data = write_liver_dataset(tmp_path / "ds", n_cases=4)
    model_dir = tmp_path / "model"
    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"description": "tiny test model", **TINY}))
    code, out, err = run_cli("train", "--method", "liver-frcnn", "--data", data, "--out", model_dir,
                             "--config", config, "--device", "cpu", "--set", "epochs=1")
    assert code == 0, err
    card = json.loads((model_dir / "model.json").read_text())
    assert card["config"]["backbone"] == "resnet18" and 0.0 < card["thresholds"]["score"] <= 1.0
    assert card["training"]["train_samples"] == 2 and card["training"]["val_samples"] == 1
    code, out, err = run_cli("infer", "--model", model_dir, "--input", data / "images" / "c3.nrrd",
                             "--out", tmp_path / "pred", "--set", "slices=2:7", "--threshold", "0.0")
    assert code == 0, err
    manifest = json.loads((tmp_path / "pred" / "prediction.json").read_text())
    assert manifest["provenance"]["parameters"]["slices"] == [2, 7]
    if manifest["counts"]["boxes"]:
        from LesionDetectLib.markups import read_boxes

        boxes = read_boxes(tmp_path / "pred" / "boxes.mrk.json")
        assert all(2 <= s["slice"] <= 7 for b in boxes for s in b.extra["slices"])
    code, out, err = run_cli("evaluate", "--model", model_dir, "--data", data, "--json", tmp_path / "m.json",
                             "--plot", tmp_path / "froc.png")
    assert code == 0, err
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert set(metrics["froc"]) == {"0.5", "1", "2", "4", "8"} and 0 <= metrics["froc_mean"] <= 1
    assert metrics["images"] == 1 and (tmp_path / "froc.png").stat().st_size > 1000
    assert "FP per image" in out


@pytest.mark.parametrize("variant", ["cnn_regressor", "cnn_regressor_vgg"])
def test_baseline_regressors_train_and_report_iou_sensitivity(tmp_path, variant):
    from LesionDetectLib.training import load_trained, train

    data = write_liver_dataset(tmp_path / "ds", n_cases=3)
    out = train("liver-frcnn", data, tmp_path / variant, overrides={
        "model": variant, "image_size": 32, "epochs": 2, "batch_size": 1, "optimizer": "adam", "lr": 1e-3,
        "lr_schedule": None}, device="cpu")
    method, model, card, device = load_trained(out, device="cpu")
    metrics = method.evaluate(model, card, load_dataset(data), device, split="all")
    assert metrics["lesions"] == 3 and 0.0 <= metrics["sensitivity_iou_0.1"] <= 1.0 and metrics["mse"] > 0
    assert "sensitivity (IoU > 0.1)" in method.report(metrics)
    with pytest.raises(LesionDetectError, match="cannot say where no lesion is"):
        method.predict(model, card, sitk.ReadImage(str(data / "images" / "c0.nrrd")), device)


def test_regressor_learns_a_box():
    """The MSE baseline can fit one lesion's box (the paper's training-set behaviour)."""
    from LesionDetectLib.methods.liver_frcnn.network import BoxRegressor

    torch.manual_seed(0)
    net = BoxRegressor(3, 32, width=8)
    image = torch.rand(4, 3, 32, 32)
    target = torch.tensor([[0.2, 0.3, 0.4, 0.5]]).repeat(4, 1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    first = None
    for _ in range(60):
        loss = torch.nn.functional.mse_loss(net(image), target)
        first = first if first is not None else float(loss.detach())
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.01 * first


def test_experiment_configs_only_use_known_keys():
    from pathlib import Path

    from LesionDetectLib.training import TRAINER_DEFAULTS, read_config

    folder = Path(__file__).resolve().parents[1] / "Resources" / "configs" / "liver-frcnn"
    configs = sorted(folder.glob("*.json"))
    assert len(configs) >= 6
    defaults = {**TRAINER_DEFAULTS, **get_method("liver-frcnn").defaults}
    for path in configs:
        assert "description" in json.loads(path.read_text()), path.name
        unknown = set(read_config(path)) - set(defaults)
        assert not unknown, f"{path.name}: unknown keys {unknown}"


def test_training_crops_hold_a_lesion_at_network_scale(tmp_path):
    ds = load_dataset(write_liver_dataset(tmp_path / "ds", n_cases=2))
    method = get_method("liver-frcnn")
    cfg = {**method.defaults, "image_size": 112, "train_crop": 40}  # 48 x 56 slices are scaled by 2
    samples = KeySliceSamples(ds.cases[:1], cfg, train=True)
    (bx0, by0, bx1, by1), = (samples.items[0][1] * 2).tolist()
    torch.manual_seed(0)
    for _ in range(10):
        image, target = samples[0]
        assert image.shape == (3, 40, 40)
        x0, y0, x1, y1 = target["boxes"][0].tolist()
        assert (x1 - x0, y1 - y0) == pytest.approx((bx1 - bx0, by1 - by0))  # whole, not clipped
        key = image[1].numpy()
        assert key[int(y0) + 2:int(y1) - 2, int(x0) + 2:int(x1) - 2].mean() < 0.47  # the dark lesion
    val = KeySliceSamples(ds.cases[:1], cfg, train=False)[0][0]
    assert val.shape == (3, 96, 112)  # validation: scaled, not cropped
    model = method.build_model({**cfg, **{k: v for k, v in TINY.items() if k != "image_size"}})
    assert model.transform._skip_resize


def test_a_flipped_grid_gives_the_same_physical_box():
    image, _ = liver_volume(np.random.default_rng(8), shape=(12, 48, 56))
    flipped = sitk.Flip(image, [True, True, False])  # same voxels in space, stored right-to-left, back-to-front
    assert flipped.GetDirection()[0] == -1
    method = get_method("liver-frcnn")
    card = ModelCard(method="liver-frcnn", modality="CT", config={**method.defaults, **TINY}, thresholds={"score": 0.5})
    plain = method.predict(DarkBlobDetector(), card, image, torch.device("cpu"))
    other = method.predict(DarkBlobDetector(), card, flipped, torch.device("cpu"))
    assert len(plain.boxes) == len(other.boxes) == 1
    np.testing.assert_allclose(np.sort(other.boxes[0].corners(), axis=0), np.sort(plain.boxes[0].corners(), axis=0),
                               atol=1e-6)
    assert other.geometry == Geometry.of(flipped)  # the prediction keeps the input's grid


def test_key_slices_come_from_3d_boxes_when_a_case_has_none(tmp_path):
    """A corrected export from Slicer has ROI boxes but no key-slice list: the trainer derives
    the key slices (slice through each box centre, projected extent) exactly as synth writes them."""
    from LesionDetectLib import synth
    from LesionDetectLib.dataset import load_dataset
    from LesionDetectLib.methods.liver_frcnn import key_slices, key_slices_from_boxes

    case = load_dataset(synth.generate("liver-ct", tmp_path / "ds", cases=1, seed=0, size="small")).cases[0]
    written = {e["lesion"]: e for e in case.extra["key_slices"]}
    derived = key_slices_from_boxes(case)
    assert derived
    for entry in derived:
        want = written[entry["lesion"]]
        assert entry["slice"] == want["slice"]
        np.testing.assert_allclose(entry["box"], want["box"], atol=1e-4)
    case.extra.pop("key_slices")
    assert key_slices(case) == {e["slice"]: [e["box"]] for e in derived} or sorted(key_slices(case)) == sorted(
        {e["slice"] for e in derived})


def test_training_sees_key_slices_on_the_grid_inference_detects_on(tmp_path):
    """A case stored RAS (x and y flipped) trains on the same stacks and boxes as its LPS twin."""
    rng = np.random.default_rng(5)
    image, truth = liver_volume(rng, lesions=2)
    hu = sitk.GetArrayFromImage(image)
    flipped = sitk.GetImageFromArray(hu[:, ::-1, ::-1].copy())
    flipped.SetSpacing(image.GetSpacing())
    flipped.SetDirection((-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
    flipped.SetOrigin(image.TransformIndexToPhysicalPoint((hu.shape[2] - 1, hu.shape[1] - 1, 0)))
    nx, ny = hu.shape[2], hu.shape[1]
    (tmp_path / "images").mkdir()
    cases = []
    for name, img, flip in (("lps", image, False), ("ras", flipped, True)):
        sitk.WriteImage(img, str(tmp_path / "images" / f"{name}.nrrd"))
        keys = []
        for z, y0, x0, y1, x1, *_ in truth:
            box = [nx - x1, ny - y1, nx - x0, ny - y0] if flip else [x0, y0, x1, y1]
            keys.append({"slice": int(z), "box": [float(v) for v in box]})
        cases.append({"id": name, "patient": name, "image": f"images/{name}.nrrd", "key_slices": keys})
    write_dataset_json(tmp_path, "orientation", "CT", cases)
    ds = load_dataset(tmp_path)
    cfg = get_method("liver-frcnn").defaults
    a, b = case_stacks(ds.cases[0], cfg), case_stacks(ds.cases[1], cfg)
    assert len(a) == len(b) == len({t[0] for t in truth})
    for (stack_a, boxes_a), (stack_b, boxes_b) in zip(a, b):
        np.testing.assert_array_equal(stack_a, stack_b)
        np.testing.assert_allclose(np.sort(boxes_a, axis=0), np.sort(boxes_b, axis=0), atol=1e-4)
    # a sagittal "key slice" is refused with the file named
    sag = sitk.PermuteAxes(image, [2, 1, 0])
    sitk.WriteImage(sag, str(tmp_path / "images" / "sag.nrrd"))
    doc = json.loads((tmp_path / "dataset.json").read_text())
    doc["cases"].append({"id": "sag", "patient": "sag", "image": "images/sag.nrrd",
                         "key_slices": [{"slice": 20, "box": [2.0, 2.0, 6.0, 6.0]}]})
    (tmp_path / "dataset.json").write_text(json.dumps(doc))
    with pytest.raises(LesionDetectError, match=r"sag\.nrrd.*not an axial slice"):
        case_stacks(load_dataset(tmp_path).cases[2], cfg)


# --- the small detector and the shipped model ----------------------------------------------------------

def test_small_detector_config_is_small_and_detects():
    from pathlib import Path

    from LesionDetectLib.training import merge_config, read_config

    folder = Path(__file__).resolve().parents[1] / "Resources" / "configs" / "liver-frcnn"
    config = merge_config(get_method("liver-frcnn").defaults, read_config(folder / "shipped.json"))
    model = get_method("liver-frcnn").build_model(config)
    state = model.state_dict()
    assert sum(v.numel() * v.element_size() for v in state.values()) <= 20 * 2 ** 20
    assert not any(k.startswith("backbone.body.layer3") or k.startswith("backbone.body.layer4") for k in state)
    assert model.backbone.out_channels == 64 and model.roi_heads.box_head.fc7.out_features == 256
    # six anchor sizes on three maps, two per map
    assert model.rpn.anchor_generator.sizes == ((8, 12), (16, 24), (32, 48))
    model.eval()
    with torch.no_grad():
        out = model([torch.rand(3, 96, 96)])
    assert set(out[0]) == {"boxes", "scores", "labels"}


def test_shipped_model_card_is_complete_small_and_verified():
    from LesionDetectLib.models import (card_fact_problems, card_problems, read_card, sha256_of, shipped_model_dir,
                                        trained_on_synthetic_only)

    folder = shipped_model_dir("liver-frcnn")
    if folder is None:
        pytest.skip("no liver-frcnn model shipped")
    _, card = read_card(folder)
    weights = folder / card.weights_file
    assert weights.stat().st_size <= 20 * 2 ** 20 and sha256_of(weights) == card.weights_sha256
    assert card.method == "liver-frcnn" and card.modality == "CT"
    assert card_problems(card, get_method("liver-frcnn").defaults) == []
    assert card_fact_problems(card) == [] and trained_on_synthetic_only(card)
    for key in ("data", "licence", "intended_use", "known_failure_modes"):
        assert isinstance(card.training[key], str) and card.training[key]
    assert "synthetic" in card.training["intended_use"] and "no labelled real liver CT" in card.training["data"]
    assert 0 < card.thresholds["score"] < 1 and card.config["min_box_mm"] >= 0
    for name in ("synthetic_heldout", "demo_study"):
        m = card.metrics[name]
        assert m["what"] and 0 <= m["f1"] <= 1 and m["found"] + m["missed"] == m["lesions"]
    assert "froc" in card.metrics["synthetic_heldout_key_slices"]


def test_shipped_model_runs_through_infer_without_model(tmp_path, run_cli):
    from LesionDetectLib.models import read_card, shipped_model_dir
    from LesionDetectLib.prediction import read_prediction
    from LesionDetectLib.synth import generate

    if shipped_model_dir("liver-frcnn") is None:
        pytest.skip("no liver-frcnn model shipped")
    study = generate("liver-ct", tmp_path / "study", cases=1, seed=3, size="small")
    image = next((study / "images").iterdir())
    code, out, err = run_cli("infer", "--method", "liver-frcnn", "--input", image, "--out", tmp_path / "pred")
    assert code == 0, err
    pred = read_prediction(tmp_path / "pred")
    card = read_card(shipped_model_dir("liver-frcnn"))[1]
    assert pred.provenance.model_id == card.model_id
    assert pred.provenance.parameters["min_box_mm"] == card.config["min_box_mm"]
    assert all(b.score >= card.thresholds["score"] for b in pred.boxes)


def test_mask_training_slices_box_each_lesion_on_every_slice_it_shows_and_add_lesion_free_slices(tmp_path):
    """train_slices "mask": one sample per slice where the lesion shows at least
    lesion_slice_fraction of its largest cross-section, its box from the mask on that slice
    (the key slice's box among them); negative_slices adds lesion-free slices with no target,
    none within the 3-slice stack's reach of a lesion."""
    rng = np.random.default_rng(3)
    image, truth = liver_volume(rng, shape=(24, 48, 56))
    (kz, ky0, kx0, ky1, kx1, zmin, zmax), = truth
    arr = sitk.GetArrayFromImage(image)
    mask = sitk.GetImageFromArray(((arr < 30) & (arr > -30)).astype(np.uint8))  # the 0 HU ball, not fat or liver
    mask.CopyInformation(image)
    (tmp_path / "images").mkdir()
    sitk.WriteImage(image, str(tmp_path / "images" / "c0.nrrd"))
    sitk.WriteImage(mask, str(tmp_path / "images" / "c0_mask.nrrd"))
    write_dataset_json(tmp_path, "tiny-liver", "CT", [{
        "id": "c0", "patient": "p0", "image": "images/c0.nrrd", "mask": "images/c0_mask.nrrd",
        "key_slices": [{"slice": kz, "box": [float(kx0), float(ky0), float(kx1), float(ky1)]}]}])
    case = load_dataset(tmp_path).cases[0]
    method = get_method("liver-frcnn")
    key = case_stacks(case, method.defaults)
    assert len(key) == 1 and key[0][1].tolist() == [[kx0, ky0, kx1, ky1]]
    cfg = {**method.defaults, "train_slices": "mask", "lesion_slice_fraction": 0.3, "negative_slices": 1.0}
    items = case_stacks(case, cfg)
    lesion = [(stack, boxes) for stack, boxes in items if len(boxes)]
    free = [stack for stack, boxes in items if not len(boxes)]
    areas = [(((arr[z] < 30) & (arr[z] > -30)).sum()) for z in range(arr.shape[0])]
    expected = [z for z in range(arr.shape[0]) if areas[z] and areas[z] >= 0.3 * max(areas)]
    assert len(lesion) == len(expected) > 1
    assert any(b.tolist() == [[kx0, ky0, kx1, ky1]] for _, b in lesion)  # the key slice's box is one of them
    assert len(free) == len(lesion)
    slices_of = {three_slice_stack(sitk.GetArrayFromImage(image).astype(np.float32), z, 0.8, cfg["window"]).tobytes(): z
                 for z in range(arr.shape[0])}
    reach = int(np.ceil(2.0 / 2.5)) + 1
    for stack in free:
        z = slices_of[stack.tobytes()]
        assert all(abs(z - e) > reach for e in expected)
    samples = KeySliceSamples([case], {**cfg, "image_size": 112, "train_crop": 40}, train=True)
    assert len(samples) == len(items)
    empty = [samples[i] for i in range(len(samples)) if not len(samples.items[i][1])]
    assert all(im.shape == (3, 40, 40) and t["boxes"].shape == (0, 4) for im, t in empty)
    assert len(KeySliceSamples([case], cfg, train=False)) == len(lesion)  # validation: lesion slices only


def test_training_cases_read_by_worker_processes_give_the_same_samples(tmp_path):
    ds = load_dataset(write_liver_dataset(tmp_path / "ds", n_cases=3, lesions=2))
    cfg = get_method("liver-frcnn").defaults
    alone = KeySliceSamples(ds.cases, cfg, train=True).items
    pooled = KeySliceSamples(ds.cases, {**cfg, "load_workers": 2}, train=True).items
    assert len(alone) == len(pooled) == 6
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(alone, pooled))
