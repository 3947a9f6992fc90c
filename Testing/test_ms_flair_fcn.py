"""Method 004 `ms-flair-fcn` and the lesion-wise metrics (metrics/lesionwise.py)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from scipy import ndimage

from LesionDetectLib.metrics import lesionwise as lw
from LesionDetectLib.methods import get_method
from LesionDetectLib.errors import LesionDetectError
from LesionDetectLib.methods import ms_flair_fcn as msf


# --- lesion-wise rules on hand-built fixtures ---------------------------------------------

def blank(shape=(8, 30, 30)):
    return np.zeros(shape, dtype=np.uint8)


def test_split_lesion_is_detected_and_both_pieces_are_true_positives():
    truth, pred = blank(), blank()
    truth[2:5, 5:15, 5:9] = 1  # one lesion
    pred[2:5, 5:9, 5:9] = 1  # ... found as two pieces with a gap
    pred[2:5, 11:15, 5:9] = 1
    r = lw.lesion_detection(truth, pred)
    assert (r.n_truth, r.n_pred) == (1, 2)
    assert r.truth_detected.tolist() == [True]
    assert r.pred_true.tolist() == [True, True]
    assert r.sensitivity == 1.0 and r.precision == 1.0 and r.f1 == 1.0


def test_merged_lesions_are_both_detected_by_one_component():
    truth, pred = blank(), blank()
    truth[2:5, 5:9, 5:9] = 1
    truth[2:5, 5:9, 11:15] = 1
    pred[2:5, 5:9, 5:15] = 1  # bridges the two (bridge = 12 of 72 voxels outside the truth)
    r = lw.lesion_detection(truth, pred)
    assert (r.n_truth, r.n_pred) == (2, 1)
    assert r.truth_detected.tolist() == [True, True]
    assert r.pred_true.tolist() == [True]


def test_tiny_components_are_ignored_on_both_sides_by_physical_volume():
    truth, pred = blank(), blank()
    truth[1, 1, 1:4] = 1  # 3 voxels = 3 mm^3: not strictly larger, dropped
    truth[4, 10:12, 10:12] = 1  # 4 voxels = 4 mm^3: kept
    pred[1, 1, 1:4] = 1
    pred[6, 20, 20:23] = 1  # a 3 mm^3 false positive: dropped, so not counted
    r = lw.lesion_detection(truth, pred)
    assert (r.n_truth, r.n_pred) == (1, 0)
    assert r.sensitivity == 0.0 and math.isnan(r.precision) and r.f1 == 0.0
    # the same masks at 0.5 mm voxels (0.125 mm^3): the 4-voxel lesion (0.5 mm^3) is tiny too
    assert lw.lesion_detection(truth, pred, spacing=(0.5, 0.5, 0.5)).n_truth == 0
    assert lw.min_component_voxels((0.5, 0.5, 0.5)) == 25
    assert lw.min_component_voxels((1.0, 1.0, 1.0)) == 4


def test_missed_lesion_and_false_positive():
    truth, pred = blank(), blank()
    truth[2:5, 2:6, 2:6] = 1
    truth[2:5, 20:24, 20:24] = 1
    pred[2:5, 2:6, 2:6] = 1  # finds the first
    pred[2:5, 10:14, 20:24] = 1  # and something where there is nothing
    r = lw.lesion_detection(truth, pred)
    assert r.truth_detected.tolist() == [True, False]
    assert sorted(r.pred_true.tolist()) == [False, True]
    assert r.sensitivity == 0.5 and r.precision == 0.5 and r.f1 == pytest.approx(0.5)


def test_alpha_overlap_must_exceed_ten_percent():
    truth, pred = blank((1, 40, 40)), blank((1, 40, 40))
    truth[0, 0:10, 0:10] = 1  # 100 pixels (2-D, 1 mm^2 each; min size 4)
    pred[0, 0:10, 0:1] = 1  # exactly 10 % overlap...
    assert not lw.lesion_detection(truth, pred).truth_detected[0]
    pred[0, 0, 1] = 1  # 11 %
    assert lw.lesion_detection(truth, pred).truth_detected[0]


def test_beta_rejects_a_prediction_mostly_outside_the_lesion():
    truth, pred = blank((1, 40, 40)), blank((1, 40, 40))
    truth[0, 0:5, 0:5] = 1  # 25 pixels
    pred[0, 0:5, 0:5] = 1
    pred[0, 0:20, 5:20] = 1  # one blob: 25 inside, 300 outside (92 % outside > beta 0.7)
    r = lw.lesion_detection(truth, pred)
    assert not r.truth_detected[0] and not r.pred_true[0]


def test_face_connectivity_splits_diagonal_neighbours():
    truth = blank((3, 12, 12))
    truth[1, 0:2, 0:2] = 1
    truth[1, 2:4, 2:4] = 1  # touches the first only at a corner
    labels, n = lw.lesion_labels(truth)
    assert n == 2


def test_components_agree_with_scipy_on_random_masks():
    rng = np.random.default_rng(3)
    mask = ndimage.binary_opening(rng.random((12, 40, 40)) > 0.6)
    _, n = lw.lesion_labels(mask, min_volume_mm3=0)
    _, n_scipy = ndimage.label(mask)  # default structure = face connectivity
    assert n == n_scipy
    spacing = (1.0, 1.0, 2.0)  # 2 mm^3 voxels: components of >= 2 voxels survive 3 mm^3
    _, n_big = lw.lesion_labels(mask, spacing=spacing)
    labels, k = ndimage.label(mask)
    assert n_big == int((np.bincount(labels.ravel())[1:] * 2.0 > 3.0).sum())


def test_pixel_scores_match_sklearn():
    from sklearn.metrics import f1_score, precision_score, recall_score

    rng = np.random.default_rng(0)
    truth, pred = rng.random((5, 20, 20)) > 0.8, rng.random((5, 20, 20)) > 0.7
    s = lw.pixel_scores(lw.pixel_counts(truth, pred))
    assert s["pixel_precision"] == pytest.approx(precision_score(truth.ravel(), pred.ravel()))
    assert s["pixel_recall"] == pytest.approx(recall_score(truth.ravel(), pred.ravel()))
    assert s["pixel_f"] == pytest.approx(f1_score(truth.ravel(), pred.ravel())) == s["dice"]


def test_lesion_rows_give_volume_centroid_and_flags():
    from LesionDetectLib.geometry import Geometry

    truth, pred = blank(), blank()
    truth[2:4, 10:12, 20:22] = 1
    pred[2:4, 10:12, 20:22] = 1
    image = sitk.GetImageFromArray(truth)
    image.SetSpacing((0.5, 2.0, 3.0))
    image.SetOrigin((10.0, -5.0, 7.0))
    geom = Geometry.of(image)
    r = lw.lesion_detection(truth, pred, spacing=geom.spacing)
    rows = lw.lesion_rows(r, geom, probability=pred * 0.8)
    t = [row for row in rows if row["kind"] == "truth"][0]
    assert t["voxels"] == 8 and t["volume_mm3"] == pytest.approx(24.0) and t["detected"]
    assert t["centroid"] == pytest.approx([10 + 20.5 * 0.5, -5 + 10.5 * 2, 7 + 2.5 * 3])
    assert [row["max_probability"] for row in rows if row["kind"] == "predicted"] == [pytest.approx(0.8)]


# --- networks ---------------------------------------------------------------------------

def test_paper_network_is_exactly_six_convolutions_with_prelu_and_sigmoid():
    net = msf.PaperFCN(1)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size[0], c.padding[0]) for c in convs] == \
        [(20, 5, 2), (20, 7, 3), (40, 9, 4), (60, 7, 3), (20, 5, 2), (1, 5, 2)]
    assert sum(isinstance(m, torch.nn.PReLU) for m in net.modules()) == 5
    assert not any(isinstance(m, (torch.nn.MaxPool2d, torch.nn.BatchNorm2d)) for m in net.modules())
    x = torch.randn(2, 1, 37, 53)  # any size: same padding keeps it
    with torch.no_grad():
        y = net(x)
        assert torch.allclose(y, torch.sigmoid(net.logits(x)))
    assert y.shape == (2, 1, 37, 53) and float(y.min()) >= 0 and float(y.max()) <= 1


def test_unet_accepts_any_slice_size():
    net = msf.UNet2D(3, base=4, depth=3).eval()
    with torch.inference_mode():
        assert net(torch.randn(1, 3, 45, 61)).shape == (1, 1, 45, 61)


def test_unet_group_norm_option_uses_per_image_statistics():
    config = {**msf.MSFlairFCN.defaults, "unet_base": 4, "unet_depth": 2, "unet_norm": "group"}
    net = msf.build_network(config).eval()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in net.modules()) == 2 * 5  # two per double convolution
    x = torch.randn(2, 3, 24, 24)
    with torch.inference_mode():  # an image's output does not depend on the others in the batch
        assert torch.allclose(net(x)[:1], net(x[:1]), atol=1e-5)
    with pytest.raises(LesionDetectError, match="unet_norm"):
        msf.build_network({**config, "unet_norm": "layer"})


def test_fmax_threshold_is_the_exhaustive_best():
    from sklearn.metrics import f1_score

    from LesionDetectLib.metrics.thresholds import fmax_threshold

    rng = np.random.default_rng(1)
    truth = rng.random(400) > 0.8
    score = np.clip(truth * 0.3 + rng.random(400) * 0.7, 0, 1)
    th = fmax_threshold(truth, score)
    best = max(f1_score(truth, score >= t) for t in np.unique(score))
    assert f1_score(truth, score >= th) == pytest.approx(best)


# --- volumes: axial slicing, normalisation, tiles ---------------------------------------------

def image_with_axial_axis_1():
    """An anisotropic image (4 mm slices) whose axial (S) direction is index axis 1, tilted 0.1 rad."""
    image = sitk.GetImageFromArray(np.arange(16 * 12 * 20, dtype=np.float32).reshape(16, 12, 20))
    image.SetSpacing((0.7, 4.0, 0.9))
    image.SetOrigin((12.5, -40.0, 3.25))
    c, s = math.cos(0.1), math.sin(0.1)
    # direction columns = index axes in LPS: i -> L, j -> mostly S, k -> mostly A (a rotation about L)
    image.SetDirection(np.array([[1, 0, 0], [0, s, -c], [0, c, s]], dtype=float).ravel().tolist())
    return image


def test_axial_axis_follows_the_direction_matrix():
    image = image_with_axial_axis_1()
    assert msf.axial_axis(image) == 1
    plain = sitk.Image(4, 5, 6, sitk.sitkFloat32)
    assert msf.axial_axis(plain) == 2


def test_model_grid_round_trip_keeps_the_input_geometry():
    image = image_with_axial_axis_1()
    config = {**msf.MSFlairFCN.defaults, "spacing_mm": 0.7, "context_slices": 0}
    grid = msf.ModelGrid(image, config)
    # in-plane axes are (x: 0.7 mm, z: 0.9 mm) -> resampled to 0.7; slices along y
    arr = grid.image(image)
    assert arr.shape[0] == image.GetSize()[1]
    back = grid.back(arr)
    assert back.shape == sitk.GetArrayFromImage(image).shape
    # a pure permutation (spacing already the model's) returns exactly the input
    image2 = sitk.Image(image)
    image2.SetSpacing((0.7, 4.0, 0.7))
    exact = msf.ModelGrid(image2, {**config, "spacing_mm": 0.7})
    assert not exact.resampled and exact.order == [0, 2, 1]
    arr2 = exact.image(image2)
    np.testing.assert_array_equal(exact.back(arr2), sitk.GetArrayFromImage(image2))


def test_normalisation_ignores_the_intensity_unit():
    rng = np.random.default_rng(0)
    vol = np.zeros((10, 30, 30), np.float32)
    vol[2:8, 5:25, 5:25] = 100 + rng.normal(0, 5, (6, 20, 20))
    a, fg = msf.normalise(vol)
    b, _ = msf.normalise(vol * 7.3 + 0.0)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    assert np.median(a[fg]) == pytest.approx(1.0, abs=1e-3) and a.min() >= 0


def test_plaque_touching_a_grid_edge_gets_a_centred_tile():
    mask = np.zeros((100, 100), np.uint8)
    mask[45:55, 28:36] = 1  # straddles x = 32, a 64-tile grid edge
    centres = msf.lesion_tile_centres(mask, 64)
    assert centres == [(50, 32)]
    big = np.zeros((200, 200), np.uint8)
    big[10:150, 20:40] = 1  # taller than a tile: covered by several
    cover = np.zeros_like(big)
    for cy, cx in msf.lesion_tile_centres(big, 64):
        cover[max(0, cy - 32):cy + 32, max(0, cx - 32):cx + 32] = 1
    assert cover[big > 0].all()


def test_case_tiles_one_third_negatives_preferring_bright_areas():
    rng = np.random.default_rng(0)
    vol = np.ones((6, 120, 120), np.float32)
    vol[:, 80:, :] += rng.normal(0, 0.5, (6, 40, 120)).astype(np.float32)  # bright, high-contrast band
    fg = np.ones_like(vol, bool)
    mask = np.zeros_like(vol, bool)
    mask[1:5, 20:25, 20:25] = True
    config = {**msf.MSFlairFCN.defaults, "tile_size": 16, "tile_jitter": 2, "negative_ratio": 0.5, "context_slices": 1}
    images, labels = msf.case_tiles(vol, fg, mask, config, np.random.default_rng(0))
    positives = sum(lab.any() for lab in labels)
    assert positives == 4 and len(images) == 6  # four slices with a plaque + 2 negatives
    assert images[0].shape == (3, 20, 20)
    negative_rows = [img[1].std() for img, lab in zip(images, labels) if not lab.any()]
    assert all(s > 0.1 for s in negative_rows)  # drawn from the high-contrast band


def test_tile_set_draws_a_fixed_number_with_the_asked_lesion_share():
    images = np.zeros((10, 1, 12, 12), np.float32)
    labels = np.zeros((10, 12, 12), np.uint8)
    labels[:2, 6, 6] = 1  # 2 lesion tiles, 8 lesion-free
    plain = msf.TileSet(images, labels, 8, augment=True, intensity=0.0)
    assert len(plain) == 10  # no draws: one pass over the tiles
    np.random.seed(0)
    fixed = msf.TileSet(images, labels, 8, augment=True, intensity=0.0, draws=2000, lesion_fraction=0.5)
    assert len(fixed) == 2000
    share = np.mean([bool(fixed[i][1].any()) for i in range(2000)])
    assert 0.45 < share < 0.55  # 0.2 without oversampling
    natural = msf.TileSet(images, labels, 8, augment=True, intensity=0.0, draws=2000)
    assert 0.15 < np.mean([bool(natural[i][1].any()) for i in range(2000)]) < 0.25
    only_negatives = msf.TileSet(images[2:], labels[2:], 8, augment=True, intensity=0.0, draws=50, lesion_fraction=0.5)
    assert not any(only_negatives[i][1].any() for i in range(50))


# --- end to end on tiny synthetic data ------------------------------------------------------

def write_tiny_dataset(root, n=3):
    from LesionDetectLib.dataset import write_dataset_json

    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    cases = []
    for i in range(n):
        vol = np.zeros((10, 48, 48), np.float32)
        vol[1:9, 6:42, 6:42] = 100 + rng.normal(0, 3, (8, 36, 36))
        mask = np.zeros_like(vol, np.uint8)
        for _ in range(3):
            z, y, x = rng.integers(2, 7), rng.integers(12, 34), rng.integers(12, 34)
            mask[z - 1:z + 2, y - 2:y + 3, x - 2:x + 3] = 1
        vol[mask > 0] += 60
        img = sitk.GetImageFromArray(vol)
        img.SetSpacing((1.0, 1.0, 1.0))
        lab = sitk.GetImageFromArray(mask)
        lab.CopyInformation(img)
        sitk.WriteImage(img, str(root / "images" / f"c{i}.nii.gz"))
        sitk.WriteImage(lab, str(root / "labels" / f"c{i}.nii.gz"))
        cases.append({"id": f"c{i}", "patient": f"p{i}", "image": f"images/c{i}.nii.gz", "mask": f"labels/c{i}.nii.gz",
                      "split": "test" if i == n - 1 else "train"})
    write_dataset_json(root, "tiny-flair", "MR", cases)
    return root


@pytest.mark.parametrize("extra", [["--set", "unet_base=4", "--set", "unet_depth=2"], ["--config", "Resources/configs/ms-flair-fcn/paper.json"]])
def test_train_infer_evaluate_end_to_end(tmp_path, run_cli, extra):
    data = write_tiny_dataset(tmp_path / "ds")
    model = tmp_path / "model"
    code, out, err = run_cli("train", "--method", "ms-flair-fcn", "--data", data, "--out", model, "--epochs", "1",
                             "--set", "tile_size=16", "--set", "tile_jitter=2", "--set", "batch_size=8",
                             "--set", "tiles_per_epoch=32", *extra)
    assert code == 0, err
    card = json.loads((model / "model.json").read_text())
    assert 0 < card["thresholds"]["pixel"] <= 1
    assert card["config"]["architecture"] == ("paper" if "--config" in extra else "unet")
    code, out, err = run_cli("evaluate", "--model", model, "--data", data, "--json", tmp_path / "m.json")
    assert code == 0, err
    metrics = json.loads((tmp_path / "m.json").read_text())
    for key in ("pixel_precision", "pixel_recall", "pixel_f", "dice", "lesion_sensitivity", "lesion_precision",
                "lesion_f1"):
        assert key in metrics
    assert [c["case"] for c in metrics["cases"]] == ["c2"]
    code, out, err = run_cli("infer", "--model", model, "--input", data / "images" / "c0.nii.gz", "--out",
                             tmp_path / "pred", "--threshold", "0.25")
    assert code == 0, err
    from LesionDetectLib.prediction import read_prediction

    pred = read_prediction(tmp_path / "pred")
    assert pred.threshold == 0.25
    np.testing.assert_array_equal(pred.mask, (pred.probability >= 0.25).astype(np.uint8))


def test_predict_keeps_an_oblique_anisotropic_input_geometry():
    from LesionDetectLib.geometry import Geometry
    from LesionDetectLib.models import ModelCard

    method = get_method("ms-flair-fcn")
    config = {**method.defaults, "unet_base": 4}
    model = method.build_model(config).eval()
    card = ModelCard(method=method.name, modality="MR", config=config, thresholds={"pixel": 0.5})
    image = image_with_axial_axis_1()
    pred = method.predict(model, card, image, torch.device("cpu"))
    assert pred.geometry.same_grid(Geometry.of(image), tol=0)
    assert pred.probability.shape == sitk.GetArrayFromImage(image).shape
    assert pred.threshold == 0.5
    for box in pred.boxes:
        assert {"volume_mm3", "centroid_lps", "max_probability"} <= set(box.extra)


# --- real data -----------------------------------------------------------------------------

def test_shipped_model_infers_raw_anisotropic_flair(shared_data, tmp_path, run_cli):
    from LesionDetectLib.models import shipped_model_dir
    from LesionDetectLib.prediction import read_prediction

    if shipped_model_dir("ms-flair-fcn") is None:
        pytest.skip("no shipped ms-flair-fcn model")
    raw = shared_data / "realistic_inputs/open_ms_data_longitudinal_patient01/flair_raw.nii.gz"
    code, out, err = run_cli("infer", "--method", "ms-flair-fcn", "--input", raw, "--out", tmp_path / "p")
    assert code == 0, err
    pred = read_prediction(tmp_path / "p")
    image = sitk.ReadImage(str(raw))
    assert pred.probability.shape == (36, 320, 320)
    assert np.allclose(pred.geometry.spacing, image.GetSpacing()) and np.allclose(pred.geometry.origin, image.GetOrigin())
    assert 0 < pred.mask.mean() < 0.05  # finds something, not the whole head


@pytest.mark.slow
def test_shipped_model_on_a_held_out_real_case(shared_data, tmp_path):
    """The shipped model never saw MSLesSeg (another centre and preprocessing): measured there
    (issue #17 model, lesion operating point) it finds all 3 plaques but with many false
    positives on bright periventricular rims (Dice 0.04, pixel recall 0.37, 25 predicted lesions)."""
    from LesionDetectLib.dataset import load_dataset, write_dataset_json
    from LesionDetectLib.models import shipped_model_dir
    from LesionDetectLib.training import load_trained

    if shipped_model_dir("ms-flair-fcn") is None:
        pytest.skip("no shipped ms-flair-fcn model")
    case = shared_data / "ms_flair/mslesseg_P18"
    write_dataset_json(tmp_path, "p18", "MR", [{"id": "P18", "patient": "P18", "image": str(case / "flair.nii.gz"),
                                               "mask": str(case / "lesions.nii.gz")}])
    method, model, card, device = load_trained(shipped_model_dir("ms-flair-fcn"), device="cpu")
    metrics = method.evaluate(model, card, load_dataset(tmp_path), device, split="all")
    assert metrics["lesion_sensitivity"] >= 2 / 3 and metrics["pixel_recall"] > 0.3
    assert metrics["cases"][0]["truth_lesions"] == 3
    assert metrics["operating_point"]["name"] == "lesion" and set(metrics["by_size"]) == set(lw.size_bin_names())


def test_a_time_limit_cuts_the_epochs_after_the_first(tmp_path, run_cli):
    data = write_tiny_dataset(tmp_path / "ds")
    model = tmp_path / "model"
    code, out, err = run_cli("train", "--method", "ms-flair-fcn", "--data", data, "--out", model, "--epochs", "5",
                             "--set", "tile_size=16", "--set", "tile_jitter=2", "--set", "batch_size=8",
                             "--set", "tiles_per_epoch=16", "--set", "unet_base=4", "--set", "unet_depth=2",
                             "--set", "time_limit_minutes=0.000001")
    assert code == 0, err
    history = json.loads((model / "model.json").read_text())["training"]["history"]
    assert len(history) == 1 and history[0]["epochs_cut_to"] == 1


# --- issue 17: lesions, not speckle -------------------------------------------------------------

from LesionDetectLib.methods.ms_flair_fcn import method as msf_method  # noqa: E402
from LesionDetectLib.methods.ms_flair_fcn import data as msf_data  # noqa: E402


def speckled_case():
    """Two true plaques (27 and 125 voxels), four speckles (1-2 voxels, high probability) and a
    large faint blob (64 voxels, probability 0.55) on a 1 mm grid."""
    truth = np.zeros((12, 40, 40), bool)
    truth[2:5, 5:8, 5:8] = True
    truth[5:10, 20:25, 20:25] = True
    prob = np.zeros(truth.shape, np.float32)
    prob[truth] = 0.97
    for z, y, x in ((1, 35, 35), (8, 2, 30), (10, 30, 5)):
        prob[z, y, x] = 0.9
    prob[6, 35, 10:12] = 0.95
    prob[7:11, 10:14, 30:34] = 0.55
    return truth, prob


def test_filter_components_drops_small_and_low_scoring_components():
    truth, prob = speckled_case()
    mask = prob >= 0.5
    assert lw.lesion_labels(mask, min_volume_mm3=0)[1] == 2 + 4 + 1
    small_gone = msf_method.filter_components(mask, prob, (1.0, 1.0, 1.0), min_volume_mm3=5)
    assert lw.lesion_labels(small_gone, min_volume_mm3=0)[1] == 3  # the 2 plaques and the faint blob
    both = msf_method.filter_components(mask, prob, (1.0, 1.0, 1.0), min_volume_mm3=5, min_score=0.9)
    np.testing.assert_array_equal(both, truth)
    # the size rule is physical: at 0.5 mm (0.125 mm^3 a voxel) even the 125-voxel plaque is under 20 mm^3
    assert msf_method.filter_components(mask, prob, (1.0, 1.0, 1.0), min_volume_mm3=20).sum() == 27 + 125 + 64
    assert not msf_method.filter_components(mask, prob, (0.5, 0.5, 0.5), min_volume_mm3=20).any()
    # the component score may be the mean: the faint blob (mean 0.55) goes at 0.6, the plaques stay
    mean = msf_method.filter_components(mask, prob, (1.0, 1.0, 1.0), 5, 0.6, score="mean")
    np.testing.assert_array_equal(mean, truth)
    assert msf_method.filter_components(mask, prob, (1, 1, 1)).sum() == mask.sum()  # no rule: unchanged
    with pytest.raises(LesionDetectError, match="component_score"):
        msf_method.filter_components(mask, prob, (1, 1, 1), 1, 0.5, score="median")


def test_lesion_grid_search_finds_the_rule_that_removes_the_speckle():
    truth, prob = speckled_case()
    best = msf_method.lesion_grid_search([(prob, truth, (1.0, 1.0, 1.0))])
    assert best["lesion_f1"] == 1.0 and best["dice"] == 1.0
    pred = msf_method.filter_components(prob >= best["threshold"], prob, (1, 1, 1), best["min_lesion_mm3"],
                                        best["component"])
    np.testing.assert_array_equal(pred, truth)


def test_detection_by_size_bins():
    truth, pred = blank((12, 60, 60)), blank((12, 60, 60))
    truth[1, 1:3, 1:4] = 1  # 6 mm^3: < 10
    truth[3:6, 10:14, 10:14] = 1  # 48 mm^3: 10-100
    truth[5:11, 30:50, 30:40] = 1  # 1200 mm^3: > 100
    pred[3:6, 10:14, 10:14] = 1
    pred[5:11, 30:50, 30:40] = 1
    pred[1, 50:52, 50:53] = 1  # a 6 mm^3 false positive
    bins = lw.detection_by_size(lw.lesion_detection(truth, pred))
    assert list(bins) == ["<10 mm3", "10-100 mm3", ">100 mm3"]
    assert (bins["<10 mm3"]["truth"], bins["<10 mm3"]["detected"], bins["<10 mm3"]["pred"],
            bins["<10 mm3"]["true_pred"]) == (1, 0, 1, 0)
    assert bins["10-100 mm3"]["sensitivity"] == 1.0 and bins[">100 mm3"]["precision"] == 1.0


# --- issue 17: intensities ----------------------------------------------------------------------

def flair_like_head(seed=0, t1=False):
    """A skull-stripped brain: white matter core, a brighter grey-matter shell (FLAIR) or a
    darker one (T1), dark ventricles."""
    rng = np.random.default_rng(seed)
    z, y, x = np.ogrid[:40, :64, :64]
    r = ((z - 20) / 18) ** 2 + ((y - 32) / 28) ** 2 + ((x - 32) / 26) ** 2
    vol = np.zeros((40, 64, 64), np.float32)
    vol[r < 1] = 100.0
    vol[(r >= 0.8) & (r < 1)] = 70.0 if t1 else 125.0  # grey matter (29 % of the brain)
    vol[r < 0.04] = 20.0 if not t1 else 30.0  # ventricles
    vol += (r < 1) * rng.normal(0, 3, vol.shape).astype(np.float32)
    return vol


def test_wm_peak_normalisation_puts_white_matter_at_one_whatever_the_unit():
    vol = flair_like_head()
    a, fg = msf.normalise(vol, "wm_peak")
    b, _ = msf.normalise(vol * 3.7, "wm_peak")
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    wm = a[(vol > 90) & (vol < 110)]
    assert np.median(wm) == pytest.approx(1.0, abs=0.03)
    with pytest.raises(ValueError, match="normalisation"):
        msf.normalise(vol, "zscore")


def test_flair_check_warns_for_t1_like_contrast():
    for t1, ok in ((False, True), (True, False)):
        vol, fg = msf.normalise(flair_like_head(t1=t1), "wm_peak")
        check = msf_data.flair_check(vol, fg)
        assert check["looks_like_flair"] is ok
        assert ("do not look like FLAIR" in check["warning"]) is (not ok)


def test_intensity_and_spatial_augmentation_keep_shapes_and_labels():
    np.random.seed(0)
    tile = np.clip(np.random.default_rng(0).normal(1, 0.1, (3, 40, 40)), 0, None).astype(np.float32)
    strong = {"gamma": 0.3, "contrast": 0.3, "bias": 0.2, "blur": 1.0, "noise": 0.05}
    out = msf_data.intensity_augment(tile, strong)
    assert out.shape == tile.shape and out.dtype == np.float32 and out.min() >= 0 and not np.allclose(out, tile)
    label = np.zeros((40, 40), np.uint8)
    label[15:25, 15:25] = 1
    im2, lab2 = msf_data.spatial_augment(tile, label, 1.0)
    assert im2.shape == tile.shape and lab2.shape == label.shape and set(np.unique(lab2)) <= {0, 1}
    assert 40 < lab2.sum() < 250  # rotated and scaled by at most 30 %, still there
    images = np.repeat(tile[None], 4, axis=0)
    labels = np.repeat(label[None], 4, axis=0)
    ts = msf.TileSet(images, labels, 32, augment=True, intensity=0.1, strong={**strong, "spatial": 0.5})
    x, y = ts[0]
    assert tuple(x.shape) == (3, 32, 32) and tuple(y.shape) == (1, 32, 32)


# --- issue 17: prediction ----------------------------------------------------------------------

def tiny_model_and_card(**config):
    from LesionDetectLib.models import ModelCard

    method = get_method("ms-flair-fcn")
    config = {**method.defaults, "unet_base": 4, "unet_depth": 2, **config}
    torch.manual_seed(0)
    model = method.build_model(config).eval()
    card = ModelCard(method=method.name, modality="MR", config=config,
                     thresholds={"pixel": 0.5, "lesion": 0.5, "component": 0.6})
    return method, model, card


def test_predict_reports_operating_point_tta_and_a_flair_warning():
    method, model, card = tiny_model_and_card(normalisation="wm_peak", min_lesion_mm3=5.0)
    image = sitk.GetImageFromArray(flair_like_head())
    pred = method.predict(model, card, image, torch.device("cpu"))
    params = pred.provenance.parameters
    assert params["operating_point"] == "lesion" and params["min_lesion_mm3"] == 5.0
    assert params["component_threshold"] == 0.6 and params["tta"] is False and "warning" not in params
    assert params["input_check"]["looks_like_flair"]
    with_tta = method.predict(model, card, image, torch.device("cpu"), tta=True)
    assert with_tta.provenance.parameters["tta"] is True
    # TTA averages the four in-plane flips: a flipped input gives the flipped probability
    flipped = sitk.GetImageFromArray(flair_like_head()[:, :, ::-1].copy())
    again = method.predict(model, card, flipped, torch.device("cpu"), tta=True)
    np.testing.assert_allclose(again.probability[:, :, ::-1], with_tta.probability, atol=1e-4)
    t1 = method.predict(model, card, sitk.GetImageFromArray(flair_like_head(t1=True)), torch.device("cpu"))
    assert "do not look like FLAIR" in t1.provenance.parameters["warning"]
    plain = method.predict(model, card, image, torch.device("cpu"), threshold=0.3)  # a given threshold: plain mask
    np.testing.assert_array_equal(plain.mask, (plain.probability >= 0.3).astype(np.uint8))
    with pytest.raises(LesionDetectError, match="tta"):
        method.predict(model, card, image, torch.device("cpu"), flips=True)


def test_a_four_d_series_is_a_clear_error():
    method, model, card = tiny_model_and_card()
    series = sitk.JoinSeries([sitk.GetImageFromArray(flair_like_head())] * 2)
    assert series.GetDimension() == 4
    with pytest.raises(LesionDetectError, match="4-D"):
        method.predict(model, card, series, torch.device("cpu"))


def test_shipped_model_card_is_complete_and_matches_its_weights():
    from LesionDetectLib.models import read_card, sha256_of, shipped_model_dir

    folder = shipped_model_dir("ms-flair-fcn")
    if folder is None:
        pytest.skip("no shipped ms-flair-fcn model")
    folder, card = read_card(folder)
    weights = folder / card.weights_file
    assert weights.stat().st_size <= 20 * 2**20
    assert sha256_of(weights) == card.weights_sha256 and card.model_id.endswith(card.weights_sha256[:8])
    # both operating points and the lesion rule chosen on the training cases
    assert {"pixel", "lesion", "component"} <= set(card.thresholds)
    assert card.config["operating_point"] == "lesion" and card.config["min_lesion_mm3"] >= 0
    assert card.config["component_score"] in ("max", "mean")
    # training data, licence, intended use, failure modes
    training = card.training
    assert "CC-BY" in training["data"] and "MSLesSeg not used" in training["data"]
    assert training["licence"] and training["intended_use"] and "Small plaques" in training["known_failure_modes"]
    # metrics on every real case (saying which were in training), held-out synthetic heads and the demo study
    metrics = card.metrics
    assert metrics["key_metric"] == "mslesseg_P18.lesion_f1"
    assert metrics["mslesseg_P18"]["in_training"] is False
    assert metrics["open_ms_data_patient07"]["in_training"] is True
    assert any(k.startswith("synthetic") and not v["in_training"] for k, v in metrics.items() if isinstance(v, dict))
    demo = [v for k, v in metrics.items() if k.startswith("demo_study")]
    assert demo and demo[0]["lesion_f1"] >= 0.7  # issue #17's target on the demo's own study
    for row in (v for v in metrics.values() if isinstance(v, dict)):
        assert {"dice", "lesion_f1", "by_size"} <= set(row) and "dice" in row["pixel_operating_point"]


def test_shipped_model_tiny_inference():
    from LesionDetectLib.models import shipped_model_dir
    from LesionDetectLib.training import load_trained

    folder = shipped_model_dir("ms-flair-fcn")
    if folder is None:
        pytest.skip("no shipped ms-flair-fcn model")
    method, model, card, device = load_trained(folder, device="cpu")
    image = sitk.GetImageFromArray(flair_like_head())
    pred = method.predict(model, card, image, device)
    assert pred.mask.shape == (40, 64, 64) and 0 <= pred.probability.min() and pred.probability.max() <= 1
    params = pred.provenance.parameters
    assert params["operating_point"] == "lesion" and params["input_check"]["looks_like_flair"]
    volumes = [b.extra["volume_mm3"] for b in pred.boxes]
    assert all(v >= card.config["min_lesion_mm3"] for v in volumes)


# --- small-plaque loss (config small_lesion_loss) -------------------------------------------

def _tiles_with(*boxes, shape=(2, 1, 24, 24)):
    labels = torch.zeros(shape, dtype=torch.uint8)
    for b, ys, xs in boxes:
        labels[b, 0, ys, xs] = 1
    return labels


def test_small_lesion_loss_counts_every_lesion_the_same():
    from LesionDetectLib.methods.ms_flair_fcn.network import lesion_balanced_bce, lesion_weights

    # one 2x2 plaque in tile 0, one 12x12 plaque in tile 1; a diagonal touch is two lesions (4-connected)
    labels = _tiles_with((0, slice(2, 4), slice(2, 4)), (1, slice(5, 17), slice(5, 17)))
    w = lesion_weights(labels.numpy())
    assert w.shape == labels.shape and w.dtype == np.float32
    assert math.isclose(float(w.sum()), 1.0, rel_tol=1e-6)
    assert math.isclose(float(w[0].sum()), 0.5, rel_tol=1e-6) and math.isclose(float(w[1].sum()), 0.5, rel_tol=1e-6)
    assert (w[labels.numpy() == 0] == 0).all()
    diagonal = _tiles_with((0, 1, 1), (0, 2, 2), shape=(1, 1, 8, 8))
    assert np.count_nonzero(np.unique(lesion_weights(diagonal.numpy()))) == 1 and lesion_weights(diagonal.numpy()).max() == 0.5
    assert not lesion_weights(np.zeros((3, 1, 8, 8))).any()
    # missing the small plaque costs as much as missing the large one (plain BCE: 36x less)
    logits = torch.where(labels.bool(), 8.0, -8.0)  # everything right ...
    miss_small, miss_large = logits.clone(), logits.clone()  # ... but one plaque
    miss_small[labels.bool() & (torch.arange(2)[:, None, None, None] == 0)] = -8.0
    miss_large[labels.bool() & (torch.arange(2)[:, None, None, None] == 1)] = -8.0
    wt = torch.from_numpy(w)
    small, large = float(lesion_balanced_bce(miss_small, wt)), float(lesion_balanced_bce(miss_large, wt))
    assert math.isclose(small, large, rel_tol=1e-5) and small > 1.5
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    assert float(bce(miss_large, labels.float())) > 30 * float(bce(miss_small, labels.float()))


def test_small_lesion_loss_option_trains_with_finite_gradients_and_is_off_by_default():
    method = get_method("ms-flair-fcn")
    assert method.defaults["small_lesion_loss"] == 0.0
    config = {**method.defaults, "unet_base": 4, "unet_depth": 2}
    torch.manual_seed(0)
    images = torch.randn(4, 3, 24, 24)
    labels = _tiles_with((0, slice(2, 4), slice(2, 4)), (2, slice(5, 17), slice(5, 17)), shape=(4, 1, 24, 24))
    plain = method.build_model(config)
    weighted = method.build_model({**config, "small_lesion_loss": 1.0})
    weighted.load_state_dict(plain.state_dict())
    off = method.batch_loss(plain, (images, labels), "cpu")
    on = method.batch_loss(weighted, (images, labels), "cpu")
    manual = (torch.nn.functional.binary_cross_entropy_with_logits(plain.logits(images), labels.float())
              + msf.network.soft_dice_loss(plain(images), labels.float()))
    assert math.isclose(off.item(), manual.item(), rel_tol=1e-5)  # option 0: the plain BCE + Dice
    assert on.item() > off.item() + 0.1
    on.backward()
    grads = [p.grad for p in weighted.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    # a batch without lesions: the term is 0
    empty = torch.zeros_like(labels)
    assert math.isclose(method.batch_loss(weighted, (images, empty), "cpu").item(),
                        method.batch_loss(plain, (images, empty), "cpu").item(), rel_tol=1e-5)


def test_issue17_recipe_configs_are_valid_and_the_recipes_script_parses():
    import importlib.util
    from pathlib import Path

    from LesionDetectLib.training import training_config

    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("ms_flair_recipes", root / "Testing/benchmarks/ms_flair_recipes.py")
    recipes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipes)
    method = get_method("ms-flair-fcn")
    for name, (_, config, synth_params) in recipes.RECIPES.items():
        merged = training_config(method, config)  # unknown keys would be an error
        assert merged["epochs"] == method.defaults["epochs"]  # the same schedule for every recipe
        assert (merged["small_lesion_loss"] > 0) == (name in ("small-loss", "all"))
        assert merged["context_slices"] == (2 if name in ("context2", "all") else 1)
        assert bool(synth_params) == (name in ("synth-contrast", "all"))
    args = recipes.parse(["--out", "/tmp/x", "--smoke", "--jobs", "4"])
    assert args.epochs == 1 and args.synthetic == 1 and args.size == "small" and args.work == Path("/tmp/x/work")
    assert recipes.overrides(recipes.parse(["--out", "o", "--epochs", "30", "--batch-size", "64"])) == \
        {"epochs": 30, "batch_size": 64}
