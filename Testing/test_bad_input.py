"""Bad input through the CLI: one line naming the file and the problem, exit 2, nothing written."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from io_helpers import oblique_image
from LesionDetectLib.errors import LesionDetectError
from LesionDetectLib.io import read_image, read_volume, write_image


def _valid_nifti(folder):
    return write_image(oblique_image(np.int16), folder / "valid.nii.gz")


def _corrupt(folder, name):
    path = folder / name
    path.write_bytes(np.random.default_rng(7).integers(0, 256, 3000, dtype=np.uint8).tobytes())
    return path


def _truncated(folder):
    data = _valid_nifti(folder).read_bytes()
    path = folder / "cut.nii.gz"
    path.write_bytes(data[: len(data) // 2])
    return path


def _large_truncated_nrrd(folder):
    img = sitk.GetImageFromArray(np.random.default_rng(0).integers(-1000, 1000, (20, 30, 40)).astype(np.int16))
    full = folder / "full.nrrd"
    sitk.WriteImage(img, str(full), useCompression=True)
    data = full.read_bytes()
    full.unlink()
    path = folder / "cut.nrrd"
    path.write_bytes(data[: len(data) // 2])
    return path


def _empty_file(folder):
    path = folder / "empty.nii.gz"
    path.write_bytes(b"")
    return path


def _empty_folder(folder):
    path = folder / "nothing"
    path.mkdir()
    return path


def _folder_without_dicom(folder):
    path = folder / "reports"
    path.mkdir()
    (path / "report.txt").write_text("no images here\n")
    (path / "notes.pdf").write_bytes(b"%PDF-1.4\n")
    return path


def _folder_of_folders(folder):
    path = folder / "patient"
    (path / "study1").mkdir(parents=True)
    return path


def _text_file(folder):
    path = folder / "notes.txt"
    path.write_text("CT abdomen, see report\n")
    return path


def _missing(folder):
    return folder / "does_not_exist.nii.gz"


# (make the input, words the message must contain)
READ_CASES = {
    "corrupt_nifti": (lambda f: _corrupt(f, "random.nii.gz"), "is not a readable NIfTI file"),
    "corrupt_nrrd": (lambda f: _corrupt(f, "random.nrrd"), "is not a readable NRRD file"),
    "truncated_nifti": (_truncated, "is truncated"),
    "truncated_nrrd": (_large_truncated_nrrd, "is truncated"),
    "empty_file": (_empty_file, "is empty (0 bytes)"),
    "empty_folder": (_empty_folder, "is an empty folder"),
    "folder_without_dicom": (_folder_without_dicom, "is a folder without DICOM images (2 other file(s)"),
    "folder_of_folders": (_folder_of_folders, "only sub-folders (study1)"),
    "text_file": (_text_file, "is not in an image format that can be read"),
    "missing": (_missing, "does not exist"),
}


def _listing(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


@pytest.mark.parametrize("case", READ_CASES)
def test_unreadable_input_is_one_clear_line(tmp_path, run_cli, case):
    make, words = READ_CASES[case]
    path = make(tmp_path)
    before = _listing(tmp_path)
    code, out, err = run_cli("info", path)
    assert code == 2
    assert out == ""
    assert err.startswith(f"lesiondetect: error: {path}: ")
    assert words in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert _listing(tmp_path) == before  # nothing written on failure


def _four_d(folder):
    img = sitk.Image([4, 5, 3, 2], sitk.sitkInt16)
    path = folder / "dynamic.nii.gz"
    sitk.WriteImage(img, str(path))
    return path


def _rgb(folder):
    img = sitk.GetImageFromArray(np.zeros((3, 5, 4, 3), np.uint8), isVector=True)
    path = folder / "colour.nrrd"
    sitk.WriteImage(img, str(path))
    return path


def _with_value(value):
    def make(folder):
        arr = sitk.GetArrayFromImage(oblique_image(np.float32))
        arr[1, 2, 3] = value
        path = folder / f"bad_{value}.nrrd"
        sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
        return path
    return make


VOLUME_CASES = {
    "4d": (_four_d, "is a 4-D image (4 x 5 x 3 x 2)"),
    "rgb": (_rgb, "is a colour (RGB) image with 3 values per voxel"),
    "nan": (_with_value(np.nan), "has 1 NaN or infinite voxel value(s) (first at voxel index (3, 2, 1))"),
    "inf": (_with_value(np.inf), "has 1 NaN or infinite voxel value(s)"),
}


@pytest.mark.parametrize("case", VOLUME_CASES)
def test_image_that_is_not_a_usable_volume(tmp_path, run_cli, case):
    make, words = VOLUME_CASES[case]
    path = make(tmp_path)
    code, out, err = run_cli("info", path)  # describing it is fine ...
    assert code == 0 and out
    code, out, err = run_cli("info", "--check", path)  # ... using it as an input is not
    assert code == 2 and out == ""
    assert err.startswith(f"lesiondetect: error: {path}: ") and words in err
    with pytest.raises(LesionDetectError, match=str(path.name)):
        read_volume(path)


def test_subprocess_prints_no_traceback(tmp_path):
    path = _truncated(tmp_path)
    run = subprocess.run([sys.executable, "-m", "LesionDetectLib", "info", str(path)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stdout == ""
    assert "Traceback" not in run.stderr
    assert run.stderr.strip().splitlines()[-1] == (
        f"lesiondetect: error: {path}: is truncated (the compressed data stops early); the copy or download was "
        "probably interrupted. Copy or export it again.")


def test_debug_shows_the_traceback(tmp_path, run_cli):
    path = _missing(tmp_path)
    code, out, err = run_cli("--debug", "info", path)
    assert code == 2
    assert "Traceback (most recent call last)" in err
    assert err.rstrip().endswith(f"lesiondetect: error: {path}: does not exist; check the spelling and the folder")


def test_folder_where_a_file_is_needed(tmp_path):
    with pytest.raises(LesionDetectError, match=rf"{tmp_path.name}: is a folder; an image file is needed"):
        read_image(tmp_path, allow_folder=False)
    with pytest.raises(LesionDetectError, match="is a folder; give a file name to write"):
        write_image(oblique_image(), tmp_path)


def test_permission_denied_message(tmp_path, monkeypatch):
    """Root can read anything, so simulate the refusal the operating system would give."""
    path = _valid_nifti(tmp_path)
    monkeypatch.setattr(os, "access", lambda p, mode: False)
    with pytest.raises(LesionDetectError, match=r"valid\.nii\.gz: is not readable \(permission denied\)"):
        read_image(path)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read files with mode 000")
def test_permission_denied_for_real(tmp_path, run_cli):
    path = _valid_nifti(tmp_path)
    path.chmod(0)
    try:
        code, _, err = run_cli("info", path)
    finally:
        path.chmod(0o644)
    assert code == 2 and f"{path}: is not readable (permission denied)" in err
