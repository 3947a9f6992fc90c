"""Method 001 `bone-scan-cls`: networks and Grad-CAM, ImageNet loading, stratified splits,
training, prediction with the class-activation overlay, evaluation, real crops."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from LesionDetectLib import synth
from LesionDetectLib.errors import LesionDetectError
from LesionDetectLib.geometry import Geometry
from LesionDetectLib.methods import get_method
from LesionDetectLib.methods.bone_scan_cls import cam_peaks, network
from LesionDetectLib.methods.bone_scan_cls.data import class_weights, normalised, to_input
from LesionDetectLib.models import ModelCard

METHOD = get_method("bone-scan-cls")
TINY = {**METHOD.defaults, "compact_widths": [4, 8], "input_size": [32, 16]}


def tiny_model(seed: int = 0, **config):
    torch.manual_seed(seed)
    cfg = {**TINY, **config}
    return METHOD.build_model(cfg).eval(), ModelCard(method=METHOD.name, modality="NM", config=cfg,
                                                     thresholds={"image": 0.5})


# --- networks ---------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["compact", "resnet50", "densenet121", "vgg19"])
def test_every_network_gives_one_logit_and_a_cam_on_its_feature_grid(arch):
    torch.manual_seed(0)
    net = network.build({**METHOD.defaults, "architecture": arch}).eval()
    x = torch.rand(2, 1, 160, 64)
    with torch.no_grad():
        logits = net(x)
    assert logits.shape == (2,)
    got, cam = net.forward_with_cam(x)
    torch.testing.assert_close(got, logits)
    assert cam.ndim == 3 and cam.shape[0] == 2 and (cam >= 0).all()


def test_grad_cam_of_a_pooled_linear_head_is_the_classic_cam():
    """With global average pooling and one linear layer, Grad-CAM's channel weights are the
    linear weights / (h * w): Grad-CAM x (h * w) = ReLU(sum_c w_c A_c) (Zhou et al.'s CAM)."""
    net, _ = tiny_model()
    x = torch.rand(3, 1, 32, 16)
    _, cam = net.forward_with_cam(x)
    with torch.no_grad():
        features = net.body(net.prepare(x))
    w = net.head[-1].weight[0]
    classic = torch.relu(torch.einsum("c,bchw->bhw", w, features))
    torch.testing.assert_close(cam * features.shape[-1] * features.shape[-2], classic, rtol=1e-4, atol=1e-6)


def test_imagenet_weights_load_from_a_local_file_and_their_absence_is_named(tmp_path, monkeypatch):
    from torchvision import models as tvm

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(LesionDetectError, match="resnet50-0676ba61.pth.*pretrained weights not found|"
                                                "pretrained weights not found.*resnet50-0676ba61.pth"):
        network.build({**METHOD.defaults, "architecture": "resnet50"}, pretrained=True)
    with pytest.raises(LesionDetectError, match="compact network has no ImageNet weights"):
        network.build(METHOD.defaults, pretrained=True)
    # a stand-in DenseNet121 file with torchvision's old key names ("norm.1" for "norm1")
    torch.manual_seed(3)
    reference = tvm.densenet121(weights=None).state_dict()
    old = {k.replace(".norm1.", ".norm.1.").replace(".conv1.", ".conv.1.") if "denselayer" in k else k: v
           for k, v in reference.items()}
    assert old != reference
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(old, folder / "densenet121-a639ec97.pth")
    net = network.build({**METHOD.defaults, "architecture": "densenet121"}, pretrained=True)
    loaded = net.body[0].state_dict()
    for key in ("conv0.weight", "denseblock1.denselayer1.norm1.weight", "denseblock4.denselayer16.conv2.weight"):
        torch.testing.assert_close(loaded[key], reference["features." + key])


# --- inputs, weights, peaks -------------------------------------------------------------------

def test_inputs_are_min_max_normalised_and_resized():
    array = np.arange(12, dtype=np.float32).reshape(4, 3) * 10 + 5
    assert normalised(array).min() == 0 and normalised(array).max() == 1
    assert not normalised(np.full((3, 3), 7.0)).any()
    x = to_input(array, [8, 6])
    assert x.shape == (1, 8, 6) and 0 <= float(x.min()) and float(x.max()) <= 1


def test_class_weights_make_both_classes_weigh_half():
    labels = np.array([1] * 5 + [0] * 95)
    w = class_weights(labels, "loss")
    assert w[1] * 5 == pytest.approx(w[0] * 95) and (w[1] * 5 + w[0] * 95) == pytest.approx(100)
    assert class_weights(labels, "none") == {0: 1.0, 1: 1.0}


def test_cam_peaks_are_separated_local_maxima_above_the_fraction():
    cam = np.zeros((64, 32))
    cam[10, 5], cam[50, 20], cam[11, 6], cam[40, 30] = 1.0, 0.8, 0.9, 0.3
    peaks = cam_peaks(cam, 3, 0.5)
    assert [p for p, _ in peaks] == [(10, 5), (50, 20)]  # (11, 6) is in (10, 5)'s neighbourhood; 0.3 < 0.5
    assert cam_peaks(np.zeros((4, 4)), 3, 0.5) == []


# --- prediction -------------------------------------------------------------------------------

def scan(rows=70, cols=30, seed=0, spacing=(2.5, 2.5), origin=(-40.0, 12.0)) -> sitk.Image:
    rng = np.random.default_rng(seed)
    array = rng.poisson(20, (rows, cols)).astype(np.float32)
    array[20:26, 8:14] += 200  # a hot spot
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def test_prediction_is_a_class_result_and_an_activation_overlay_on_the_image_grid():
    model, card = tiny_model()
    image = scan()
    pred = METHOD.predict(model, card, image, torch.device("cpu"))
    assert pred.geometry.same_grid(Geometry.of(image), tol=0)
    (result,) = pred.classes
    p = result.probabilities["metastasis"]
    assert result.probabilities["normal"] == pytest.approx(1 - p, abs=1e-6)
    assert result.label == ("metastasis" if p >= 0.5 else "normal") == pred.provenance.parameters["decision"]
    # the map is the activation scaled by the probability: its maximum is the probability
    assert pred.probability.shape == (1, 70, 30) and pred.probability.max() == pytest.approx(p, rel=1e-5)
    np.testing.assert_array_equal(pred.mask, pred.probability >= 0.5)
    assert 1 <= len(pred.points) <= 3 and all(Geometry.of(image).contains(pt.position) for pt in pred.points)
    assert all(0 < pt.score <= p + 1e-6 for pt in pred.points)
    # threshold above the probability: negative, nothing in the mask
    low = METHOD.predict(model, card, image, torch.device("cpu"), threshold=min(1.0, p + 0.01))
    assert low.classes[0].label == "normal" and not low.mask.any()


def test_flip_averaging_makes_a_mirrored_scan_give_the_mirrored_map():
    model, card = tiny_model(seed=2)
    image = scan(seed=4)
    mirrored = sitk.GetImageFromArray(sitk.GetArrayFromImage(image)[:, ::-1].copy())
    mirrored.CopyInformation(image)
    a = METHOD.predict(model, card, image, torch.device("cpu"))
    b = METHOD.predict(model, card, mirrored, torch.device("cpu"))
    assert a.classes[0].probabilities["metastasis"] == pytest.approx(b.classes[0].probabilities["metastasis"],
                                                                     abs=1e-6)
    np.testing.assert_allclose(a.probability[:, :, ::-1], b.probability, atol=1e-5)


def test_a_volume_is_refused_and_unknown_options_named():
    model, card = tiny_model()
    volume = sitk.Image([30, 70, 4], sitk.sitkFloat32)
    with pytest.raises(LesionDetectError, match="planar scintigrams"):
        METHOD.predict(model, card, volume, torch.device("cpu"))
    with pytest.raises(LesionDetectError, match="unknown bone-scan-cls inference option\\(s\\) flip; use tta_flip"):
        METHOD.predict(model, card, scan(), torch.device("cpu"), flip=True)


# --- training, splits, evaluation -------------------------------------------------------------

@pytest.fixture(scope="module")
def crops(tmp_path_factory):
    return synth.generate("bone-scan", tmp_path_factory.mktemp("crops") / "ds", cases=40, seed=1, size="full",
                          params={"view": "crop", "positive_fraction": 0.3})


def test_splits_are_by_patient_stratified_and_the_paper_s_fractions(crops):
    from LesionDetectLib.dataset import load_dataset

    dataset = load_dataset(crops)
    parts = {s: METHOD.cases(dataset, METHOD.defaults, s) for s in ("train", "val", "test")}
    assert sum(len(p) for p in parts.values()) == len(dataset.cases)
    patients = [{c.patient for c in p} for p in parts.values()]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    positives = sum(METHOD.label(c) for c in dataset.cases)
    assert abs(sum(METHOD.label(c) for c in parts["test"]) - 0.3 * positives) <= 1
    assert abs(len(parts["test"]) - 0.3 * len(dataset.cases)) <= 2


def test_train_infer_evaluate_end_to_end(crops, tmp_path, run_cli):
    from LesionDetectLib.prediction import read_prediction

    config = tmp_path / "tiny.json"
    config.write_text(json.dumps({"compact_widths": [4, 8], "input_size": [48, 24], "epochs": 2, "batch_size": 8}))
    code, out, err = run_cli("train", "--method", "bone-scan-cls", "--data", crops, "--out", tmp_path / "m",
                             "--config", config)
    assert code == 0, err
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    assert 0 < card["thresholds"]["image"] < 1 and card["config"]["architecture"] == "compact"
    image = Path(crops) / json.loads((Path(crops) / "dataset.json").read_text())["cases"][0]["image"]
    code, out, err = run_cli("infer", "--model", tmp_path / "m", "--input", image, "--out", tmp_path / "p")
    assert code == 0, err
    pred = read_prediction(tmp_path / "p")
    assert pred.classes and pred.classes[0].decision in ("normal", "metastasis")
    assert pred.probability.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(image)))[None].shape
    code, out, err = run_cli("evaluate", "--model", tmp_path / "m", "--data", crops, "--json", tmp_path / "e.json")
    assert code == 0, err
    metrics = json.loads((tmp_path / "e.json").read_text())
    for key in ("accuracy", "recall", "precision", "f1", "auc", "average_precision", "specificity"):
        assert key in json.dumps(metrics)
    assert "Accuracy" in out and "ImageNet weights absent" in out


# --- real data ---------------------------------------------------------------------------------

def test_a_real_bs80k_crop_reads_and_predicts_on_its_own_grid(shared_data):
    path = shared_data / "bone_scan_bs80k" / "anterior" / "1.jpg"
    if not path.exists():
        pytest.skip(f"{path} not found")
    ((view, image),) = METHOD.read_inputs(path)
    model, card = tiny_model()
    pred = METHOD.predict(model, card, image, torch.device("cpu"))
    assert view == "" and pred.probability.shape == (1, image.GetSize()[1], image.GetSize()[0])


def test_demo_runs_the_classifier_on_a_synthetic_crop_and_states_its_label(tmp_path, run_cli):
    from LesionDetectLib.models import shipped_model_dir

    code, out, err = run_cli("demo", "--method", "bone-scan-cls", "--out", tmp_path / "d", "--no-mrb")
    assert code == 0, err
    assert "bone-scan" in out and (tmp_path / "d" / "prediction" / "prediction.json").exists()
    if shipped_model_dir("bone-scan-cls") is not None:  # the shipped model's decision against the label
        assert "class        " in out and "the study's label: metastatic hot spot" in out


def test_the_shipped_model_is_small_verified_documented_and_runs(shared_data):
    from LesionDetectLib.models import shipped_model_dir
    from LesionDetectLib.training import load_trained

    folder = shipped_model_dir("bone-scan-cls")
    assert folder is not None, "Resources/models/bone-scan-cls must ship"
    assert sum(f.stat().st_size for f in folder.iterdir()) <= 20 * 2 ** 20
    method, model, card, device = load_trained(folder, device="cpu")  # checks the weights' sha256
    for key in ("data", "licence", "intended_use", "known_failure_modes"):
        assert card.training[key]
    real = card.metrics["real_bs80k_anterior_held_out_patients"]
    assert real["auc"] >= 0.95 and "auc_sd" in real
    assert "synthetic_crops_seed11" in card.metrics and 0 < card.thresholds["image"] < 1
    path = shared_data / "bone_scan_bs80k" / "anterior" / "1041.jpg"  # a crop with one clear hot spot
    if path.exists():
        from scipy import ndimage

        ((_, image),) = method.read_inputs(path)
        pred = method.predict(model, card, image, device)
        assert pred.classes[0].decision == "metastasis" and pred.probability.max() <= 1
        counts = ndimage.gaussian_filter(sitk.GetArrayFromImage(image).astype(float), 1.0)
        hot_yx = np.unravel_index(np.argmax(counts), counts.shape)
        x, y, _ = Geometry.of(image).lps_to_index(pred.points[0].position)
        assert np.hypot(x - hot_yx[1], y - hot_yx[0]) <= 4  # the strongest point is on the hot spot
