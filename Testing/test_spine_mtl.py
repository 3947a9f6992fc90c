"""spine-mtl (method 002): the network variants, the spine crop, the vertebra vote and
segmentation readers, self-paced learning in the shared trainer, and train -> infer ->
evaluate end to end on tiny synthetic spine CTs."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from adapter_support import mrml  # noqa: F401  (fixture: a real MRML scene; skips without slicer-core)
from LesionDetectLib import synth
from LesionDetectLib.errors import LesionDetectError
from LesionDetectLib.geometry import Geometry
from LesionDetectLib.methods import get_method
from LesionDetectLib.methods.spine_mtl import evaluation, network
from LesionDetectLib.methods.spine_mtl import method as method_module
from LesionDetectLib.methods.spine_mtl.data import axial_volume, crop_slices, spine_centres
from LesionDetectLib.methods.spine_mtl.vertebrae import read_segmentation, split_along_z, vertebra_name, vote
from LesionDetectLib.training import reduce_loss, self_paced_lambda

TINY = {"blocks": [1, 1, 1, 1], "growth_rate": 4, "init_features": 8, "input_size": 32}


@pytest.fixture(scope="module")
def method():
    return get_method("spine-mtl")


@pytest.fixture(scope="module")
def spine_data(tmp_path_factory):
    return synth.generate("spine-ct", tmp_path_factory.mktemp("spine") / "ds", cases=6, seed=3, size="small")


@pytest.fixture(scope="module")
def tiny_model(spine_data, tmp_path_factory):
    from LesionDetectLib.training import train

    return train("spine-mtl", spine_data, tmp_path_factory.mktemp("spine-model") / "m",
                 overrides={**TINY, "epochs": 1, "warmup_epochs": 0})


@pytest.mark.parametrize("variant, heads", [
    ({"sharing": "single", "mlp": False, "posterolateral": False}, {"bone_quality"}),
    ({"sharing": "soft", "mlp": False, "posterolateral": False}, {"blastic", "lytic", "bone_quality"}),
    ({"sharing": "hard", "shared_blocks": 3, "mlp": False, "posterolateral": False}, {"blastic", "lytic", "bone_quality"}),
    ({"sharing": "hard", "mlp": False}, {"blastic", "lytic", "bone_quality", "posterolateral"}),
    ({}, {"blastic", "lytic", "bone_quality", "posterolateral"}),
])
def test_every_ablation_network_gives_its_heads(method, variant, heads):
    net = method.build_model({**TINY, **variant})
    out = net(torch.rand(3, 1, 32, 32))
    assert set(out) == heads
    assert out["bone_quality"].shape == (3, 4)
    if "posterolateral" in heads:
        assert out["posterolateral"].shape == (3, 3)


def test_without_the_mlp_bone_quality_is_the_product_of_the_binary_probabilities(method):
    net = method.build_model({**TINY, "mlp": False, "posterolateral": False}).eval()
    out = net(torch.rand(4, 1, 32, 32))
    pb, pl = out["blastic"].softmax(1)[:, 1], out["lytic"].softmax(1)[:, 1]
    expected = torch.stack([(1 - pb) * (1 - pl), pb * (1 - pl), pb * pl, (1 - pb) * pl], 1)
    assert torch.allclose(out["bone_quality"].softmax(1), expected, atol=1e-5)
    # argmax of the products = both binary decisions at 0.5 combined
    combined = torch.where(pb > 0.5, torch.where(pl > 0.5, 2, 1), torch.where(pl > 0.5, 3, 0))
    assert torch.equal(out["bone_quality"].argmax(1), combined)


def test_hard_sharing_shares_the_blocks_it_says(method):
    three = method.build_model({**TINY, "shared_blocks": 3})
    four = method.build_model({**TINY, "shared_blocks": 4})
    assert len(three.shared) == 3 and all(len(b) == 1 for b in three.branches.values())
    assert len(four.shared) == 4 and all(len(b) == 0 for b in four.branches.values())
    assert three.branches["blastic"][0] is not three.branches["lytic"][0]


def test_soft_sharing_penalty_is_zero_for_equal_features_and_grows_with_difference():
    a = [torch.ones(2, 3, 4, 4)] * 4
    assert torch.allclose(network.soft_sharing_penalty({"blastic": a, "lytic": a}, [1, 1, 1, 1]), torch.zeros(2))
    b = [torch.zeros(2, 3, 4, 4)] * 4
    assert torch.allclose(network.soft_sharing_penalty({"blastic": a, "lytic": b}, [0.5] * 4), torch.full((2,), 2.0))


def test_unsupported_combinations_and_missing_imagenet_weights_are_named(method, tmp_path, monkeypatch):
    with pytest.raises(LesionDetectError, match="single-task"):
        method.build_model({**TINY, "sharing": "single"})
    with pytest.raises(LesionDetectError, match="DenseNet121"):
        method.build_model(TINY, pretrained=True)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(LesionDetectError, match="densenet121"):
        method.build_model({"blocks": [6, 12, 24, 16], "growth_rate": 32, "init_features": 64}, pretrained=True)


def test_imagenet_densenet121_weights_load_from_a_local_file(method, tmp_path):
    from torchvision.models import densenet121

    state = densenet121(weights=None).state_dict()
    # torchvision's file uses the old key names ("norm.1"); write it that way
    import re
    old = {re.sub(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.", r"\1.\2.", k): v for k, v in state.items()}
    torch.save(old, tmp_path / "densenet121.pth")
    config = {"blocks": [6, 12, 24, 16], "growth_rate": 32, "init_features": 64, "weights": str(tmp_path / "densenet121.pth")}
    net = method.build_model(config, pretrained=True)
    assert torch.equal(net.shared[0][0].weight, state["features.conv0.weight"])


def test_the_crop_finds_the_spine_and_ignores_how_the_image_is_stored(method):
    case = synth.make_case("spine-ct", seed=1, index=0, size="small")
    config = method.defaults
    hu, geometry = axial_volume(case.image)
    centres, found = spine_centres(hu, geometry, config)
    assert found.mean() > 0.8
    bone = case.roi > 0
    # the column of bone nearest the midline: the centre lies within 12 mm of the bone's centroid
    zyx = np.argwhere(bone)
    truth = geometry.index_to_lps(zyx[:, ::-1].astype(float)).mean(axis=0)[:2]
    assert np.all(np.abs(np.median(centres, axis=0) - truth) < 12.0)
    crops = crop_slices(hu, geometry, centres, config)
    assert crops.shape == (hu.shape[0], 1, 96, 96) and float(crops.max()) > 0.3
    # the same CT stored left-right flipped (array reversed, direction negated) gives the same crops
    flipped = sitk.Flip(case.image, [True, False, False], flipAboutOrigin=False)
    hu2, geometry2 = axial_volume(flipped)
    assert geometry2.direction[0] == -1.0
    crops2 = crop_slices(hu2, geometry2, spine_centres(hu2, geometry2, config)[0], config)
    assert float((crops - crops2).abs().mean()) < 0.02


def test_the_vote_takes_the_largest_lesion_count_above_the_length_threshold():
    quality = np.array([0, 3, 3, 3, 2, 0])
    side = np.array([0, 1, 1, 0, 0, 0])
    assert vote(quality, side, 0.5, 0.3)[:2] == ("lytic", "unilateral")
    assert vote(quality, side, 0.55, 0.35)[:2] == ("normal", "normal")
    fractions = vote(quality, side, 0.0, 0.0)[2]
    assert fractions["lytic"] == pytest.approx(0.5) and fractions["unilateral"] == pytest.approx(1 / 3)


def test_vertebra_names_are_read_from_totalsegmentator_and_slicer_names():
    assert vertebra_name("vertebrae_L1") == "L1" and vertebra_name("T12") == "T12"
    assert vertebra_name("vertebrae_C7.nii.gz") == "C7" and vertebra_name("liver") is None


def _label_image(case, values: np.ndarray) -> sitk.Image:
    img = sitk.GetImageFromArray(values.astype(np.uint8))
    img.CopyInformation(case.image)
    return img


def _two_vertebrae(folder):
    """(a small synthetic spine CT, its TotalSegmentator v2 multilabel array, the file): L1 in
    slices 0-7, T12 in slices 8-15."""
    case = synth.make_case("spine-ct", seed=1, index=0, size="small")
    labels = np.zeros(case.roi.shape, np.uint8)
    labels[:8, 20:44, 20:44] = 31  # v2: vertebrae_L1
    labels[8:, 20:44, 20:44] = 32  # v2: vertebrae_T12
    sitk.WriteImage(_label_image(case, labels), str(folder / "ts.nii.gz"))
    return case, labels, folder / "ts.nii.gz"


def test_a_totalsegmentator_multilabel_file_and_per_vertebra_files_give_the_vertebrae(tmp_path):
    case, labels, path = _two_vertebrae(tmp_path)
    geometry = Geometry.of(case.image)
    vertebrae = read_segmentation(path, geometry)
    assert [v.name for v in vertebrae] == ["T12", "L1"]
    assert vertebrae[1].slices == list(range(8)) and vertebrae[0].slices == list(range(8, 16))
    folder = tmp_path / "segmentations"
    folder.mkdir()
    sitk.WriteImage(_label_image(case, labels == 31), str(folder / "vertebrae_L1.nii.gz"))
    sitk.WriteImage(_label_image(case, labels == 32), str(folder / "vertebrae_T12.nii.gz"))
    sitk.WriteImage(_label_image(case, labels > 0), str(folder / "spinal_cord.nii.gz"))  # not a vertebra
    assert [v.name for v in read_segmentation(folder, geometry)] == ["T12", "L1"]


def test_a_slicer_segmentation_with_one_segment_per_vertebra_gives_the_vertebrae(tmp_path):
    from LesionDetectLib.segnrrd import Segment, write_segmentation

    case = synth.make_case("spine-ct", seed=1, index=0, size="small")
    geometry = Geometry.of(case.image)
    labels = np.zeros(geometry.shape, np.uint8)
    labels[:8, 20:44, 20:44] = 1
    labels[8:, 20:44, 20:44] = 2
    write_segmentation(tmp_path / "v.seg.nrrd", labels, geometry,
                       [Segment("s1", "vertebrae_L1", 1, terminology=""), Segment("s2", "T12", 2, terminology=""),
                        Segment("s3", "spinal canal", 3, terminology="")])
    vertebrae = read_segmentation(tmp_path / "v.seg.nrrd", geometry)
    assert [(v.name, v.slices) for v in vertebrae] == [("T12", list(range(8, 16))), ("L1", list(range(8)))]


def test_a_segmentation_on_another_grid_or_without_vertebrae_is_refused(tmp_path):
    case = synth.make_case("spine-ct", seed=1, index=0, size="small")
    geometry = Geometry.of(case.image)
    other = sitk.Image([32, 32, 16], sitk.sitkUInt8)
    sitk.WriteImage(other, str(tmp_path / "other.nii.gz"))
    with pytest.raises(LesionDetectError, match="other.nii.gz.*another grid"):
        read_segmentation(tmp_path / "other.nii.gz", geometry)
    sitk.WriteImage(_label_image(case, np.zeros(geometry.shape)), str(tmp_path / "empty.nii.gz"))
    with pytest.raises(LesionDetectError, match="empty.nii.gz.*no vertebra labels"):
        read_segmentation(tmp_path / "empty.nii.gz", geometry)


def test_the_built_in_split_finds_the_vertebrae_of_a_synthetic_spine(method):
    case = synth.make_case("spine-ct", seed=0, index=2, size="full")
    hu, geometry = axial_volume(case.image)
    centres, column = spine_centres(hu, geometry, method.defaults)
    found = split_along_z(hu, geometry, centres, column, method.defaults)
    truth = [v for v in case.entry["vertebrae"] if v["slices"]]
    assert abs(len(found) - len(truth)) <= 1
    # most labelled slices of one true vertebra land in one found vertebra
    owner = {k: v.name for v in found for k in v.slices}
    for v in truth:
        names = [owner.get(k) for k in v["slices"]]
        assert max(names.count(n) for n in set(names)) >= 0.7 * len(names)


def test_self_paced_lambda_grows_to_take_every_sample():
    config = {"self_paced_start": 0.5, "self_paced_epochs": 4}
    losses = list(np.arange(1, 101, dtype=float))
    assert math.isinf(self_paced_lambda(config, 0, losses))
    lams = [self_paced_lambda(config, e, losses) for e in range(1, 5)]
    assert lams[0] == pytest.approx(np.quantile(losses, 0.625)) and lams == sorted(lams) and math.isinf(lams[-1])
    assert math.isinf(self_paced_lambda({"self_paced_start": 0.0}, 3, losses))
    loss, seen = reduce_loss(torch.tensor([1.0, 2.0, 5.0]), 3.0, True)
    assert float(loss) == pytest.approx(1.5) and seen == [1.0, 2.0, 5.0]
    with pytest.raises(LesionDetectError, match="per sample"):
        reduce_loss(torch.tensor(2.0), 3.0, True)


def test_per_class_sensitivity_and_specificity_match_the_confusion_matrix():
    from sklearn.metrics import confusion_matrix

    rng = np.random.default_rng(0)
    truth, predicted = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    table = evaluation.per_class(truth, predicted, ("normal", "blastic", "mixed", "lytic"))
    cm = confusion_matrix(truth, predicted, labels=range(4))
    for i, name in enumerate(("normal", "blastic", "mixed", "lytic")):
        tp, fn = cm[i, i], cm[i].sum() - cm[i, i]
        fp = cm[:, i].sum() - cm[i, i]
        tn = cm.sum() - tp - fn - fp
        assert table[f"SE_{name}"] == pytest.approx(tp / (tp + fn))
        assert table[f"SP_{name}"] == pytest.approx(tn / (tn + fp))


def test_train_infer_evaluate_end_to_end(spine_data, tmp_path, run_cli):
    sets = ["--set", "blocks=[1,1,1,1]", "--set", "growth_rate=4", "--set", "init_features=8",
            "--set", "input_size=32", "--set", "epochs=2", "--set", "warmup_epochs=1"]
    code, out, err = run_cli("train", "--method", "spine-mtl", "--data", spine_data, "--out", tmp_path / "m", *sets)
    assert code == 0, err
    card = json.loads((tmp_path / "m" / "model.json").read_text())
    assert set(card["thresholds"]) == {"vertebra_min_fraction", "vertebra_pi_min_fraction"}
    assert card["training"]["history"][1]["self_paced_lambda"] is not None
    image = sorted((spine_data / "images").iterdir())[0]
    code, out, err = run_cli("infer", "--model", tmp_path / "m", "--input", image, "--out", tmp_path / "p")
    assert code == 0, err
    rows = list(csv.DictReader((tmp_path / "p" / "classes.csv").open()))
    slices = [r for r in rows if r["scope"] == "slice"]
    assert len(slices) == sitk.ReadImage(str(image)).GetSize()[2]
    assert {"z_mm", "normal", "blastic", "mixed", "lytic", "no posterolateral involvement", "unilateral",
            "bilateral"} <= set(rows[0])
    total = [sum(float(r[c]) for c in ("normal", "blastic", "mixed", "lytic")) for r in slices]
    assert np.allclose(total, 1.0, atol=1e-4)
    vertebrae = [r for r in rows if r["scope"] == "vertebra"]
    points = json.loads((tmp_path / "p" / "points.mrk.json").read_text())["markups"][0]["controlPoints"]
    assert len(points) == len(vertebrae) >= 1
    assert all(p["label"].startswith("V") and ":" in p["label"] for p in points)
    code, out, err = run_cli("evaluate", "--model", tmp_path / "m", "--data", spine_data, "--split", "all")
    assert code == 0, err
    assert "bone quality at slice level" in out and "SE_N" in out


def test_a_given_segmentation_names_the_vertebrae_and_colours_the_involved_ones(tiny_model, tmp_path, monkeypatch):
    from LesionDetectLib.training import load_trained

    method, model, card, device = load_trained(tiny_model)

    def lytic_below_slice_8(model, images, config, device):  # the network's answer, fixed: L1 lytic
        quality = np.tile([0.9, 0.05, 0.0, 0.05], (len(images), 1))
        quality[:8] = [0.05, 0.05, 0.1, 0.8]
        return quality, np.tile([0.8, 0.1, 0.1], (len(images), 1))

    monkeypatch.setattr(method, "slice_probabilities", lytic_below_slice_8)
    case, labels, path = _two_vertebrae(tmp_path)
    pred = method.predict(model, card, case.image, device, vertebrae=str(path))
    assert [p.label.split(":")[0] for p in pred.points] == ["T12", "L1"]
    involved = [p.label for p in pred.points if not p.label.endswith(": normal")]
    assert involved == ["L1: lytic"]
    assert [r.name for r in pred.region_names] == involved and pred.mask is None
    assert pred.regions.shape == case.roi.shape
    for region in pred.region_names:  # each involved vertebra is its own segment, coloured by its type
        assert (pred.regions == region.value).sum() == (labels == {"T12": 32, "L1": 31}[region.name[:3].rstrip(":")]).sum()
        quality = region.name.split(": ")[1].split(",")[0]
        assert region.color == method_module.TYPE_COLORS[quality]
    from LesionDetectLib.prediction import read_prediction, write_prediction

    write_prediction(pred, tmp_path / "p")
    back = read_prediction(tmp_path / "p")
    assert np.array_equal(back.regions, pred.regions)
    assert [(r.value, r.name) for r in back.region_names] == [(r.value, r.name) for r in pred.region_names]


def _soft_tissue_only() -> sitk.Image:
    """A CT of air and soft tissue (a body without bones)."""
    array = np.full((8, 48, 48), -1000, np.int16)
    array[:, 8:40, 8:40] = 40 + np.random.default_rng(0).normal(0, 15, (8, 32, 32)).astype(np.int16)
    return sitk.GetImageFromArray(array)


@pytest.mark.parametrize("make, problem", [
    (lambda: sitk.Image([32, 32], sitk.sitkInt16) - 500, "2-D"),
    (lambda: _soft_tissue_only(), "no bone"),
])
def test_bad_inputs_get_one_line_naming_the_file(tmp_path, run_cli, make, problem, tiny_model):
    image = make()
    path = tmp_path / "bad.nii.gz"
    sitk.WriteImage(image, str(path))
    code, out, err = run_cli("infer", "--model", tiny_model, "--input", path, "--out", tmp_path / "p")
    assert code != 0 and "bad.nii.gz" in err and problem in err
    assert not (tmp_path / "p").exists() or not any((tmp_path / "p").iterdir())


def test_a_sagittal_ct_is_refused(method):
    case = synth.make_case("spine-ct", seed=1, index=0, size="small")
    image = sitk.PermuteAxes(case.image, [2, 1, 0])
    with pytest.raises(LesionDetectError, match="not an axial CT"):
        method.check_input(image, "sagittal.nii.gz")


@pytest.mark.parametrize("name", ["totalsegmentator_example_ct.nii.gz", "mirp_crlm_1004_ct_dicom"])
def test_real_ct_runs_end_to_end_and_its_vertebra_points_lie_on_the_spine(shared_data, tiny_model, name):
    from scipy import ndimage

    from LesionDetectLib.io import read_image
    from LesionDetectLib.training import load_trained

    path = shared_data / "realistic_inputs" / name
    image = read_image(path)
    method, model, card, device = load_trained(tiny_model)
    method.check_input(image, path)
    pred = method.predict(model, card, image, device)
    geometry = Geometry.of(image)
    hu = sitk.GetArrayFromImage(image).astype(np.float32)
    # the spinal column: the largest bone component's voxels near the body's left-right middle
    assert len(pred.points) >= 1 and len([c for c in pred.classes if c.scope == "slice"]) == hu.shape[0]
    bone = ndimage.binary_dilation(hu >= 200, iterations=2)
    for point in pred.points:
        i, j, k = np.round(geometry.lps_to_index(point.position)).astype(int)
        r = max(1, int(round(12 / geometry.spacing[0])))
        window = bone[max(k - 1, 0):k + 2, max(j - r, 0):j + r + 1, max(i - r, 0):i + r + 1]
        assert window.mean() > 0.2, f"{point.label} at {point.position} is not on bone"
    body_x = np.nonzero((hu > -300).any(axis=(0, 1)))[0]
    middle = geometry.index_to_lps([(body_x.min() + body_x.max()) / 2, 0, 0])[0]
    assert all(abs(p.position[0] - middle) < 30 for p in pred.points)


def test_in_slicer_the_slice_table_and_the_vertebra_points_show_and_read_back(tiny_model, mrml):
    """Against the real MRML library: the per-slice table (index, z in mm, 4 + 3 probabilities),
    the vertebra rows and the labelled, scored vertebra points."""
    from LesionDetectLib.training import load_trained
    from LesionDetectMRML import convert, overlay

    method, model, card, device = load_trained(tiny_model)
    case = synth.make_case("spine-ct", seed=1, index=0, size="small")
    pred = method.predict(model, card, case.image, device)
    volume = convert.add_image_volume(mrml.scene, case.image, "spine CT")
    nodes = overlay.add_prediction(mrml.scene, mrml.logic("Segmentations"), volume, pred)
    table = nodes.classes.GetTable()
    columns = [table.GetColumnName(c) for c in range(table.GetNumberOfColumns())]
    assert columns[:4] == ["scope", "index", "z_mm", "label"]
    assert set(columns[4:]) == {"normal", "blastic", "mixed", "lytic", "no posterolateral involvement", "unilateral",
                                "bilateral"}
    back = convert.table_to_classes(nodes.classes)
    assert [(c.scope, c.index, c.z_mm, c.label) for c in back] == [(c.scope, c.index, c.z_mm, c.label)
                                                                      for c in pred.classes]
    labels = [nodes.points.GetNthControlPointLabel(n) for n in range(nodes.points.GetNumberOfControlPoints())]
    assert labels == [p.label for p in pred.points]
    rows = overlay.findings(nodes, mrml.logic("Segmentations"))
    assert [r.name for r in rows if r.kind == "candidate"] == labels


def test_in_slicer_the_involved_vertebrae_are_segments_coloured_by_type(tiny_model, mrml, tmp_path, monkeypatch):
    from LesionDetectLib.training import load_trained
    from LesionDetectMRML import convert, overlay

    method, model, card, device = load_trained(tiny_model)
    monkeypatch.setattr(method, "slice_probabilities", lambda m, images, c, d: (
        np.tile([0.05, 0.8, 0.1, 0.05], (len(images), 1)), np.tile([0.1, 0.1, 0.8], (len(images), 1))))
    case, labels, path = _two_vertebrae(tmp_path)
    pred = method.predict(model, card, case.image, device, vertebrae=str(path))
    volume = convert.add_image_volume(mrml.scene, case.image, "spine CT")
    nodes = overlay.add_prediction(mrml.scene, mrml.logic("Segmentations"), volume, pred)
    segmentation = nodes.regions.GetSegmentation()
    names = [segmentation.GetNthSegment(n).GetName() for n in range(segmentation.GetNumberOfSegments())]
    assert names == ["T12: blastic, bilateral", "L1: blastic, bilateral"]
    for n, region in enumerate(pred.region_names):
        assert segmentation.GetNthSegment(n).GetColor() == pytest.approx(method_module.TYPE_COLORS["blastic"])
        got = convert.segment_mask(nodes.regions, f"region{region.value}", volume, mrml.logic("Segmentations"))
        assert np.array_equal(got > 0, pred.regions == region.value)
