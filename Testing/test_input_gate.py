"""The input gate (LesionDetectLib/gate.py, Method.check_input) and the checks that run before
any work: headers before voxels, values, modality per method with --force recorded, DICOM
series, output folders, JSON size and depth, model cards, datasets in train/evaluate."""

from __future__ import annotations

import json
import struct
import time

import numpy as np
import pytest
import SimpleITK as sitk

from fuzz_corpus import ct_array, flair_array, write
from io_helpers import write_dicom_series
from LesionDetectLib import files
from LesionDetectLib.errors import LesionDetectError
from LesionDetectLib.files import check_out_dir, read_json
from LesionDetectLib.io import read_image
from LesionDetectLib.methods import get_method
from LesionDetectLib.models import ModelCard, card_problems, shipped_model_dir
from LesionDetectLib.training import config_defaults

needs_model = pytest.mark.skipif(shipped_model_dir("ms-flair-fcn") is None, reason="no shipped ms-flair-fcn model")


def _nifti(tmp_path, offset, fmt, value, name="h.nii"):
    path = write(flair_array(), tmp_path / name)
    data = bytearray(path.read_bytes())
    data[offset:offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("value", [0.0, float("nan"), float("inf"), 1e-9])
def test_nifti_pixdim_itk_would_turn_into_1mm_is_refused(tmp_path, value):
    path = _nifti(tmp_path, 80, "<f", value)  # pixdim[1]
    with pytest.raises(LesionDetectError, match=r"h\.nii: has voxel sizes \(pixdim\)"):
        read_image(path)


def test_nifti_nan_voxels_itk_would_read_as_zero_are_counted(tmp_path):
    arr = flair_array()
    arr[2, 3, 4] = arr[5, 6, 7] = np.nan
    path = write(arr, tmp_path / "n.nii.gz", compress=True)
    with pytest.raises(LesionDetectError, match=r"n\.nii\.gz: has 2 NaN or infinite voxel value\(s\) of 4608"):
        read_image(path)


def test_a_huge_declared_size_is_refused_from_the_header_at_once(tmp_path):
    path = write(flair_array(), tmp_path / "big.nrrd", compress=True)
    raw = path.read_bytes()
    path.write_bytes(raw.replace(b"sizes: 24 24 8", b"sizes: 4000 4000 400"))
    start = time.perf_counter()
    with pytest.raises(LesionDetectError, match=r"declares 4000 x 4000 x 400 voxels .* more than the 8 GiB limit"):
        read_image(path)
    assert time.perf_counter() - start < 2.0


def test_the_limit_is_configurable_and_a_raw_file_must_hold_its_bytes(tmp_path, monkeypatch):
    path = write(flair_array(), tmp_path / "v.nrrd")  # 18 KiB of voxels
    monkeypatch.setenv("LESIONDETECT_MAX_IMAGE_GB", str(10_000 / 2**30))
    with pytest.raises(LesionDetectError, match="more than the 0 GiB limit"):
        read_image(path)
    monkeypatch.delenv("LESIONDETECT_MAX_IMAGE_GB")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(LesionDetectError, match="is truncated: its header promises 18432 bytes"):
        read_image(path)


def test_valid_odd_geometry_still_reads_exactly(tmp_path):
    img = sitk.GetImageFromArray(flair_array())
    img.SetSpacing((0.3, 2.0, 5.0))
    img.SetOrigin((-1e5, 3e4, 12.5))
    img.SetDirection((-1, 0, 0, 0, 0, 1, 0, 1, 0))  # left-handed
    for suffix in (".nrrd", ".nii.gz", ".mha"):
        path = tmp_path / f"odd{suffix}"
        sitk.WriteImage(img, str(path))
        back = read_image(path)
        assert np.allclose(back.GetSpacing(), img.GetSpacing()) and np.allclose(back.GetOrigin(), img.GetOrigin())
        assert np.allclose(back.GetDirection(), img.GetDirection(), atol=1e-6)


# --- the method's check ----------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["bone-ct-patch", "liver-frcnn"])
def test_a_flair_given_to_a_ct_method_is_refused_unless_forced(method):
    image = sitk.GetImageFromArray(flair_array())
    m = get_method(method)
    with pytest.raises(LesionDetectError, match=rf"flair\.nii: has no negative values and its background at .* A CT in HU is needed by "
                                                rf"method '{method}'.*pass --force"):
        m.check_input(image, "flair.nii")
    forced = m.check_input(image, "flair.nii", force=True)
    assert len(forced) == 1 and "not a CT in Hounsfield units" in forced[0]
    assert m.check_input(sitk.GetImageFromArray(ct_array()), "ct.nii") == []


def test_a_ct_given_to_the_flair_method_is_refused_and_shape_is_never_forced():
    m = get_method("ms-flair-fcn")
    with pytest.raises(LesionDetectError, match="looks like a CT in Hounsfield units"):
        m.check_input(sitk.GetImageFromArray(ct_array()), "ct.nii")
    assert m.check_input(sitk.GetImageFromArray(flair_array()), "f.nii") == []
    for bad in (sitk.GetImageFromArray(flair_array()[3]), sitk.GetImageFromArray(flair_array().astype(np.complex64)),
                sitk.GetImageFromArray(np.full((4, 5, 6), np.nan, np.float32))):
        with pytest.raises(LesionDetectError, match=r"^x\.nii: "):
            m.check_input(bad, "x.nii", force=True)


def test_a_dicom_modality_tag_that_contradicts_the_method_is_refused():
    image = sitk.GetImageFromArray(flair_array())
    image.SetMetaData("0008|0060", "CT")
    with pytest.raises(LesionDetectError, match="is tagged as a CT image .* a MR image is needed"):
        get_method("ms-flair-fcn").check_input(image, "s")


@needs_model
def test_infer_force_runs_and_records_what_it_overrode(tmp_path, run_cli):
    ct = write(ct_array(), tmp_path / "ct.nrrd")
    code, out, err = run_cli("infer", "--method", "ms-flair-fcn", "--input", ct, "--out", tmp_path / "o",
                             "--device", "cpu")
    assert code == 2 and err.startswith(f"lesiondetect: error: {ct}: has values -1000 .. 700") and err.count("\n") == 1
    assert not (tmp_path / "o").exists()
    code, out, err = run_cli("infer", "--method", "ms-flair-fcn", "--input", ct, "--out", tmp_path / "o",
                             "--device", "cpu", "--force")
    assert code == 0, err
    forced = json.loads((tmp_path / "o" / "prediction.json").read_text())["provenance"]["parameters"]["forced"]
    assert "looks like a CT" in forced[0]


# --- DICOM series --------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["missing", "moved"])
def test_a_series_with_a_gap_is_refused_naming_the_slices(tmp_path, damage):
    import pydicom

    write_dicom_series(tmp_path / "s", 6, slope=1.0, intercept=0.0, modality="MR")
    assert read_image(tmp_path / "s").GetSize()[2] == 6
    target = sorted((tmp_path / "s").iterdir())[2]
    if damage == "missing":
        target.unlink()
    else:
        ds = pydicom.dcmread(target)
        ds.ImagePositionPatient = [-10.0, 20.0, float(ds.ImagePositionPatient[2]) + 1.0]
        ds.save_as(target, enforce_file_format=True)
    with pytest.raises(LesionDetectError, match=r"has uneven slice spacing: .* between slices \S+\.dcm and \S+\.dcm"):
        read_image(tmp_path / "s")


# --- output folders, JSON, cards, datasets ---------------------------------------------------------------

def test_out_folder_is_checked_before_work(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "input").mkdir()
    with pytest.raises(LesionDetectError, match="is a file; --out must be a folder"):
        check_out_dir(tmp_path / "file")
    with pytest.raises(LesionDetectError, match=r"cannot be created: .*file is a file"):
        check_out_dir(tmp_path / "file" / "a" / "b")
    with pytest.raises(LesionDetectError, match="lies inside the input"):
        check_out_dir(tmp_path / "input" / "out", inputs=[tmp_path / "input"])
    assert check_out_dir(tmp_path / "new" / "deeper", inputs=[tmp_path / "input"]) == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_json_is_refused_by_depth_and_size_before_parsing(tmp_path, monkeypatch):
    deep = tmp_path / "deep.json"
    deep.write_text('{"a": "[[[", "b": ' + "[" * 10_000 + "]" * 10_000 + "}")
    with pytest.raises(LesionDetectError, match="nested 10001 levels deep"):
        read_json(deep)
    ok = tmp_path / "ok.json"
    ok.write_text(json.dumps({"s": "[" * 500, "v": [[1, 2], {"k": [3]}]}))
    assert read_json(ok)["v"] == [[1, 2], {"k": [3]}]
    monkeypatch.setattr(files, "MAX_JSON_BYTES", 10)
    with pytest.raises(LesionDetectError, match="more than the 0 MiB"):
        read_json(ok)


@pytest.mark.parametrize("method", ["ms-flair-fcn", "bone-ct-patch", "liver-frcnn", "bone-scan-cls"])
def test_card_values_are_checked_against_the_methods_defaults(method):
    m = get_method(method)
    defaults = config_defaults(m)
    assert card_problems(ModelCard(m.name, m.modality, dict(defaults), thresholds={"t": 0.5}), defaults) == []
    number = next(k for k, v in defaults.items() if isinstance(v, int) and not isinstance(v, bool) and v > 0
                  and "batch" in k)
    bad = {**defaults, number: 0, "lr": float("nan"), "optimizer": 3}
    problems = card_problems(ModelCard(m.name, m.modality, bad, thresholds={"t": float("nan")}), defaults)
    assert any(p.startswith(f"config.{number} is 0; it must be above zero") for p in problems)
    assert any("config.lr is nan" in p for p in problems) and any("config.optimizer is 3" in p for p in problems)
    assert any(p.startswith("thresholds.t is nan") for p in problems)


def test_validate_refuses_bad_rois_and_an_image_of_the_wrong_modality(tmp_path, run_cli):
    root = tmp_path / "ds"
    write(flair_array(), root / "images" / "c0.nrrd")
    write(ct_array(), root / "images" / "c1.nrrd")
    roi = {"@schema": "https://x/markups-schema-v1.0.3.json#",
           "markups": [{"type": "ROI", "center": [5, 5, 5], "size": [2, -2, 2], "controlPoints": []}]}
    (root / "boxes").mkdir()
    (root / "boxes" / "c0.mrk.json").write_text(json.dumps(roi))
    cases = [{"id": "c0", "patient": "p0", "image": "images/c0.nrrd", "boxes": "boxes/c0.mrk.json"},
             {"id": "c1", "patient": "p1", "image": "images/c1.nrrd"}]
    (root / "dataset.json").write_text(json.dumps({"name": "d", "modality": "MR", "labels": {"0": "bg", "1": "l"},
                                                   "cases": cases}))
    code, out, err = run_cli("validate", root)
    assert code == 1
    assert "ROI size [2.0, -2.0, 2.0] is negative" in out and "looks like a CT in Hounsfield units" in out
    code, out, err = run_cli("train", "--method", "ms-flair-fcn", "--data", root, "--out", tmp_path / "m",
                             "--epochs", "1", "--device", "cpu")
    assert code == 2 and "has 2 problem(s); nothing was done" in err and "ROI size" in err
    assert not (tmp_path / "m").exists()


@needs_model
def test_evaluate_checks_the_dataset_before_work(tmp_path, run_cli):
    root = tmp_path / "ds"
    write(flair_array(), root / "images" / "c0.nrrd")
    arr = flair_array(1)
    arr[1, 1, 1] = np.nan
    write(arr, root / "images" / "c1.nrrd")
    write(np.zeros((8, 20, 24), np.uint8), root / "labels" / "c0.nrrd")
    cases = [{"id": "c0", "patient": "p0", "image": "images/c0.nrrd", "mask": "labels/c0.nrrd"},
             {"id": "c1", "patient": "p1", "image": "images/c1.nrrd"}]
    (root / "dataset.json").write_text(json.dumps({"name": "d", "modality": "MR", "labels": {"0": "bg", "1": "l"},
                                                   "cases": cases}))
    code, out, err = run_cli("evaluate", "--model", shipped_model_dir("ms-flair-fcn"), "--data", root,
                             "--device", "cpu")
    assert code == 2 and out == ""
    assert "has 2 problem(s); nothing was done" in err
    assert "has a different geometry from the image" in err and "has 1 NaN or infinite voxel value(s)" in err


def test_evaluate_checks_its_output_files_before_work(tmp_path, run_cli):
    (tmp_path / "file").write_text("x")
    code, out, err = run_cli("evaluate", "--model", tmp_path / "nomodel", "--data", tmp_path / "nodata",
                             "--json", tmp_path / "file" / "m.json")
    assert code == 2 and f"{tmp_path / 'file'}: is a file; the folder of --json must be a folder" in err
    assert err.count("\n") == 1
    code, out, err = run_cli("evaluate", "--model", tmp_path / "nomodel", "--data", tmp_path / "nodata",
                             "--plot", tmp_path)
    assert code == 2 and "is a folder; --plot needs a file name" in err


# --- the documented NaN replacement (--nan-fill) ------------------------------------------------------

from LesionDetectLib import gate  # noqa: E402


def _with_nans(tmp_path, suffix, count, value=np.nan):
    arr = flair_array()
    flat = arr.reshape(-1)
    flat[np.linspace(0, flat.size - 1, count).astype(int)] = value
    return write(arr, tmp_path / f"n{suffix}", compress=suffix.endswith(".gz")), arr


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_nan_fill_replaces_nan_voxels_by_the_value_and_records_it(tmp_path, suffix):
    path, arr = _with_nans(tmp_path, suffix, 40)  # 40 of 4608 voxels: 0.87 %
    with pytest.raises(LesionDetectError, match="NaN"):
        get_method("ms-flair-fcn").check_input(read_image(path), path)  # refused without the option
    for value, expected in ((-7.5, -7.5), ("min", float(np.nanmin(arr)))):
        with gate.allow_nan_fill(value):
            image = read_image(path)
        got = sitk.GetArrayFromImage(image)
        nan = np.isnan(arr)
        assert np.all(got[nan] == np.float32(expected)) and np.array_equal(got[~nan], arr[~nan])
        assert gate.nan_fill_record(image) == {"value": expected, "rule": "value" if value != "min" else "min",
                                               "voxels": 40, "fraction": round(40 / 4608, 6)}
        assert get_method("ms-flair-fcn").check_input(image, path) == []  # the gate passes it now
    assert gate.nan_fill_record(sitk.ReadImage(str(path))) is None  # nothing recorded without the option


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_nan_fill_refuses_more_than_the_documented_fraction_and_infinite_values(tmp_path, suffix):
    path, _ = _with_nans(tmp_path, suffix, 47)  # 1.02 % of the voxels
    with gate.allow_nan_fill(0.0), pytest.raises(LesionDetectError, match=r"has 47 NaN voxels of 4608 \(1\.02%\); "
                                                                          r"--nan-fill replaces NaN in at most 1%"):
        read_image(path)
    path, _ = _with_nans(tmp_path, ".inf" + suffix, 3, value=np.inf)
    with gate.allow_nan_fill(0.0), pytest.raises(LesionDetectError, match="infinite"):
        get_method("ms-flair-fcn").check_input(read_image(path), path)
    all_nan = write(np.full((8, 24, 24), np.nan, np.float32), tmp_path / f"all{suffix}", compress=True)
    with gate.allow_nan_fill("min"), pytest.raises(LesionDetectError, match="100.00%"):
        read_image(all_nan)


def test_nan_fill_value_parses_numbers_and_min_only():
    import argparse

    assert gate.nan_fill_value("-1000") == -1000.0 and gate.nan_fill_value("MIN") == "min"
    for bad in ("nan", "inf", "air", ""):
        with pytest.raises(argparse.ArgumentTypeError, match="finite number"):
            gate.nan_fill_value(bad)
    with gate.allow_nan_fill(3.0):
        pass
    assert gate._NAN_FILL.get() is None  # the block ends the policy


def _infer_has_nan_fill() -> bool:
    import argparse

    from LesionDetectLib.commands import infer

    sub = argparse.ArgumentParser().add_subparsers()
    infer.add_parser(sub)
    return "--nan-fill" in sub.choices["infer"].format_help()


@needs_model
@pytest.mark.skipif(not _infer_has_nan_fill(), reason="lesiondetect infer has no --nan-fill option yet (commands/infer.py)")
def test_infer_nan_fill_end_to_end(tmp_path, run_cli, capsys):
    path, _ = _with_nans(tmp_path, ".nii.gz", 20)
    code, out, err = run_cli("infer", "--method", "ms-flair-fcn", "--input", path, "--out", tmp_path / "o",
                             "--device", "cpu")
    assert code == 2 and "--nan-fill VALUE" in err and not (tmp_path / "o" / "prediction.json").exists()
    code, out, err = run_cli("infer", "--method", "ms-flair-fcn", "--input", path, "--out", tmp_path / "o",
                             "--device", "cpu", "--nan-fill", "0")
    assert code == 0, err
    manifest = json.loads((tmp_path / "o" / "prediction.json").read_text())
    assert manifest["provenance"]["parameters"]["nan_fill"] == {"value": 0.0, "rule": "value", "voxels": 20,
                                                                "fraction": round(20 / 4608, 6)}
    with pytest.raises(SystemExit) as usage:  # argparse's usage error
        run_cli("infer", "--method", "ms-flair-fcn", "--input", path, "--out", tmp_path / "o2", "--device", "cpu",
                "--nan-fill", "nan")
    assert usage.value.code == 2 and "finite number" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8])
def test_a_clean_nifti_gz_is_verified_without_a_second_decompression(tmp_path, dtype, monkeypatch):
    """The CRC of ITK's voxels matches the gzip trailer: no second pass over the data (the
    input gate's cost, Resources/benchmarks/input-gate.md); a damaged file still gets one."""
    arr = flair_array().astype(dtype)
    path = write(arr, tmp_path / "v.nii.gz", compress=True)

    def slow(*args):
        raise AssertionError("the slow scan ran")

    with monkeypatch.context() as m:
        m.setattr(gate, "_scan_nifti", slow)
        image = read_image(path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(sitk.ReadImage(str(path))))
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10  # one flipped bit in the deflate stream, trailer intact
    path.write_bytes(bytes(data))
    try:
        read_image(path)
    except LesionDetectError as exc:
        assert "damaged" in str(exc) or "corrupt" in str(exc) or "truncated" in str(exc), exc
    else:
        pytest.fail("a flipped bit in the compressed data was not noticed")


def test_the_input_gate_benchmark_runs_in_quick_mode(run_cli, tmp_path):
    """`lesiondetect bench input-gate` (Resources/benchmarks/input-gate.md) end to end on tiny inputs."""
    out_file = tmp_path / "gate.json"
    code, out, err = run_cli("bench", "input-gate", "--quick", "--json", out_file)
    assert code == 0, err
    results = json.loads(out_file.read_text())
    for name in ("ct_nifti", "ct_dicom", "flair_nifti", "planar_dicom"):
        assert results[f"{name}_read_s"] > 0 and results[f"{name}_gate_s"] >= 0 and results[f"{name}_total_s"] > 0
    assert results["max_gate_s"] == max(results[f"{n}_gate_s"] for n in ("ct_nifti", "ct_dicom", "flair_nifti",
                                                                           "planar_dicom"))
