"""Method 000 `bone-ct-patch`: patches, encodings, bone mask, network, dense parsing, metrics, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from LesionDetectLib import markups
from LesionDetectLib.dataset import write_dataset_json
from LesionDetectLib.errors import LesionDetectError
from LesionDetectLib.geometry import Geometry
from LesionDetectLib.methods import get_method
from LesionDetectLib.methods.bone_ct_patch import data as patches
from LesionDetectLib.methods.bone_ct_patch import evaluation, network, parsing
from LesionDetectLib.metrics.matching import match_detections, point_hits
from LesionDetectLib.metrics.thresholds import fmax_threshold
from LesionDetectLib.prediction import LesionBox, LesionPoint, read_prediction
from LesionDetectLib.training import merge_config, read_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "Resources" / "configs" / "bone-ct-patch"
# a width-reduced network so that tests run in seconds (ImageNet weights need width 1)
TINY = {"width": 0.0625, "patch_pixels": 32, "fc_hidden": [16, 16], "augment": 2, "batch_size": 16,
        "parse_tile": 4, "epochs": 1, "lr": 0.01}
OBLIQUE = (0.9961947, -0.0871557, 0.0, 0.0871557, 0.9961947, 0.0, 0.0, 0.0, 1.0)  # 5 degrees about z


def config(**extra) -> dict:
    return merge_config(get_method("bone-ct-patch").defaults, TINY, extra)


# --- encodings and patches ----------------------------------------------------------------------------

def _unnormalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(network.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(network.IMAGENET_STD).view(1, 3, 1, 1)
    return x * std + mean


def test_three_channel_encoding_splits_hu_ranges():
    cfg = config(encoding="3c")
    enc = network.HUEncoder("3c", cfg["grey_window"], cfg["windows_3c"])
    hu = torch.tensor([-1000.0, 50.0, 250.0, 1000.0, 3000.0]).view(1, 1, 1, 5)
    low, high, soft = _unnormalise(enc(hu))[0, :, 0]
    np.testing.assert_allclose(low, [0, 1050 / 1100, 1, 1, 1], atol=1e-6)  # < 100 HU
    np.testing.assert_allclose(high, [0, 0, 0, 600 / 1600, 1], atol=1e-6)  # > 400 HU
    np.testing.assert_allclose(soft, [0, 0, 0.5, 1, 1], atol=1e-6)  # 100..400 HU
    grey = _unnormalise(network.HUEncoder("grey", [-500, 1500], cfg["windows_3c"])(hu))[0, :, 0]
    np.testing.assert_allclose(grey[0], [0, 0.275, 0.375, 0.75, 1], atol=1e-6)
    np.testing.assert_allclose(grey[1:], grey[:1].expand(2, -1), atol=1e-6)  # same patch in every channel
    with pytest.raises(LesionDetectError, match="unknown encoding"):
        network.HUEncoder("rgb", [0, 1], cfg["windows_3c"])


def test_patches_are_15_mm_whatever_the_spacing_and_rotate_in_mm():
    # HU = physical x (mm) + 10 * physical y: bilinear sampling reproduces a linear ramp exactly
    spacing = (0.7, 1.3, 2.5)
    zz, yy, xx = np.mgrid[0:3, 0:40, 0:50].astype(np.float32)
    hu = xx * spacing[0] + 10 * yy * spacing[1]
    centre = np.array([[1.0, 20.3, 24.6]])
    p = patches.extract_patches(hu, spacing, centre, 15.0, 64)[0, 0].numpy()
    offsets = patches.patch_offsets(64) * 15.0 / 64  # mm from the centre
    cx, cy = centre[0, 2] * spacing[0], centre[0, 1] * spacing[1]
    expected = (cx + offsets[None, :]) + 10 * (cy + offsets[:, None])
    np.testing.assert_allclose(p, expected, atol=1e-2)
    assert p[0, -1] - p[0, 0] == pytest.approx(15.0 * 63 / 64, abs=1e-2)  # 15 mm wide
    # rotated by 90 degrees: columns now run along +y; mirrored: along -x
    rot = patches.extract_patches(hu, spacing, centre, 15.0, 64, angles=np.array([np.pi / 2]))[0, 0].numpy()
    np.testing.assert_allclose(rot, (cx - offsets[:, None]) + 10 * (cy + offsets[None, :]), atol=1e-2)
    mir = patches.extract_patches(hu, spacing, centre, 15.0, 64, mirror=np.array([True]))[0, 0].numpy()
    np.testing.assert_allclose(mir, (cx - offsets[None, :]) + 10 * (cy + offsets[:, None]), atol=1e-2)
    # outside the image: air
    far = patches.extract_patches(hu, spacing, np.array([[0.0, -100.0, -100.0]]), 15.0, 32)
    assert torch.all(far == patches.AIR_HU)


def test_training_positions_follow_the_paper():
    rng = np.random.default_rng(0)
    bone = np.zeros((10, 60, 60), np.uint8)
    bone[:, 10:50, 10:50] = 1
    lesions = np.array([[5.0, 30.0, 30.0]])
    centres, labels, angles, mirror = patches.training_positions(bone, lesions, (1.0, 1.0, 2.0), rng, augment=5,
                                                                 negatives_per_positive=1.0, patch_mm=15.0,
                                                                 exclusion_z_mm=7.5)
    pos, neg = centres[labels == 1], centres[labels == 0]
    assert len(pos) == 5 and len(neg) == 5
    assert np.all(pos == lesions) and angles[0] == 0 and not mirror[0] and np.any(angles[1:] != 0)
    assert np.all(angles[labels == 0] == 0) and not mirror[labels == 0].any()  # negatives not augmented
    assert all(bone[tuple(c.astype(int))] for c in neg)
    near = (np.abs(neg[:, 0] - 5) * 2.0 < 7.5) & (np.abs(neg[:, 1] - 30) < 15 * 2 ** .5) & \
           (np.abs(neg[:, 2] - 30) < 15 * 2 ** .5)
    assert not near.any()


def test_shifted_positives_stay_within_the_shift_and_negatives_clear_of_them():
    rng = np.random.default_rng(0)
    bone = np.zeros((10, 80, 80), np.uint8)
    bone[:, 10:70, 10:70] = 1
    lesions = np.array([[5.0, 40.0, 40.0]])
    spacing = (0.5, 0.8, 2.0)  # anisotropic in-plane: the shift is in mm
    centres, labels, _, _ = patches.training_positions(bone, lesions, spacing, rng, augment=200,
                                                       negatives_per_positive=1.0, patch_mm=15.0,
                                                       exclusion_z_mm=7.5, shift_mm=3.0)
    pos, neg = centres[labels == 1], centres[labels == 0]
    dist_mm = np.hypot((pos[:, 1] - 40) * 0.8, (pos[:, 2] - 40) * 0.5)
    assert dist_mm[0] == 0 and np.all(pos[:, 0] == 5)  # the first patch is the lesion's own
    assert dist_mm.max() <= 3.0 + 1e-9 and dist_mm[1:].min() > 0 and np.median(dist_mm[1:]) > 1.5
    near = (np.abs(neg[:, 0] - 5) * 2.0 < 7.5) & (np.abs(neg[:, 1] - 40) * 0.8 < 15 * 2 ** .5 + 3) & \
           (np.abs(neg[:, 2] - 40) * 0.5 < 15 * 2 ** .5 + 3)
    assert not near.any()


def test_bone_mask_from_hu_fills_marrow_and_lytic_holes():
    hu = np.full((4, 60, 60), 40.0, np.float32)
    yy, xx = np.mgrid[0:60, 0:60]
    r = np.hypot(yy - 30, xx - 30)
    hu[:, r < 15] = 800.0  # cortex
    hu[:, r < 12] = 150.0  # marrow (below the threshold)
    hu[:, (np.hypot(yy - 30, xx - 22) < 4)] = 30.0  # lytic lesion inside
    hu[:, 2, 2] = 900.0  # a speck: dropped
    mask = patches.bone_mask_from_hu(hu, (1.0, 1.0, 1.0))
    assert mask[:, 30, 30].all() and mask[:, 30, 22].all() and not mask[:, 2, 2].any()
    assert not mask[:, 30, 50].any()
    assert mask.sum() == pytest.approx(4 * np.pi * 15 ** 2, rel=0.05)
    wider = patches.bone_mask_from_hu(hu, (1.0, 1.0, 1.0), margin_mm=3.0)
    assert wider.sum() == pytest.approx(4 * np.pi * 18 ** 2, rel=0.05) and not wider[:, 2, 2].any()


# --- network --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vgg16_home(tmp_path_factory):
    """A stand-in for torchvision's ImageNet file: vgg16().state_dict() under a temp TORCH_HOME."""
    import torchvision

    home = tmp_path_factory.mktemp("torch_home")
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.manual_seed(1)
    state = torchvision.models.vgg16().state_dict()
    torch.save(state, home / "hub" / "checkpoints" / network.VGG16_FILE)
    return home, {k: v for k, v in state.items() if k.startswith("features.")}


def test_transfer_learning_loads_local_imagenet_weights_and_freezes_six_layers(vgg16_home, monkeypatch):
    home, features = vgg16_home
    monkeypatch.setenv("TORCH_HOME", str(home))
    model = get_method("bone-ct-patch").build_model(config(width=1.0, patch_pixels=64, fc_hidden=[256, 256]), pretrained=True)
    for key, value in model.features.state_dict().items():
        assert torch.equal(value, features[f"features.{key}"])
    convs = [m for m in model.features if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 13
    assert [c.weight.requires_grad for c in convs] == [False] * 6 + [True] * 7
    assert all(p.requires_grad for p in model.head.parameters())
    # three new FC layers, one output
    linears = [m for m in model.head if isinstance(m, torch.nn.Linear)]
    assert [(l.in_features, l.out_features) for l in linears] == [(2048, 256), (256, 256), (256, 1)]
    # --weights PATH works too; a missing file says where to put it
    explicit = get_method("bone-ct-patch").build_model(
        config(width=1.0, patch_pixels=64, weights=str(home / "hub" / "checkpoints" / network.VGG16_FILE)), True)
    assert torch.equal(explicit.features[0].weight, features["features.0.weight"])
    monkeypatch.setenv("TORCH_HOME", str(home / "nowhere"))
    with pytest.raises(LesionDetectError, match=r"vgg16-397923af\.pth.*hub/checkpoints"):
        get_method("bone-ct-patch").build_model(config(width=1.0), pretrained=True)


def test_imagenet_weights_need_the_full_width(vgg16_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(vgg16_home[0]))
    with pytest.raises(LesionDetectError, match="not torchvision VGG-16 weights matching"):
        get_method("bone-ct-patch").build_model(config(), pretrained=True)


def test_random_initialisation_trains_every_layer():
    model = get_method("bone-ct-patch").build_model(config(), pretrained=False)
    assert all(p.requires_grad for p in model.parameters())
    out = model(torch.zeros(3, 1, 32, 32))
    assert out.shape == (3,)


@pytest.mark.parametrize("stride", [32, 16, 8, 4])
def test_dense_network_reproduces_the_patch_network_on_one_patch(stride):
    torch.manual_seed(0)
    model = network.PatchNet(config(patch_pixels=64)).eval()
    hu = torch.randn(2, 1, 64, 64) * 400
    dense = network.DenseNet(model, stride, 64).eval()
    with torch.no_grad():
        assert dense(hu).shape == (2, 1, 1)
        np.testing.assert_allclose(dense(hu)[:, 0, 0], model(hu), atol=1e-5)
        # on a larger region, output (a, b) is the window starting at (a*S, b*S) - exactly
        # where nothing reaches the zero padding, here checked against the network's values
        big = torch.randn(1, 1, 64 + 2 * stride, 64 + stride) * 400
        out = dense(big)
    assert out.shape == (1, 3, 2)


def test_dense_network_folds_batch_norm_exactly():
    torch.manual_seed(0)
    model = network.PatchNet(config(batch_norm=True, context_pixels=32))
    for bn in (m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):  # as if trained
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 1.5), bn.bias.data.uniform_(-0.5, 0.5)
    model.eval()
    hu = torch.randn(2, 1, 96, 96) * 400 + 200
    dense = network.DenseNet(model, 8, 32).eval()
    with torch.no_grad():
        np.testing.assert_allclose(dense(hu)[:, 4, 4], model(hu), atol=1e-4)


# --- dense parsing -----------------------------------------------------------------------------------------

def _noise_slice(seed=0, shape=(70, 80)):
    rng = np.random.default_rng(seed)
    from scipy import ndimage

    return (ndimage.gaussian_filter(rng.normal(0, 1, shape), 2) * 2000 + 200).astype(np.float32)


def test_dense_parsing_equals_patch_by_patch_for_isolated_nodes_and_stays_close_otherwise():
    torch.manual_seed(0)
    model = network.PatchNet(config(patch_pixels=64)).eval()
    hu = _noise_slice()
    spacing = (0.8, 0.9, 2.0)
    steps = patches.pixel_step(spacing, 15.0, 64)
    parser = parsing.DenseParser(model, parsing.ParseSettings.of(config(patch_pixels=64), tile=1),
                                 torch.device("cpu"))
    gx, gy = parsing.node_spacing(spacing, parser.settings)
    need = np.zeros((int(69 // gy) + 2, int(79 // gx) + 2), bool)
    need[1, 1] = need[1, 6] = need[5, 3] = True  # far apart: each its own region
    nodes = parser.slice_nodes(hu, need, steps)
    a, b = np.nonzero(need)
    ref = parsing.per_patch_probabilities(model, hu[None], spacing, np.stack([0 * a, a * gy, b * gx], 1).astype(float),
                                          parser.settings, torch.device("cpu"))
    np.testing.assert_allclose(1 / (1 + np.exp(-nodes[a, b])), ref, atol=1e-5)
    assert np.isnan(nodes[~need]).all()
    # every node at once (one region): zero padding at patch borders becomes real image
    need[:] = True
    nodes = parser.slice_nodes(hu, need, steps)
    a, b = np.nonzero(need)
    ref = parsing.per_patch_probabilities(model, hu[None], spacing, np.stack([0 * a, a * gy, b * gx], 1).astype(float),
                                          parser.settings, torch.device("cpu"))
    assert np.abs(1 / (1 + np.exp(-nodes[a, b])) - ref).max() < 0.02


@pytest.mark.parametrize("stride", [32, 16])
def test_with_enough_context_dense_parsing_is_exactly_patch_by_patch(stride):
    """context_pixels 96 >= the 90 px that VGG-16's pool5 cells see beyond the patch: every
    node of one big region equals its own patch (with context) classified alone, whatever
    the weights; with too little context (32) it does not."""
    torch.manual_seed(0)
    hu = _noise_slice(3, (60, 70))
    spacing = (0.9, 0.8, 2.0)
    gaps = {}
    for context in (96, 32):
        cfg = config(patch_pixels=64, context_pixels=context, parse_stride=stride)
        model = network.PatchNet(cfg).eval()
        for m in model.modules():  # larger weights than the init, so far context matters
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.normal_(m.weight, std=(2.0 / (9 * m.in_channels)) ** 0.5)
                torch.nn.init.normal_(m.bias, std=0.1)
        parser = parsing.DenseParser(model, parsing.ParseSettings.of(cfg), torch.device("cpu"))
        gx, gy = parsing.node_spacing(spacing, parser.settings)
        need = np.ones((int(59 // gy) + 2, int(69 // gx) + 2), bool)
        logits = parser.slice_nodes(hu, need, patches.pixel_step(spacing, 15.0, 64))
        a, b = np.nonzero(need)
        centres = np.stack([0 * a, a * gy, b * gx], 1).astype(float)
        with torch.no_grad():
            ref = model(patches.extract_patches(hu[None], spacing, centres, 15.0, 64, context=context)).numpy()
        gaps[context] = np.abs(logits[a, b] - ref).max() / ref.std()  # relative to how patches differ
    assert gaps[96] < 1e-3
    assert gaps[32] > 100 * gaps[96]


def test_bfloat16_parsing_stays_close_to_float32():
    torch.manual_seed(0)
    cfg = config(patch_pixels=64, context_pixels=96)
    model = network.PatchNet(cfg).eval()
    hu, bone = _noise_slice(4, (40, 50)), np.ones((40, 50), np.uint8)
    maps = {p: parsing.DenseParser(model, parsing.ParseSettings.of(cfg, precision=p), torch.device("cpu")
                                   ).parse_slice(hu, bone, (1.0, 1.0, 2.0)) for p in ("float32", "bfloat16")}
    assert 0 < np.abs(maps["bfloat16"] - maps["float32"]).max() < 0.02  # different arithmetic, same map
    with pytest.raises(LesionDetectError, match="parse_precision"):
        parsing.ParseSettings.of(cfg, precision="float16")


def test_region_plan_covers_every_needed_node_with_the_least_area_it_tries():
    """A compact bone region is one rectangle; a rib-cage ring is cut so that its empty
    middle is not computed; no region is taller than `tile` node rows (memory)."""
    cfg = config(patch_pixels=64, context_pixels=96)
    parser = parsing.DenseParser(network.PatchNet(cfg).eval(), parsing.ParseSettings.of(cfg, tile=64),
                                 torch.device("cpu"))
    pixels = parser.region_pixels
    blob = np.zeros((110, 110), bool)
    blob[30:70, 10:100] = True
    assert parser.regions(blob) == [(30, 69, 10, 99)]
    ring = np.zeros((110, 110), bool)  # ribs about 4 nodes (15 mm) thick around a 340 mm chest
    ring[5:105, 5:105] = True
    ring[9:101, 9:101] = False
    plan = parser.regions(ring)
    covered = np.zeros_like(ring)
    for a0, a1, b0, b1 in plan:
        assert a1 - a0 < 64
        covered[a0:a1 + 1, b0:b1 + 1] = True
    assert covered[ring].all()
    assert not covered[30:80, 30:80].any()  # the middle, beyond every wall's overhang
    area = sum(pixels(*r) for r in plan)
    assert area < 0.7 * pixels(5, 104, 5, 104)
    # never more than the fixed bands of 8 rows from row 0 that parsing used before
    old = [(a0 + int(np.nonzero(ring[a0:a0 + 8].any(1))[0][0]), a0 + int(np.nonzero(ring[a0:a0 + 8].any(1))[0][-1]),
            int(np.nonzero(ring[a0:a0 + 8].any(0))[0][0]), int(np.nonzero(ring[a0:a0 + 8].any(0))[0][-1]))
           for a0 in range(0, 110, 8) if ring[a0:a0 + 8].any()]
    assert area <= sum(pixels(*r) for r in old)


def test_region_plan_is_no_worse_than_the_best_band_cut_found_by_brute_force():
    import itertools

    cfg = config(patch_pixels=64)
    parser = parsing.DenseParser(network.PatchNet(cfg).eval(), parsing.ParseSettings.of(cfg, tile=10),
                                 torch.device("cpu"))
    rng = np.random.default_rng(1)
    for _ in range(3):
        need = rng.random((9, 40)) < 0.1
        need[0, 0] = need[8, 39] = True
        brute = np.inf
        for cuts in itertools.product((False, True), repeat=8):  # every cut of 9 rows into bands
            edges = [0] + [k + 1 for k, c in enumerate(cuts) if c] + [9]
            brute = min(brute, sum(parser.region_pixels(a0, a1 - 1, c0, c1) for a0, a1 in zip(edges, edges[1:])
                                   for c0, c1 in parser._runs(need[a0:a1].any(axis=0))))
        plan = parser.regions(need)
        assert sum(parser.region_pixels(*r) for r in plan) <= brute


def test_context_patches_hold_the_patch_in_their_centre():
    spacing = (0.7, 1.3, 2.5)
    hu = np.random.default_rng(0).normal(0, 100, (1, 80, 90)).astype(np.float32)
    centre = np.array([[0.0, 40.3, 44.6]])
    plain = patches.extract_patches(hu, spacing, centre, 15.0, 32)
    wide = patches.extract_patches(hu, spacing, centre, 15.0, 32, context=32)
    assert wide.shape == (1, 1, 96, 96)
    np.testing.assert_allclose(wide[..., 32:64, 32:64], plain, atol=1e-4)
    with pytest.raises(LesionDetectError, match="context_pixels must be a multiple of 32"):
        network.PatchNet(config(context_pixels=48))


def test_parse_volume_maps_bone_only_and_interpolates_nodes():
    torch.manual_seed(0)
    cfg = config()
    model = network.PatchNet(cfg).eval()
    hu = np.stack([_noise_slice(1), _noise_slice(2)])
    bone = np.zeros(hu.shape, np.uint8)
    bone[0, 20:40, 25:50] = 1
    parser = parsing.DenseParser(model, parsing.ParseSettings.of(cfg), torch.device("cpu"))
    prob = parser.parse_volume(hu, bone, (1.0, 1.0, 3.0))
    assert prob.dtype == np.float32 and prob.shape == hu.shape
    assert (prob[bone == 0] == 0).all() and (prob[bone == 1] > 0).all() and prob[1].max() == 0
    # between nodes the map is the bilinear interpolation of the node probabilities
    gx, gy = parsing.node_spacing((1.0, 1.0, 3.0), parser.settings)
    assert gx == gy == pytest.approx(7.5)  # 15 mm / 32 px * stride 16
    need, _, _ = parsing.needed_nodes(bone[0], gx, gy)
    nodes = 1 / (1 + np.exp(-parser.slice_nodes(hu[0], need, patches.pixel_step((1, 1, 3), 15.0, 32))))
    t = 37 / 7.5 - 4  # voxel (y, x) = (30, 37): node row 4 exactly, between node columns 4 and 5
    assert prob[0, 30, 37] == pytest.approx((1 - t) * nodes[4, 4] + t * nodes[4, 5], abs=1e-6)


def test_candidates_are_local_maxima_with_scores_in_lps():
    geometry = Geometry(size=(30, 30, 10), spacing=(1.0, 1.0, 2.0), origin=(10.0, -5.0, 3.0), direction=OBLIQUE)
    prob = np.zeros(geometry.shape, np.float32)
    prob[4, 10, 12] = 0.9
    prob[4, 10, 13] = 0.8  # same peak's shoulder: not a candidate
    prob[6, 25, 25] = 0.6
    prob[2, 2, 2] = 0.2  # below the threshold
    found = parsing.find_candidates(prob, geometry, 0.5, 5.0, 10)
    assert [round(p.score, 3) for p in found] == [0.9, 0.6]
    np.testing.assert_allclose(found[0].position, geometry.index_to_lps([12, 10, 4]))


# --- metrics ----------------------------------------------------------------------------------------------

def test_patch_metrics_match_hand_counts():
    labels = np.array([1, 1, 1, 0, 0, 0, 0])
    scores = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.3, 0.05])
    m = evaluation.patch_metrics(labels, scores, 0.5)
    assert m["confusion_matrix"] == {"tp": 2, "fp": 1, "tn": 3, "fn": 1}
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert m["f"] == pytest.approx(2 / 3)
    # AUC: positive-negative pairs ranked correctly
    pairs = [(p > n) + 0.5 * (p == n) for p in scores[labels == 1] for n in scores[labels == 0]]
    assert m["auc"] == pytest.approx(np.mean(pairs))
    assert fmax_threshold(labels, scores) == pytest.approx(0.2)  # F = 0.75 there (P 3/5, R 1)


def test_candidates_hit_boxes_and_points():
    box = LesionBox(center=(0, 0, 0), size=(10, 4, 4), axes=np.eye(3)[:, [1, 0, 2]].ravel())  # long along y
    assert point_hits([LesionPoint((0, 4.5, 0))], [box], 0)[0, 0]
    assert not point_hits([LesionPoint((4.5, 0, 0))], [box], 0)[0, 0]
    lesion = LesionPoint((10, 10, 10))
    cands = [LesionPoint((10, 13, 10), 0.4), LesionPoint((10, 11, 10), 0.7), LesionPoint((50, 0, 0), 0.9)]
    fps, best = match_detections([c.score for c in cands], point_hits(cands, [lesion, LesionPoint((-50, 0, 0))], 5))
    assert fps == [0.9] and best == [0.7, None]


def test_runs_over_seeds_give_mean_and_sd_in_table2_layout():
    def run(exp, seed, f):
        return {"experiment": exp, "seed": seed, "precision": f, "recall": f, "f": f, "auc": f,
                "confusion_matrix": {"tp": 1, "fp": 2, "tn": 3, "fn": 4}}

    combined = evaluation.combine_runs([run("TL", 0, 0.8), run("TL", 1, 0.9), run("3C-TL", 0, 0.95)])
    assert combined["rows"]["TL"]["f"] == pytest.approx(0.85)
    assert combined["rows"]["TL"]["f_sd"] == pytest.approx(np.std([0.8, 0.9], ddof=1))
    assert combined["rows"]["TL"]["confusion_matrix"]["fn"] == 8
    text = evaluation.table2(combined)
    assert "Precision" in text and "F-Score" in text and "0.85 ± 0.071" in text and "3C-TL" in text


# --- configs, training and the CLI ------------------------------------------------------------------------

def test_four_paper_configs():
    method = get_method("bone-ct-patch")
    expected = {"tl": ("TL", "grey", True, 30), "ri": ("RI", "grey", False, 40),
                "3c-tl": ("3C-TL", "3c", True, 30), "3c-ri": ("3C-RI", "3c", False, 40)}
    for name, (exp, encoding, pretrained, epochs) in expected.items():
        cfg = merge_config(method.defaults, read_config(CONFIGS / f"{name}.json"))
        assert (cfg["experiment"], cfg["encoding"], cfg["pretrained"], cfg["epochs"]) == \
               (exp, encoding, pretrained, epochs)
        assert cfg["optimizer"] == "sgd" and cfg["patch_mm"] == 15.0 and cfg["patch_pixels"] == 64
        assert cfg["split"] == {"train": 0.72, "val": 0.10, "test": 0.18}
        assert "description" in json.loads((CONFIGS / f"{name}.json").read_text())


def make_dataset(root: Path, n_cases: int = 3, with_roi: bool = True, seed: int = 0) -> Path:
    """Tiny CTs: a marrow-filled bone block with dark lytic spheres at the annotated points."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "points").mkdir()
    (root / "roi").mkdir()
    cases = []
    for n in range(n_cases):
        shape = (8, 56, 56)
        spacing = (1.0, 1.0, 3.0)
        hu = rng.normal(40, 15, shape).astype(np.float32)
        hu[:, 8:48, 8:48] = 800  # cortex
        hu[:, 10:46, 10:46] = 250 + rng.normal(0, 30, (8, 36, 36))  # marrow
        zz, yy, xx = np.mgrid[0:8, 0:56, 0:56]
        centres = [(3, 18 + 4 * n, 20), (5, 36, 34 - 3 * n)]
        for c in centres:
            hu[((zz - c[0]) * 3) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2 < 16] = 30
        image = sitk.GetImageFromArray(hu)
        image.SetSpacing(spacing)
        image.SetOrigin((-20.0 + n, 15.0, -100.0))
        geometry = Geometry.of(image)
        sitk.WriteImage(image, str(root / "images" / f"c{n}.nrrd"))
        markups.write_points(root / "points" / f"c{n}.mrk.json",
                             [LesionPoint(geometry.index_to_lps(np.array(c[::-1], float))) for c in centres])
        entry = {"id": f"c{n}", "patient": f"p{n}", "image": f"images/c{n}.nrrd", "points": f"points/c{n}.mrk.json"}
        if with_roi:
            bone = np.zeros(shape, np.uint8)
            bone[:, 8:48, 8:48] = 1
            sitk.WriteImage(geometry.image(bone), str(root / "roi" / f"c{n}.nrrd"))
            entry["roi"] = f"roi/c{n}.nrrd"
        cases.append(entry)
    write_dataset_json(root, "tiny-bone", "CT", cases)
    return root


def test_training_data_is_split_by_patient(tmp_path):
    method = get_method("bone-ct-patch")
    ds_path = make_dataset(tmp_path / "ds", n_cases=3)
    from LesionDetectLib.dataset import load_dataset

    cfg = config()
    train, val = method.training_data(load_dataset(ds_path), cfg, seed=0)
    assert train.patches.shape[1:] == (1, 32, 32)
    assert int(train.labels.sum()) == 2 * 2  # two lesions x augment 2, one patient
    assert len(set(train.case_ids)) == 1 and val is not None and not set(train.case_ids) & set(val.case_ids)
    again, _ = method.training_data(load_dataset(ds_path), cfg, seed=0)
    assert torch.equal(again.patches, train.patches)  # deterministic by seed
    older = {k: v for k, v in cfg.items() if k != "positive_shift_mm"}  # a card from before the key
    assert torch.equal(method.training_data(load_dataset(ds_path), older, seed=0)[0].patches, train.patches)


def test_train_infer_evaluate_end_to_end(tmp_path, run_cli):
    ds = make_dataset(tmp_path / "ds", n_cases=3)
    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"description": "test", **TINY, "experiment": "3C-RI"}))
    model = tmp_path / "model"
    code, out, err = run_cli("train", "--method", "bone-ct-patch", "--config", str(CONFIGS / "3c-ri.json"),
                             "--set", f"width={TINY['width']}", "--set", "patch_pixels=32", "--set",
                             "fc_hidden=[16,16]", "--set", "augment=2", "--set", "parse_tile=4",
                             "--epochs", "1", "--data", str(ds), "--out", str(model))
    assert code == 0, err
    card = json.loads((model / "model.json").read_text())
    assert card["method"] == "bone-ct-patch" and card["config"]["experiment"] == "3C-RI"
    assert 0.0 <= card["thresholds"]["patch"] <= 1.0

    # inference on an oblique, anisotropic CT without a bone mask: geometry kept exactly
    hu = np.full((6, 40, 44), 40.0, np.float32)
    hu[:, 8:32, 10:36] = 700
    hu[:, 10:30, 12:34] = 250
    hu[2:4, 16:22, 18:24] = 30
    image = sitk.GetImageFromArray(hu)
    image.SetSpacing((0.9, 1.1, 2.5))
    image.SetOrigin((12.5, -30.25, 7.0))
    image.SetDirection(OBLIQUE)
    sitk.WriteImage(image, str(tmp_path / "ct.nrrd"))
    code, out, err = run_cli("infer", "--model", str(model), "--input", str(tmp_path / "ct.nrrd"),
                             "--out", str(tmp_path / "pred"), "--threshold", "0.0001")
    assert code == 0, err
    pred = read_prediction(tmp_path / "pred")
    assert pred.geometry.same_grid(Geometry.of(sitk.ReadImage(str(tmp_path / "ct.nrrd"))), tol=1e-12)
    assert pred.probability.shape == hu.shape and pred.probability[:, 0, 0].max() == 0  # bone only
    assert (pred.probability[:, 20, 20] > 0).all()
    np.testing.assert_array_equal(pred.mask, pred.probability >= 0.0001)
    assert pred.points and all(Geometry.of(image).contains(p.position) for p in pred.points)
    # parse settings changed for one run, and recorded; an unknown option is refused by name
    code, out, err = run_cli("infer", "--model", str(model), "--input", str(tmp_path / "ct.nrrd"),
                             "--out", str(tmp_path / "pred1"), "--set", "parse_tile=1")
    assert code == 0, err
    assert read_prediction(tmp_path / "pred1").provenance.parameters["parse_tile"] == 1
    code, out, err = run_cli("infer", "--model", str(model), "--input", str(tmp_path / "ct.nrrd"),
                             "--out", str(tmp_path / "pred2"), "--set", "tile=1")
    assert code == 2 and "unknown bone-ct-patch inference option(s) tile" in err
    assert not (tmp_path / "pred2").exists()

    # evaluation on every case: patch metrics, Table 2, FROC with its plot
    code, out, err = run_cli("evaluate", "--model", str(model), "--data", str(ds), "--split", "all",
                             "--json", str(tmp_path / "m.json"), "--plot", str(tmp_path / "froc.png"))
    assert code == 0, err
    metrics = json.loads((tmp_path / "m.json").read_text())
    for key in ("precision", "recall", "f", "auc"):
        assert 0.0 <= metrics[key] <= 1.0
    assert set(metrics["froc"]) == {"0.5", "1", "2", "4", "8"} and 0 <= metrics["froc_mean"] <= 1
    assert metrics["lesions"] == 6 and metrics["volumes"] == 3
    assert metrics["patches"]["lesion"] == 12
    assert "Precision" in out and "3C-RI" in out
    assert (tmp_path / "froc.png").stat().st_size > 1000


def test_bone_ct_parse_benchmark_reports_its_keys():
    from LesionDetectLib.bench.bone_ct_parse import bone_ct_parse, pelvis_slice

    hu, bone = pelvis_slice(size=128, spacing=3.2)
    assert bone.mean() == pytest.approx(0.08, abs=0.003)
    r = bone_ct_parse(slices=1, size=128, spacing=3.2, patch_sample=8, config={"width": 0.0625})
    for key in ("dense_s_per_slice", "per_patch_s_per_slice", "ratio", "max_abs_dp", "peak_rss_mb",
                "flop_efficiency"):
        assert r[key] >= 0
    # dense map vs per-patch at sampled voxels: padding and interpolation differences only (a
    # random tiny network on a coarse 3.2 mm slice; the real tolerance is the benchmark's output)
    assert r["mean_abs_dp"] <= r["max_abs_dp"] < 0.1


@pytest.mark.slow
def test_bench_command_runs_the_paper_network(run_cli):
    """`lesiondetect bench bone-ct-parse --json`: the paper's VGG-16 on 512 x 512 slices (minutes)."""
    code, out, err = run_cli("bench", "bone-ct-parse", "--json")
    assert code == 0, err
    result = json.loads(out[out.index("{"):])
    assert result["ratio"] > 1 and result["bone_fraction"] == pytest.approx(0.08, abs=0.005)


def test_hard_negatives_are_the_strongest_candidates_clear_of_every_lesion(tmp_path):
    from LesionDetectLib.dataset import load_dataset

    method = get_method("bone-ct-patch")
    ds = load_dataset(make_dataset(tmp_path / "ds", n_cases=3))
    cfg = config(hard_negatives_per_volume=4, froc_min_score=0.0, candidate_radius_mm=3.0)
    torch.manual_seed(0)
    model = method.build_model(cfg).eval()
    case = method.split_cases(ds, cfg)["train"][0]
    hu, bone, geometry, lesions = method.load_case(case, cfg)
    centres, scores = method.hard_negative_centres(model, cfg, hu, bone, geometry, lesions, torch.device("cpu"))
    assert 0 < len(centres) <= 4 and np.all(np.diff(scores) <= 0)
    prob = method.parse(model, cfg, hu, bone, geometry, torch.device("cpu"))
    sx, sy, sz = geometry.spacing
    reach = 15.0 * np.sqrt(2)
    for c, score in zip(centres, scores):
        assert prob[tuple(c)] == score > 0
        # a local maximum within 3 mm (1 slice, 3 pixels)
        window = prob[max(c[0] - 1, 0):c[0] + 2, max(c[1] - 3, 0):c[1] + 4, max(c[2] - 3, 0):c[2] + 4]
        assert score == window.max()
        for les in lesions:  # its square cannot touch a positive square near the lesion's slices
            assert (abs(c[0] - les[0]) * sz >= 7.5 or abs(c[1] - les[1]) * sy >= reach
                    or abs(c[2] - les[2]) * sx >= reach)
    # nothing stronger was left out: every stronger local maximum is near a lesion
    peaks, peak_scores = parsing.local_maxima(prob, geometry.spacing, 0.0, 3.0, 10_000)
    stronger = peaks[peak_scores > scores[-1]]
    mined = {tuple(c) for c in centres}
    for p in stronger:
        assert tuple(p) in mined or any(abs(p[0] - les[0]) * sz < 7.5 and abs(p[1] - les[1]) * sy < reach
                                        and abs(p[2] - les[2]) * sx < reach for les in lesions)


def test_with_a_lesion_mask_hard_negatives_keep_the_mask_samplings_margin(tmp_path):
    """Lesion-mask sampling: a mined negative lies at least hard_negative_margin_mm from every lesion
    voxel (checked against the brute-force distance), and every stronger local maximum that
    was left out lies within that margin."""
    from LesionDetectLib.dataset import load_dataset

    method = get_method("bone-ct-patch")
    ds = load_dataset(make_dataset(tmp_path / "ds", n_cases=3))
    cfg = config(hard_negatives_per_volume=50, froc_min_score=0.0, candidate_radius_mm=2.0,
                 positive_sampling="mask", hard_negative_margin_mm=8.0)
    torch.manual_seed(0)
    model = method.build_model(cfg).eval()
    case = method.split_cases(ds, cfg)["train"][0]
    hu, bone, geometry, lesions = method.load_case(case, cfg)
    lesion_mask = ((hu < 100) & (bone > 0)).astype(np.uint8)  # the dark spheres inside the bone block
    lesion_mask[:, :10] = lesion_mask[:, 46:] = lesion_mask[:, :, :10] = lesion_mask[:, :, 46:] = 0
    assert lesion_mask.sum() > 20
    centres, scores = method.hard_negative_centres(model, cfg, hu, bone, geometry, lesions, torch.device("cpu"),
                                                   lesion_mask)
    mm = np.array(geometry.spacing)[::-1]  # zyx

    def distance(c):
        return np.sqrt((((np.argwhere(lesion_mask) - c) * mm) ** 2).sum(axis=1)).min()

    assert len(centres) > 0 and all(distance(c) >= 8.0 for c in centres)
    peaks, peak_scores = parsing.local_maxima(method.parse(model, cfg, hu, bone, geometry, torch.device("cpu")),
                                              geometry.spacing, 0.0, 2.0, 200)
    mined = {tuple(c) for c in centres}
    left_out = [p for p, s in zip(peaks, peak_scores) if s > scores[-1] and tuple(p) not in mined]
    assert all(distance(p) < 8.0 for p in left_out)
    assert any(distance(p) < 8.0 for p in peaks)  # the rule did leave some out


def test_mined_negatives_are_augmented_like_rejected_ones(tmp_path):
    """hard_negative_augment = 3: three patches per mined location, the first one as found,
    the others rotated or mirrored copies of it."""
    from LesionDetectLib.dataset import load_dataset

    method = get_method("bone-ct-patch")
    ds = load_dataset(make_dataset(tmp_path / "ds", n_cases=3))
    cfg = config(hard_negatives_per_volume=5, froc_min_score=0.0, candidate_radius_mm=3.0, context_pixels=0)
    torch.manual_seed(0)
    model = method.build_model(cfg).eval()
    plain = method.hard_examples(model, ds, cfg, 0, torch.device("cpu"))
    tripled = method.hard_examples(model, ds, {**cfg, "hard_negative_augment": 3}, 0, torch.device("cpu"))
    assert len(tripled) == 3 * len(plain) > 0 and not tripled.labels.any()
    torch.testing.assert_close(tripled.patches[::3], plain.patches)
    copies = tripled.patches.view(len(plain), 3, *plain.patches.shape[1:])
    assert not torch.equal(copies[:, 1], copies[:, 0]) and not torch.equal(copies[:, 2], copies[:, 0])
    # a copy is the same square turned: the same HU values up to interpolation at the edges
    torch.testing.assert_close(copies[:, 1].mean(dim=(1, 2, 3)), copies[:, 0].mean(dim=(1, 2, 3)), atol=60, rtol=0)


def test_training_with_hard_negatives_mines_after_the_paper_epochs(tmp_path, run_cli):
    ds = make_dataset(tmp_path / "ds", n_cases=3)
    model = tmp_path / "model"
    code, out, err = run_cli("train", "--method", "bone-ct-patch", "--config", str(CONFIGS / "3c-ri-context-hard-negatives.json"),
                             "--set", f"width={TINY['width']}", "--set", "patch_pixels=32", "--set",
                             "fc_hidden=[16,16]", "--set", "augment=2", "--set", "context_pixels=0",
                             "--set", "froc_min_score=0", "--set", "hard_example_epochs=1",
                             "--epochs", "1", "--data", str(ds), "--out", str(model))
    assert code == 0, err
    card = json.loads((model / "model.json").read_text())
    history = card["training"]["history"]
    assert [h["epoch"] for h in history if "train_loss" in h] == [1, 2]
    mined = [h["hard_examples"] for h in history if "hard_examples" in h]
    assert len(mined) == 1 and 0 < mined[0] <= card["config"]["hard_negatives_per_volume"]
    assert card["training"]["train_samples"] == 4 + 4 + mined[0]  # positives, random and hard negatives


def test_hard_epochs_keep_the_lr_schedule_and_a_resumed_run_records_one_mining(tmp_path, monkeypatch):
    """The mined examples add batches: the cosine schedule is stretched over them (the lr
    keeps falling and reaches no zero before the last batch).  A run stopped after mining
    and resumed mines again (the examples are not in the checkpoint) but records it once."""
    from LesionDetectLib import training

    ds = make_dataset(tmp_path / "ds", n_cases=3)
    overrides = {**TINY, "patch_pixels": 32, "context_pixels": 0, "froc_min_score": 0.0, "batch_size": 8,
                 "hard_negatives_per_volume": 30, "hard_example_epochs": 2, "epochs": 1, "lr_schedule": "cosine"}
    real_report = training.report

    def stop_in_epoch_3(fraction, message):
        if message.startswith("epoch 3/"):
            raise KeyboardInterrupt
        real_report(fraction, message)

    monkeypatch.setattr(training, "report", stop_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        training.train("bone-ct-patch", ds, tmp_path / "m", overrides=overrides, device="cpu")
    monkeypatch.setattr(training, "report", real_report)
    training.train("bone-ct-patch", ds, tmp_path / "m", overrides=overrides, device="cpu", resume=True)
    history = json.loads((tmp_path / "m" / "model.json").read_text())["training"]["history"]
    assert [h["epoch"] for h in history if "train_loss" in h] == [1, 2, 3]
    assert len([h for h in history if "hard_examples" in h]) == 1
    lrs = [h["lr"] for h in history if "lr" in h]
    assert lrs[0] > lrs[1] > lrs[2] > 0


# --- lesion-mask sampling, components, the shipped model --------------------------------------------

def test_mask_sampling_puts_positives_inside_lesions_and_negatives_clear_of_them():
    bone = np.zeros((6, 40, 40), np.uint8)
    bone[:, 5:35, 5:35] = 1
    lesion = np.zeros_like(bone)
    lesion[2:4, 10:14, 10:14] = 1
    lesion[2:4, 25:28, 25:28] = 1
    rng = np.random.default_rng(0)
    centres, labels, angles, mirror = patches.mask_training_positions(
        bone, lesion, (1.0, 1.0, 2.0), rng, per_lesion=5, negatives_per_positive=2.0, margin_mm=3.0,
        near_fraction=0.5, near_mm=5.0)
    pos, neg = centres[labels == 1].astype(int), centres[labels == 0].astype(int)
    assert len(pos) == 10 and len(neg) == 20 and len(angles) == len(mirror) == 30
    assert lesion[tuple(pos.T)].all()
    dist = np.array([np.min(np.linalg.norm((np.argwhere(lesion) - n) * [2.0, 1.0, 1.0], axis=1)) for n in neg])
    assert (dist >= 3.0).all() and (dist < 8.0).sum() >= 10  # half from the shell beside the lesions
    assert bone[tuple(neg.T)].all()


def test_components_drop_small_regions_and_score_by_max_or_mean():
    prob = np.zeros((4, 30, 30), np.float32)
    prob[1:3, 5:10, 5:10] = 0.6
    prob[1, 7, 7] = 0.9  # a big region with a peak
    prob[2, 20:22, 20:22] = 0.95  # a small one: 4 voxels = 4 mm^3 at 1 mm
    geometry = Geometry(size=(30, 30, 4), spacing=(1.0, 1.0, 1.0), origin=(5.0, -3.0, 2.0))
    mask, centres, scores = parsing.lesion_components(prob, geometry.spacing, 0.5, 0.0, "max")
    assert len(scores) == 2 and scores[0] == pytest.approx(0.95) and mask.sum() == 54
    mask, centres, scores = parsing.lesion_components(prob, geometry.spacing, 0.5, 10.0, "mean")
    assert len(scores) == 1 and scores[0] == pytest.approx((49 * 0.6 + 0.9) / 50) and mask.sum() == 50
    np.testing.assert_allclose(centres[0], [1.5, 7.0, 7.0], atol=0.05)
    points, mask = parsing.find_component_candidates(prob, geometry, 0.5, 10.0, "max", 10)
    assert len(points) == 1 and points[0].score == pytest.approx(0.9)
    np.testing.assert_allclose(points[0].position, geometry.index_to_lps(np.array([[7.0, 7.0, 1.5]]))[0], atol=0.1)
    with pytest.raises(LesionDetectError, match="component_score"):
        parsing.lesion_components(prob, geometry.spacing, 0.5, 0.0, "median")


def test_shipped_model_card_is_complete_small_and_verified():
    from LesionDetectLib.models import (card_fact_problems, card_problems, read_card, sha256_of, shipped_model_dir,
                                        trained_on_synthetic_only)

    folder = shipped_model_dir("bone-ct-patch")
    assert folder is not None, "Resources/models/bone-ct-patch must ship"
    _, card = read_card(folder)
    weights = folder / card.weights_file
    assert weights.stat().st_size <= 20 * 2 ** 20 and sha256_of(weights) == card.weights_sha256
    assert card.method == "bone-ct-patch" and card.modality == "CT"
    assert card_problems(card, get_method("bone-ct-patch").defaults) == []
    assert card_fact_problems(card) == [] and trained_on_synthetic_only(card)
    for key in ("data", "licence", "intended_use", "known_failure_modes"):
        assert isinstance(card.training[key], str) and card.training[key]
    assert "synthetic" in card.training["intended_use"] and "synthetic" in card.training["data"]
    assert card.config["candidates"] == "components" and card.config["component_score"] in ("max", "mean")
    assert card.config["min_lesion_mm3"] >= 0 and 0 < card.thresholds["lesion"] < 1
    for name in ("synthetic_heldout", "demo_study", "real_blds"):
        m = card.metrics[name]
        assert m["what"] and 0 <= m["f1"] <= 1 and m["found"] + m["missed"] == m["lesions"]


def test_shipped_model_runs_through_infer_without_model(tmp_path, run_cli):
    from LesionDetectLib.models import read_card, shipped_model_dir
    from LesionDetectLib.synth import generate

    if shipped_model_dir("bone-ct-patch") is None:
        pytest.skip("no bone-ct-patch model shipped")
    study = generate("bone-ct", tmp_path / "study", cases=1, seed=3, size="small")
    image = next((study / "images").iterdir())
    code, out, err = run_cli("infer", "--method", "bone-ct-patch", "--input", image, "--out", tmp_path / "pred")
    assert code == 0, err
    pred = read_prediction(tmp_path / "pred")
    card = read_card(shipped_model_dir("bone-ct-patch"))[1]
    assert pred.provenance.model_id == card.model_id
    assert pred.provenance.parameters["candidates"] == "components"
    assert pred.probability.shape == sitk.GetArrayFromImage(sitk.ReadImage(str(image))).shape
    assert all(p.score >= card.thresholds["lesion"] for p in pred.points)


def test_keep_best_keeps_the_epoch_with_the_lowest_validation_loss(tmp_path, monkeypatch):
    """training's `keep_best`: the saved weights are those of the epoch whose validation loss
    was lowest (here the 2nd of 3), and the card names it; without it, the last epoch's."""
    from safetensors.torch import load_file

    from LesionDetectLib import training

    ds = make_dataset(tmp_path / "ds", n_cases=3)
    overrides = {**TINY, "patch_pixels": 32, "context_pixels": 0, "batch_size": 8, "epochs": 3, "keep_best": True}
    losses, snapshots = iter([0.5, 0.2, 0.4, 0.5, 0.2, 0.4]), []

    def scripted(method, model, val_set, config, device):
        snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return next(losses)

    monkeypatch.setattr(training, "validation_loss", scripted)
    for keep, want in ((True, 1), (False, 5)):
        out = tmp_path / f"m_{keep}"
        training.train("bone-ct-patch", ds, out, overrides={**overrides, "keep_best": keep}, device="cpu")
        card = json.loads((out / "model.json").read_text())
        saved = load_file(out / card["weights_file"])
        for name, value in saved.items():
            torch.testing.assert_close(value, snapshots[want][name].to(value.dtype))
        assert not all(torch.equal(v, snapshots[want - 1][k].to(v.dtype)) for k, v in saved.items())
        assert card["training"].get("kept_epoch") == (2 if keep else None)
