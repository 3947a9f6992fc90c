"""Image reading and writing: exact geometry and values, DICOM rescaling and series choice."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from io_helpers import ORIGIN, SPACING, oblique_direction, oblique_image, write_dicom_series
from LesionDetectLib.errors import LesionDetectError
from LesionDetectLib.io import (check_finite, dicom_series_files, image_info, modality_guess, read_image,
                                read_volume, require_scalar_volume, write_image)

DTYPES = [np.int16, np.uint8, np.float32]


def _geometry_error(a: sitk.Image, b: sitk.Image) -> float:
    return max(float(np.max(np.abs(np.subtract(getattr(a, f)(), getattr(b, f)()))))
               for f in ("GetOrigin", "GetSpacing", "GetDirection"))


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_round_trip_double_precision_formats(tmp_path, suffix, dtype):
    img = oblique_image(dtype)
    back = read_image(write_image(img, tmp_path / f"img{suffix}"))
    assert back.GetPixelID() == img.GetPixelID()
    assert back.GetSize() == img.GetSize()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))
    # NRRD stores spacing times direction, so the split back can differ in the last bit
    assert _geometry_error(back, img) <= 1e-12


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.__name__)
def test_round_trip_nifti(tmp_path, dtype):
    img = oblique_image(dtype)
    back = read_image(write_image(img, tmp_path / "img.nii.gz"))
    assert back.GetPixelID() == img.GetPixelID()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(img))
    # NIfTI holds geometry in 32-bit floats: exact to float32 precision of each number
    np.testing.assert_allclose(back.GetOrigin(), ORIGIN, rtol=2 ** -22, atol=0)
    np.testing.assert_allclose(back.GetSpacing(), SPACING, rtol=2 ** -22, atol=0)
    np.testing.assert_allclose(back.GetDirection(), oblique_direction(), rtol=0, atol=1e-6)


def test_nifti_is_bit_exact_for_float32_geometry(tmp_path):
    img = oblique_image(np.float32)
    img.SetOrigin((-123.5, 67.25, -0.375))
    img.SetSpacing((0.5, 1.25, 4.0))
    img.SetDirection((-1, 0, 0, 0, 0, 1, 0, -1, 0))  # flipped and permuted axes
    back = read_image(write_image(img, tmp_path / "img.nii"))
    assert back.GetOrigin() == img.GetOrigin()
    assert back.GetSpacing() == img.GetSpacing()
    assert back.GetDirection() == img.GetDirection()
    assert float(sitk.GetArrayFromImage(back).min()) < 0


def test_integer_type_kept_unless_asked(tmp_path):
    path = write_image(oblique_image(np.int16), tmp_path / "ct.nrrd")
    assert read_image(path).GetPixelID() == sitk.sitkInt16
    as_float = read_image(path, sitk.sitkFloat32)
    assert as_float.GetPixelID() == sitk.sitkFloat32
    np.testing.assert_array_equal(sitk.GetArrayFromImage(as_float),
                                  sitk.GetArrayFromImage(read_image(path)).astype(np.float32))


def test_dicom_series_applies_rescale_and_keeps_geometry(tmp_path):
    stored = write_dicom_series(tmp_path / "ct", slices=4, slope=2.0, intercept=-1024.0)
    img = read_image(tmp_path / "ct")
    assert img.GetSize() == (6, 4, 4)
    assert img.GetSpacing() == pytest.approx((0.9, 0.7, 2.5), abs=1e-9)
    assert img.GetOrigin() == pytest.approx((-10.0, 20.0, 30.0), abs=1e-9)
    values = sitk.GetArrayFromImage(img)
    assert np.issubdtype(values.dtype, np.integer)  # integer slope and intercept keep an integer type
    np.testing.assert_array_equal(values, stored.astype(np.int64) * 2 - 1024)
    assert modality_guess(img) == "CT"


def test_dicom_fractional_rescale_gives_real_values(tmp_path):
    stored = write_dicom_series(tmp_path / "mr", slices=2, slope=0.5, intercept=-10.25, modality="MR")
    img = read_image(tmp_path / "mr")
    np.testing.assert_allclose(sitk.GetArrayFromImage(img), stored * 0.5 - 10.25, rtol=0, atol=1e-6)
    assert modality_guess(img) == "MR"


def test_dicom_folder_with_two_series_reads_the_larger(tmp_path):
    folder = tmp_path / "mixed"
    write_dicom_series(folder, slices=2, first_z=100.0)
    write_dicom_series(folder, slices=5, first_z=-50.0)
    assert len(dicom_series_files(folder)) == 5
    img = read_image(folder)
    assert img.GetSize()[2] == 5
    assert img.GetOrigin()[2] == pytest.approx(-50.0)


@pytest.mark.parametrize("name, modality", [("CT_small.dcm", "CT"), ("MR_small.dcm", "MR")])
def test_single_dicom_files_match_pydicom(name, modality):
    pydicom_data = pytest.importorskip("pydicom.data")
    import pydicom

    path = pydicom_data.get_testdata_file(name)
    ds = pydicom.dcmread(path)
    expected = ds.pixel_array * float(getattr(ds, "RescaleSlope", 1)) + float(getattr(ds, "RescaleIntercept", 0))
    img = read_image(path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(img)[0], expected)
    assert img.GetSpacing()[:2] == pytest.approx([float(ds.PixelSpacing[1]), float(ds.PixelSpacing[0])])
    assert img.GetOrigin() == pytest.approx([float(v) for v in ds.ImagePositionPatient])
    assert modality_guess(img) == modality
    assert image_info(img)["modality_guess"] == modality


@pytest.mark.parametrize("suffix", [".png", ".tif", ".jpg"])
def test_2d_formats(tmp_path, suffix):
    values = (np.arange(12 * 20).reshape(12, 20) % 251).astype(np.uint8)
    path = tmp_path / f"scan{suffix}"
    sitk.WriteImage(sitk.GetImageFromArray(values), str(path))
    img = read_volume(path, allow_2d=True)
    assert img.GetDimension() == 2 and img.GetSize() == (20, 12)
    if suffix != ".jpg":  # JPEG is lossy
        np.testing.assert_array_equal(sitk.GetArrayFromImage(img), values)
    assert modality_guess(img) == "NM"
    with pytest.raises(LesionDetectError, match="2-D image; a 3-D volume is needed"):
        read_volume(path)


def test_rgb_png_is_refused_as_a_volume(tmp_path):
    rgb = sitk.GetImageFromArray(np.zeros((8, 9, 3), np.uint8), isVector=True)
    path = tmp_path / "photo.png"
    sitk.WriteImage(rgb, str(path))
    assert read_image(path).GetNumberOfComponentsPerPixel() == 3
    with pytest.raises(LesionDetectError, match=r"photo\.png: is a colour \(RGB\) image with 3 values"):
        read_volume(path, allow_2d=True)


def test_check_finite_names_count_and_first_voxel():
    img = oblique_image(np.float32)
    arr = sitk.GetArrayFromImage(img)
    arr[3, 2, 1] = np.nan
    arr[4, 6, 8] = -np.inf
    bad = sitk.GetImageFromArray(arr)
    with pytest.raises(LesionDetectError, match=r"x\.nii: has 2 NaN or infinite voxel value\(s\) "
                                                r"\(first at voxel index \(1, 2, 3\)\)"):
        check_finite(bad, "x.nii")
    check_finite(img)  # finite float image passes
    assert require_scalar_volume(img) is img


def test_write_refuses_existing_file_and_keeps_it(tmp_path):
    path = tmp_path / "keep.nii.gz"
    write_image(oblique_image(np.int16, seed=1), path)
    before = path.read_bytes()
    with pytest.raises(LesionDetectError, match="already exists; refusing to overwrite"):
        write_image(oblique_image(np.int16, seed=2), path)
    assert path.read_bytes() == before
    write_image(oblique_image(np.int16, seed=2), path, overwrite=True)
    assert path.read_bytes() != before


def test_write_failure_leaves_nothing(tmp_path, monkeypatch):
    def half_written(image, name, useCompression=True):
        with open(name, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("ITK ERROR: NrrdImageIO(0x1): Write: disk full")

    monkeypatch.setattr(sitk, "WriteImage", half_written)
    with pytest.raises(LesionDetectError, match=r"out\.nrrd: cannot be written \(Write: disk full\)"):
        write_image(oblique_image(), tmp_path / "out.nrrd")
    assert list(tmp_path.iterdir()) == []


def test_write_needs_a_file_name_with_known_suffix(tmp_path):
    with pytest.raises(LesionDetectError, match="is a folder; give a file name to write"):
        write_image(oblique_image(), tmp_path)
    with pytest.raises(LesionDetectError, match="unsupported output format"):
        write_image(oblique_image(), tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []


def test_image_info_is_simpleitks_view(tmp_path):
    img = oblique_image(np.float32)
    info = image_info(img)
    assert info["size"] == [9, 7, 5]
    assert info["spacing"] == list(SPACING) and info["origin"] == list(ORIGIN)
    assert info["direction"] == list(oblique_direction())
    assert info["pixel_type"] == "32-bit float" and info["components"] == 1
    arr = sitk.GetArrayFromImage(img)
    assert info["value_range"] == [float(arr.min()), float(arr.max())]


def test_a_jpeg_cut_short_is_refused_and_one_with_a_trailer_is_read(tmp_path):
    arr = (np.arange(64 * 32, dtype=np.uint32).reshape(64, 32) % 251).astype(np.uint8)
    path = tmp_path / "scan.jpg"
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path))
    data = path.read_bytes()
    assert data.endswith(b"\xff\xd9")
    path.write_bytes(data + b"vendor trailer \xff\xda after the image")  # bytes after the end-of-image marker
    assert read_image(path).GetSize() == (32, 64)
    path.write_bytes(data[:int(len(data) * 0.9)])  # libjpeg alone would fill the missing rows with grey
    with pytest.raises(LesionDetectError, match=r"scan\.jpg: is a truncated JPEG file: its image data stops before"):
        read_image(path)
