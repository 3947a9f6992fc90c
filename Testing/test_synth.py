"""Synthetic studies: valid datasets, byte-identical by seed, ground truth consistent with the
image, difficulty knobs that do what they say, and the `synth` command."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from LesionDetectLib import markups, synth
from LesionDetectLib.dataset import load_dataset, read_mask, validate_dataset
from LesionDetectLib.errors import LesionDetectError
from LesionDetectLib.geometry import Geometry


def voxel_of(case, position):
    """(z, y, x) index of the voxel nearest an LPS position."""
    x, y, z = np.rint(case.geometry.lps_to_index(position)).astype(int)
    return (z, y, x) if case.mask.ndim == 3 else (y, x)


QUIET = {"ms-flair": {"random_contrast"}}  # parameters added later: not recorded at their default


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("kind", synth.KINDS)
def test_each_kind_writes_a_valid_dataset(kind, tmp_path):
    root = synth.generate(kind, tmp_path / kind, cases=2, seed=3, size="small")
    assert validate_dataset(root) == []
    ds = load_dataset(root)
    assert len(ds.cases) == 2
    assert ds.extra["generator"]["kind"] == kind and ds.extra["generator"]["seed"] == 3
    # every parameter is recorded, except a "quiet" one at its default (ms-flair random_contrast)
    assert set(synth.parameters(kind)) - set(ds.extra["generator"]["params"]) == QUIET.get(kind, set())
    for case in ds.cases:
        image = sitk.ReadImage(str(case.image))
        assert image.GetDimension() == (2 if kind == "bone-scan" else 3)
        if case.mask is not None:
            assert read_mask(case.mask).shape == sitk.GetArrayFromImage(image).shape


@pytest.mark.parametrize("kind", synth.KINDS)
def test_same_seed_gives_byte_identical_files(kind, tmp_path):
    params = {"contrast": "0.8"}
    a = synth.generate(kind, tmp_path / "a", cases=2, seed=7, size="small", params=params,
                       preview=kind == "liver-ct")
    time.sleep(1.1)  # a timestamp anywhere (gzip mtime, JSON, PNG) would now differ
    b = synth.generate(kind, tmp_path / "b", cases=2, seed=7, size="small", params=params,
                       preview=kind == "liver-ct")
    digest_a, digest_b = tree_digest(a), tree_digest(b)
    assert digest_a == digest_b and len(digest_a) >= 3
    if kind == "liver-ct":
        assert len([k for k in digest_a if k.startswith("preview/") and k.endswith(".png")]) == 2
    c = synth.generate(kind, tmp_path / "c", cases=2, seed=8, size="small", params=params)
    image = next(k for k in digest_a if k.startswith("images/"))
    assert tree_digest(c)[image.replace("_7_", "_8_")] != digest_a[image]


def test_parallel_generation_writes_the_same_files(tmp_path):
    serial = synth.generate("liver-ct", tmp_path / "serial", cases=3, seed=4, size="small", preview=True)
    parallel = synth.generate("liver-ct", tmp_path / "parallel", cases=3, seed=4, size="small", preview=True,
                              jobs=2)
    assert tree_digest(serial) == tree_digest(parallel)
    with pytest.raises(LesionDetectError, match="--jobs"):
        synth.generate("liver-ct", tmp_path / "none", cases=1, jobs=0)
    assert not (tmp_path / "none").exists()


def test_a_case_is_the_same_in_memory_and_in_a_dataset(tmp_path):
    root = synth.generate("bone-ct", tmp_path / "d", cases=2, seed=1, size="small")
    case = synth.make_case("bone-ct", seed=1, index=1, size="small")
    on_disk = load_dataset(root).cases[1]
    assert on_disk.id == case.id
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(on_disk.image))), case.array)
    np.testing.assert_array_equal(read_mask(on_disk.mask), case.mask > 0)
    points = markups.read_points(on_disk.points)
    np.testing.assert_allclose([p.position for p in points], [p.position for p in case.points], atol=1e-6)


# --- ground truth agrees with the image ---------------------------------------------------------
@pytest.mark.parametrize("index", range(3))
def test_bone_ct_points_sit_in_bone_and_in_their_lesion(index):
    case = synth.make_case("bone-ct", seed=0, index=index, size="small")
    hu = case.array.astype(float)
    assert case.points and len(case.points) == len(case.findings)
    assert not np.any((case.mask > 0) & (case.roi == 0)), "lesion outside the bone mask"
    for point, finding in zip(case.points, case.findings):
        zyx = voxel_of(case, point.position)
        assert zyx == finding["center_zyx"]
        assert case.roi[zyx] == 1
        assert case.mask[zyx] == (1 if finding["type"] == "osteolytic" else 2)
    # air, fat and soft tissue where they belong
    assert np.median(hu[case.roi == 0][hu[case.roi == 0] < -900]) < -950
    cortex_or_marrow = hu[case.roi == 1]
    assert np.percentile(cortex_or_marrow, 95) > 500


@pytest.mark.slow
def test_bone_ct_full_size_geometry_and_speed():
    start = time.perf_counter()
    case = synth.make_case("bone-ct", seed=0, index=0, size="full")
    elapsed = time.perf_counter() - start
    size = case.image.GetSize()
    spacing = case.image.GetSpacing()
    assert size == (512, 512, 100) and spacing[:2] == (0.8, 0.8) and 2.0 <= spacing[2] <= 5.0
    assert elapsed < 60, f"a full-size bone-ct case took {elapsed:.1f} s"  # 30 s on an idle machine
    hu = case.array
    lytic = case.mask == 1
    marrow = (case.roi == 1) & (case.mask == 0) & (hu < 500)
    assert lytic.any() and hu[lytic].mean() < hu[marrow].mean() - 50
    assert len(case.findings) >= 2


def test_liver_boxes_enclose_their_lesions_and_key_slices_match():
    for index in range(3):
        case = synth.make_case("liver-ct", seed=0, index=index, size="small")
        mask = case.mask > 0
        assert mask.any() and not np.any(mask & (case.roi == 0)), "lesion outside the liver"
        instances, n = ndimage.label(mask)
        assert len(case.boxes) == len(case.findings) == len(case.entry["key_slices"]) >= 1
        geometry = case.geometry
        for box, key in zip(case.boxes, case.entry["key_slices"]):
            assert box.extra["lesion"] == key["lesion"]
            corners = geometry.lps_to_index(box.corners())
            lo, hi = corners.min(axis=0), corners.max(axis=0)  # (x, y, z) voxel-edge coordinates
            centre = voxel_of(case, box.center)
            z, y, x = np.nonzero(instances == instances[centre]) if instances[centre] else (None, None, None)
            if z is not None:
                assert lo[0] <= x.min() - 0.5 + 1e-6 and x.max() + 0.5 <= hi[0] + 1e-6
                assert lo[1] <= y.min() - 0.5 + 1e-6 and y.max() + 0.5 <= hi[1] + 1e-6
                assert lo[2] <= z.min() - 0.5 + 1e-6 and z.max() + 0.5 <= hi[2] + 1e-6
            k, (x0, y0, x1, y1) = key["slice"], key["box"]
            rows, cols = np.nonzero(mask[k])
            assert rows.size and x1 > x0 and y1 > y0
            inside = (cols >= x0) & (cols < x1) & (rows >= y0) & (rows < y1)
            assert inside.any()
            # the key slice is the lesion's largest cross-section
            lesion_k = mask[k][y0:y1, x0:x1].sum()
            assert lesion_k > 0
        for point in case.points:
            assert mask[voxel_of(case, point.position)]
        # every lesion voxel is covered by some box
        covered = np.zeros_like(mask)
        for box in case.boxes:
            corners = geometry.lps_to_index(box.corners())
            lo = np.ceil(corners.min(axis=0) - 1e-6).astype(int)
            hi = np.floor(corners.max(axis=0) + 1e-6).astype(int)
            covered[lo[2]:hi[2] + 1, lo[1]:hi[1] + 1, lo[0]:hi[0] + 1] = True
        assert not np.any(mask & ~covered)


def test_liver_lesions_differ_from_liver_by_their_type():
    case = synth.make_case("liver-ct", seed=2, index=0, size="small",
                           params={"noise": 0, "lesions_mean": 4, "lesion_size": 2, "hyperdense_fraction": 0.5})
    hu = case.array.astype(float)
    liver = (case.roi == 1) & (case.mask == 0) & (hu < 120)
    for code, sign in ((1, -1), (2, 1)):
        lesion = case.mask == code
        if lesion.any():
            assert sign * (hu[lesion].mean() - np.median(hu[liver])) > 10


@pytest.mark.parametrize("stripped, size", [(False, "full"), (True, "small")])
def test_ms_flair_plaques_are_bright_and_inside_the_brain(stripped, size):
    case = synth.make_case("ms-flair", seed=4, index=0, size=size, params={"skull_stripped": stripped})
    image, brain, plaque = case.array, case.roi == 1, case.mask == 1
    assert plaque.any() and not np.any(plaque & ~brain)
    wm_level = np.percentile(image[brain & ~plaque], 60)
    core = ndimage.binary_erosion(plaque) if size == "full" else plaque
    assert image[core].mean() > 1.1 * wm_level
    dark_csf = np.percentile(image[brain], 3)
    assert dark_csf < 0.4 * wm_level, "ventricles and sulci must be dark on FLAIR"
    outside = image[~brain]
    if stripped:
        assert np.all(outside == 0)
    else:  # the scalp and orbits give bright non-lesion structures outside the brain
        assert np.percentile(outside, 99.5) > 1.2 * wm_level
    components = ndimage.label(plaque)[1]
    assert components >= 5


def test_ms_flair_full_grid_is_the_real_mni_grid(shared_data):
    from LesionDetectLib.synth import ms_flair

    real = sitk.ReadImage(str(shared_data / "ms_flair" / "open_ms_data_patient07" / "flair.nii.gz"))
    assert ms_flair.grid("full").same_grid(Geometry.of(real))
    small = synth.make_case("ms-flair", seed=0, index=0, size="small")
    assert Geometry.of(small.image).same_grid(ms_flair.grid("small"))


def test_ms_flair_random_contrast_changes_only_the_contrasts(tmp_path):
    plain = synth.make_case("ms-flair", seed=2, index=0, size="small")
    cases = [synth.make_case("ms-flair", seed=2, index=i, size="small", params={"random_contrast": 1})
             for i in range(6)]
    drawn = cases[0]
    # its own random stream: same anatomy, plaques, noise draws; only the tissue values differ
    np.testing.assert_array_equal(drawn.mask, plain.mask)
    np.testing.assert_array_equal(drawn.roi, plain.roi)
    assert [f["center_zyx"] for f in drawn.findings] == [f["center_zyx"] for f in plain.findings]
    assert not np.array_equal(drawn.array, plain.array)
    assert "tissue_contrast" not in plain.entry
    values = [c.entry["tissue_contrast"] for c in cases]
    for v in values:
        assert 0.55 <= v["plaque_factor"] <= 1.6 and 1.1 <= v["gm"] <= 1.45 and 0.05 <= v["csf"] <= 0.3
        assert v["rim"] == 0 or 1.15 <= v["rim"] <= 1.5
    assert len({v["plaque_factor"] for v in values}) == 6 and any(v["rim"] for v in values)
    # brighter plaques where the factor is larger (relative to the case's own white matter)
    ratio = [np.median(c.array[c.mask == 1]) / np.percentile(c.array[(c.roi == 1) & (c.mask == 0)], 60) for c in cases]
    order = np.argsort([v["plaque_factor"] for v in values])
    assert ratio[order[-1]] > ratio[order[0]] + 0.1
    # off by default, and then not in dataset.json (studies made before it stay byte-identical)
    doc = json.loads((synth.generate("ms-flair", tmp_path / "a", cases=1, seed=2) / "dataset.json").read_text())
    assert "random_contrast" not in doc["generator"]["params"] and "tissue_contrast" not in doc["cases"][0]
    doc = json.loads((synth.generate("ms-flair", tmp_path / "b", cases=1, seed=2, params={"random_contrast": 1})
                      / "dataset.json").read_text())
    assert doc["generator"]["params"]["random_contrast"] is True and "tissue_contrast" in doc["cases"][0]


def test_bone_scan_labels_match_the_drawn_hot_spots():
    cases = [synth.make_case("bone-scan", seed=5, index=i, size="full") for i in range(8)]
    assert {c.entry["view"] for c in cases} == {"anterior", "posterior"}
    assert cases[0].array.shape == (646, 220) and cases[0].array.dtype == np.uint16
    for ant, post in zip(cases[::2], cases[1::2]):
        assert ant.patient == post.patient and ant.entry["label"] == post.entry["label"]
        np.testing.assert_array_equal(ant.mask, post.mask[:, ::-1])  # posterior = mirrored anterior
    labels = [c.entry["label"] for c in cases]
    assert 0 < sum(labels) < len(labels)
    for c in cases:
        assert c.entry["label"] == int(c.mask.any()) == int(bool(c.points))
        for p in c.points:
            assert c.mask[voxel_of(c, p.position)]
        if c.entry["label"]:  # hot spots are hotter than the same patient's bone elsewhere
            assert np.mean(c.array[c.mask == 1]) > np.percentile(c.array[c.roi == 1], 90)


def test_bone_scan_crops_look_like_bs80k():
    cases = [synth.make_case("bone-scan", seed=0, index=i, size="full", params={"view": "crop"}) for i in range(6)]
    for c in cases:
        assert c.array.dtype == np.uint8
        rows, cols = c.array.shape
        assert 140 <= rows <= 200 and 50 <= cols <= 100  # BS-80K crops are about 165 x 65
        assert c.entry["label"] == int(c.mask.any())
        assert c.array[0, 0] == 0  # the cut-off corner
    assert len({c.patient for c in cases}) == 6


def test_spine_slice_labels_follow_the_drawn_lesions():
    seen = set()
    for index in range(6):
        case = synth.make_case("spine-ct", seed=0, index=index, size="small")
        spacing = case.image.GetSpacing()
        min_voxels = max(1, int(np.ceil(6.0 / (spacing[0] * spacing[1]))))
        slices = case.entry["slices"]
        assert slices and len({s["vertebra"] for s in slices}) >= 2
        assert all(0 <= s["index"] < case.array.shape[0] for s in slices)
        for s in slices:
            lytic = int((case.mask[s["index"]] == 1).sum())
            blastic = int((case.mask[s["index"]] == 2).sum())
            q = s["bone_quality"]
            assert (q in ("lytic", "mixed")) == (lytic >= min_voxels)
            assert (q in ("blastic", "mixed")) == (blastic >= min_voxels)
            if s["posterolateral"] != "normal":
                assert lytic + blastic >= min_voxels
            seen.add(q)
            seen.add(s["posterolateral"])
        for vert in case.entry["vertebrae"]:
            labels = {s["bone_quality"] for s in slices if s["vertebra"] == vert["name"]}
            if vert["bone_quality"] == "normal":
                assert labels == {"normal"}
        assert not np.any((case.mask > 0) & (case.roi == 0))
        for p in case.points:
            assert case.mask[voxel_of(case, p.position)] > 0
    assert {"normal", "lytic", "blastic"} <= seen


# --- difficulty knobs ---------------------------------------------------------------------------
def test_contrast_knob_scales_lesion_contrast():
    def contrast(c):
        case = synth.make_case("liver-ct", seed=1, index=0, size="small", params={"contrast": c, "noise": 0,
                                                                                   "hyperdense_fraction": 0})
        hu = case.array.astype(float)
        lesion = case.mask == 1
        liver = (case.roi == 1) & ~ndimage.binary_dilation(lesion, iterations=2)
        return np.median(hu[liver]) - hu[lesion].mean()

    assert 0 < contrast(0.3) < contrast(1.0) < contrast(2.0)


def test_count_and_noise_knobs():
    none = synth.make_case("bone-ct", seed=0, index=0, size="small", params={"lesion_count": 0})
    assert not none.mask.any() and not none.points
    quiet = synth.make_case("bone-ct", seed=0, index=0, size="small", params={"noise": 0})
    loud = synth.make_case("bone-ct", seed=0, index=0, size="small", params={"noise": 3})
    air = lambda c: c.array[(c.array < -700) & (c.roi == 0)]  # noqa: E731
    assert air(quiet).std() < air(loud).std()


def test_unknown_kind_size_or_parameter_is_a_clear_error(tmp_path):
    with pytest.raises(LesionDetectError, match="unknown synthetic kind"):
        synth.make_case("pet-ct")
    with pytest.raises(LesionDetectError, match="unknown size"):
        synth.make_case("bone-ct", size="huge")
    with pytest.raises(LesionDetectError, match="unknown synth parameter 'contrats'"):
        synth.make_case("bone-ct", params={"contrats": 1})
    with pytest.raises(LesionDetectError, match="expected a float"):
        synth.make_case("bone-ct", params={"contrast": "high"})


# --- the command --------------------------------------------------------------------------------
def test_cli_writes_validates_and_never_overwrites(run_cli, tmp_path):
    out = tmp_path / "study"
    code, stdout, stderr = run_cli("synth", "liver-ct", "--out", out, "--cases", "2", "--seed", "4",
                                   "--param", "contrast=1.5", "--param", "lesions_mean=2")
    assert code == 0, stderr
    doc = json.loads((out / "dataset.json").read_text())
    assert doc["generator"]["params"]["contrast"] == 1.5 and doc["generator"]["params"]["lesions_mean"] == 2.0
    code, stdout, _ = run_cli("validate", out)
    assert code == 0 and "valid (2 cases" in stdout
    before = tree_digest(out)
    code, _, stderr = run_cli("synth", "liver-ct", "--out", out)
    assert code == 2 and "refusing to overwrite" in stderr and stderr.count("\n") == 1
    assert tree_digest(out) == before
    code, _, stderr = run_cli("synth", "bone-ct", "--out", tmp_path / "x", "--param", "noise")
    assert code == 2 and "KEY=VALUE" in stderr
    code, stdout, _ = run_cli("synth", "ms-flair", "--list-params")
    assert code == 0 and "skull_stripped" in stdout and "contrast" in stdout
