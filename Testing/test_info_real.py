"""`lesiondetect info --json` agrees with SimpleITK on every real input in ../shared/data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import DATA

INPUTS = DATA / "realistic_inputs"
# what a radiologist would call each of them (from data/README.md)
EXPECTED_MODALITY = {
    "totalsegmentator_example_ct.nii.gz": "CT",
    "totalsegmentator_example_ct_dicom": "CT",
    "mirp_crlm_1004_ct_dicom": "CT",
    "flair_raw.nii.gz": "MR",
}


def _is_dicom(path: Path) -> bool:
    """DICOM Part 10 files carry "DICM" after a 128-byte preamble, whatever their name."""
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        return f.read(132)[128:] == b"DICM"


def _real_inputs() -> list[Path]:
    """Every image file, and every folder of DICOM slices, under realistic_inputs/."""
    if not INPUTS.is_dir():
        return []
    found = []
    for p in sorted(INPUTS.rglob("*")):
        if p.is_dir() and any(_is_dicom(f) for f in p.iterdir()):
            found.append(p)
        elif p.is_file() and p.name.lower().endswith((".nii.gz", ".nii", ".nrrd", ".mha")):
            found.append(p)
    return found


def _sitk_reference(path: Path) -> sitk.Image:
    if path.is_dir():
        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(path)))
        return reader.Execute()
    return sitk.ReadImage(str(path))


def test_all_documented_inputs_are_found(shared_data):
    names = {p.name for p in _real_inputs()}
    assert set(EXPECTED_MODALITY) <= names


@pytest.mark.parametrize("path", _real_inputs(), ids=lambda p: p.name)
def test_info_matches_simpleitk(shared_data, run_cli, path):
    code, out, err = run_cli("info", "--json", path)
    assert code == 0, err
    info = json.loads(out)
    ref = _sitk_reference(path)
    assert info["size"] == list(ref.GetSize())
    assert info["spacing"] == list(ref.GetSpacing())
    assert info["origin"] == list(ref.GetOrigin())
    assert info["direction"] == list(ref.GetDirection())
    assert len(info["direction"]) == 9
    assert info["pixel_type"] == ref.GetPixelIDTypeAsString()
    assert info["components"] == ref.GetNumberOfComponentsPerPixel() == 1
    values = sitk.GetArrayViewFromImage(ref)
    assert info["value_range"] == [float(np.min(values)), float(np.max(values))]
    if path.name in EXPECTED_MODALITY:
        assert info["modality_guess"] == EXPECTED_MODALITY[path.name]

    # the human-readable form shows the same numbers
    code, text, _ = run_cli("info", path)
    assert code == 0
    assert " x ".join(str(s) for s in ref.GetSize()) + " voxels" in text
    assert f"modality guess  {info['modality_guess']}" in text
