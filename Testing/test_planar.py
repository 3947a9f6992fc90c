"""Planar scintigram IO (LesionDetectLib.planar): real files written here, views, values, spacing, refusals.

pydicom's wheel ships one real NM file (JPEG-lossy.dcm: a 12-bit JPEG whole-body frame that
only GDCM decodes); the multi-frame whole-body files are built here with pydicom.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import DATA
from io_helpers import dicom_dataset
from LesionDetectLib.errors import LesionDetectError
from LesionDetectLib.geometry import Geometry
from LesionDetectLib.planar import as_volume, is_planar_file, read_views

pydicom = pytest.importorskip("pydicom")
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.dataset import Dataset  # noqa: E402
from pydicom.uid import NuclearMedicineImageStorage, RLELossless, generate_uid  # noqa: E402

ANTERIOR = ("399321004", "SCT", "Anterior projection")
POSTERIOR = ("399001007", "SCT", "Posterior projection")


def counts(rows=5, cols=4, dtype=np.uint16, scale=1000, seed=0):
    """Distinct values, largest near the type's range (65000-ish for 16-bit)."""
    rng = np.random.default_rng(seed)
    return (rng.permutation(rows * cols).reshape(rows, cols) * (scale // (rows * cols) or 1) + 1).astype(dtype)


def write_sitk(path, array, spacing=None, origin=None, direction=None, vector=False):
    image = sitk.GetImageFromArray(array, isVector=vector)
    if spacing is not None:
        image.SetSpacing(spacing)
    if origin is not None:
        image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    sitk.WriteImage(image, str(path))
    return path


def nm_file(path, frames, views=(), spacing=(2.5, 3.0), slope=None, intercept=None, image_type="WHOLE BODY",
            orientations=(), detector_vector=None, modality="NM", rows=None, syntax=None):
    """An NM file written with pydicom: frames (n, rows, cols) uint16; one detector per frame."""
    frames = np.asarray(frames, dtype=np.uint16)
    ds = dicom_dataset(NuclearMedicineImageStorage, modality, "PLANAR")
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.ImageType = ["ORIGINAL", "PRIMARY", image_type, "EMISSION"]
    n, r, c = frames.shape
    ds.NumberOfFrames, ds.Rows, ds.Columns = n, r if rows is None else rows, c
    if spacing is not None:
        ds.PixelSpacing = list(spacing)
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if n > 1:
        ds.FrameIncrementPointer = 0x00540020  # Detector Vector
        ds.DetectorVector = list(detector_vector or range(1, n + 1))
        ds.NumberOfDetectors = n
        items = []
        for k in range(n):
            item = Dataset()
            if k < len(views) and views[k]:
                code = Dataset()
                code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = views[k]
                item.ViewCodeSequence = [code]
            if k < len(orientations):
                item.ImageOrientationPatient = list(orientations[k])
            items.append(item)
        ds.DetectorInformationSequence = items
    ds.PixelData = frames.astype("<u2").tobytes()
    if syntax is not None:
        ds.compress(syntax)
    ds.save_as(path, enforce_file_format=True)
    return path


def only_view(path):
    views = read_views(path)
    assert [name for name, _ in views] == [""]
    image = views[0][1]
    assert image.GetDimension() == 2 and image.GetPixelID() == sitk.sitkFloat32
    return image


def values(image):
    return sitk.GetArrayFromImage(image)


# --- formats ---------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype, scale", [(np.uint8, 250), (np.uint16, 65000)])
def test_png_keeps_values_and_its_physical_scale(tmp_path, dtype, scale):
    array = counts(dtype=dtype, scale=scale)
    image = only_view(write_sitk(tmp_path / "scan.png", array, spacing=(0.5, 2.0)))
    np.testing.assert_array_equal(values(image), array.astype(np.float32))
    assert image.GetSpacing() == (0.5, 2.0)  # SimpleITK stores it in PNG's sCAL chunk
    assert image.GetOrigin() == (0.0, 0.0)


@pytest.mark.parametrize("dtype, scale", [(np.uint8, 250), (np.uint16, 65000)])
def test_tiff_spacing_from_its_resolution_tags(tmp_path, dtype, scale):
    array = counts(dtype=dtype, scale=scale)
    image = only_view(write_sitk(tmp_path / "scan.tif", array, spacing=(2.4, 4.8)))
    np.testing.assert_array_equal(values(image), array.astype(np.float32))
    assert image.GetSpacing() == pytest.approx((2.4, 4.8), rel=1e-7)  # dpi as a TIFF rational


def test_tiff_without_resolution_and_jpeg_dpi_give_1mm(tmp_path):
    from PIL import Image

    array = counts(dtype=np.uint8, scale=250, rows=16, cols=16)
    Image.fromarray(array).save(tmp_path / "plain.tif")
    Image.fromarray(array).save(tmp_path / "print.jpg", dpi=(254, 254))  # SimpleITK alone would say 0.1 mm
    assert only_view(tmp_path / "plain.tif").GetSpacing() == (1.0, 1.0)
    jpeg = only_view(tmp_path / "print.jpg")
    assert jpeg.GetSpacing() == (1.0, 1.0)
    np.testing.assert_array_equal(values(jpeg), sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "print.jpg"))))


def test_nrrd_2d_geometry_exact(tmp_path):
    array = counts(dtype=np.int16)
    c, s = np.cos(0.3), np.sin(0.3)
    image = only_view(write_sitk(tmp_path / "scan.nrrd", array, (1.7, 2.9), (-12.5, 33.25), (c, -s, s, c)))
    np.testing.assert_array_equal(values(image), array.astype(np.float32))
    assert image.GetSpacing() == (1.7, 2.9) and image.GetOrigin() == (-12.5, 33.25)
    np.testing.assert_allclose(image.GetDirection(), (c, -s, s, c), atol=1e-15)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha", ".tif"])
def test_one_slice_volume_is_read_as_2d(tmp_path, suffix):
    array = counts(dtype=np.uint16)[None]
    image = only_view(write_sitk(tmp_path / f"slice{suffix}", array, (2.0, 3.0, 7.0), (5.0, -6.0, 40.0)))
    assert image.GetSize() == (4, 5)
    np.testing.assert_array_equal(values(image), array[0].astype(np.float32))
    assert image.GetSpacing() == pytest.approx((2.0, 3.0), rel=1e-7)
    if suffix != ".tif":  # TIFF has no origin
        assert image.GetOrigin() == (5.0, -6.0)


@pytest.mark.parametrize("channels", [3, 4])
def test_rgb_with_equal_channels_is_greyscale(tmp_path, channels):
    grey = counts(dtype=np.uint8, scale=250)
    image = only_view(write_sitk(tmp_path / "grey_rgb.png", np.stack([grey] * channels, axis=-1), vector=True))
    np.testing.assert_array_equal(values(image), grey.astype(np.float32))


# --- DICOM NM --------------------------------------------------------------------------------

def test_single_frame_nm_rescaled_with_pixel_spacing(tmp_path):
    stored = counts(scale=60000)
    path = nm_file(tmp_path / "static.dcm", stored[None], slope=2.0, intercept=-5.0, image_type="STATIC")
    image = only_view(path)
    np.testing.assert_array_equal(values(image), (stored * 2.0 - 5.0).astype(np.float32))
    assert image.GetSpacing() == (3.0, 2.5)  # PixelSpacing is (row, column) spacing
    assert image.GetOrigin() == (0.0, 0.0)
    assert is_planar_file(path)


def test_whole_body_nm_gives_anterior_and_posterior(tmp_path):
    ant, post = counts(seed=1), counts(seed=2) + 7
    path = nm_file(tmp_path / "wb.dcm", [ant, post], views=[ANTERIOR, POSTERIOR], spacing=(2.4, 2.6))
    views = read_views(path)
    assert [name for name, _ in views] == ["anterior", "posterior"]
    np.testing.assert_array_equal(values(views[0][1]), ant.astype(np.float32))
    np.testing.assert_array_equal(values(views[1][1]), post.astype(np.float32))
    assert all(image.GetSpacing() == (2.6, 2.4) and image.GetSize() == (4, 5) for _, image in views)
    assert is_planar_file(path)


def test_detector_vector_maps_frames_to_detectors(tmp_path):
    path = nm_file(tmp_path / "wb.dcm", [counts(seed=1), counts(seed=2)], views=[ANTERIOR, POSTERIOR],
                   detector_vector=[2, 1])
    assert [name for name, _ in read_views(path)] == ["posterior", "anterior"]


@pytest.mark.parametrize("make, names", [
    (dict(views=[("X-1", "99LOCAL", "anterior"), ("X-2", "99LOCAL", "POSTERIOR")]), ["anterior", "posterior"]),
    (dict(views=[("G-5216", "SRT", "posterior"), ("G-5215", "SRT", "anterior")]), ["posterior", "anterior"]),
    # camera in front: rows to the patient's left, columns head to feet; behind: mirrored rows
    (dict(orientations=[(1, 0, 0, 0, 0, -1), (-1, 0, 0, 0, 0, -1)]), ["anterior", "posterior"]),
    (dict(), ["frame1", "frame2"]),
    (dict(views=[ANTERIOR, ANTERIOR]), ["frame1", "frame2"]),  # not one view each: keep names unique
])
def test_view_names_from_codes_orientation_or_frame_number(tmp_path, make, names):
    path = nm_file(tmp_path / "wb.dcm", [counts(seed=1), counts(seed=2)], **make)
    assert [name for name, _ in read_views(path)] == names


@pytest.mark.parametrize("frames", [1, 2])
def test_compressed_nm_is_decoded_and_rescaled(tmp_path, frames):
    stored = [counts(scale=60000, seed=k) for k in range(frames)]
    path = nm_file(tmp_path / "rle.dcm", stored, views=[ANTERIOR, POSTERIOR], slope=3.0, intercept=1.0,
                   syntax=RLELossless)
    views = read_views(path)
    assert [name for name, _ in views] == (["anterior", "posterior"] if frames == 2 else [""])
    for (_, image), counts_k in zip(views, stored):
        np.testing.assert_array_equal(values(image), (counts_k * 3.0 + 1.0).astype(np.float32))


def test_real_nm_file_from_pydicom():
    """A real 12-bit JPEG NM whole-body frame: pydicom's plug-ins cannot decode it, GDCM can."""
    path = get_testdata_file("JPEG-lossy.dcm")
    assert is_planar_file(path)
    image = only_view(path)
    reference = sitk.ReadImage(path)
    assert image.GetSize() == reference.GetSize()[:2] == (256, 1024)
    assert image.GetSpacing() == (2.26, 2.26)
    np.testing.assert_array_equal(values(image), sitk.GetArrayFromImage(reference)[0].astype(np.float32))


def test_other_single_frame_dicom_matches_gdcm():
    path = get_testdata_file("CT_small.dcm")
    assert not is_planar_file(path)  # a CT slice: batch inference reads it as a volume
    image = only_view(path)
    reference = sitk.ReadImage(path)  # GDCM applies the CT rescale independently of pydicom
    np.testing.assert_array_equal(values(image), sitk.GetArrayFromImage(reference)[0].astype(np.float32))
    assert image.GetSpacing() == reference.GetSpacing()[:2]


# --- refusals: one line naming the file and the problem ---------------------------------------

def _text(tmp_path):
    (tmp_path / "notes.png").write_text("not an image\n")
    return tmp_path / "notes.png", "is not a readable PNG file"


def _truncated_png(tmp_path):
    path = write_sitk(tmp_path / "cut.png", counts(rows=64, cols=64, scale=65000))
    path.write_bytes(path.read_bytes()[:200])
    return path, "cannot be read"


def _truncated_dicom(tmp_path):
    return get_testdata_file("MR_truncated.dcm"), "truncated"


def _missing(tmp_path):
    return tmp_path / "nowhere.dcm", "does not exist"


def _zero_bytes(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    return tmp_path / "empty.jpg", "is empty (0 bytes)"


def _zero_size_mha(tmp_path):
    path = tmp_path / "empty.mha"
    path.write_text("ObjectType = Image\nNDims = 2\nDimSize = 0 5\nElementType = MET_FLOAT\nElementDataFile = LOCAL\n")
    return path, "is an empty image (0 x 5 pixels)"


def _zero_rows_nm(tmp_path):
    return nm_file(tmp_path / "norows.dcm", np.zeros((1, 0, 4)), rows=0), "is an empty image (4 x 0 pixels)"


def _volume(tmp_path):
    return write_sitk(tmp_path / "ct.nrrd", np.arange(60, dtype=np.int16).reshape(3, 5, 4)), \
        "is a 3-D volume (3 slices); bone-scan-cls reads planar scintigrams"


def _multipage_tiff(tmp_path):
    return write_sitk(tmp_path / "pages.tif", np.arange(40, dtype=np.uint8).reshape(2, 5, 4)), \
        "is a 3-D volume (2 slices)"


def _spect(tmp_path):
    frames = [counts(seed=k) for k in range(3)]
    return nm_file(tmp_path / "spect.dcm", frames, image_type="RECON TOMO"), "is a 3-D volume (3 slices)"


def _four_d(tmp_path):
    image = sitk.JoinSeries([sitk.Image([4, 5, 2], sitk.sitkUInt8)] * 2)
    sitk.WriteImage(image, str(tmp_path / "4d.nrrd"))
    return tmp_path / "4d.nrrd", "is a 4-D image (4 x 5 x 2 x 2)"


def _colour(tmp_path):
    rgb = np.stack([counts(dtype=np.uint8, scale=250, seed=k) for k in range(3)], axis=-1)
    return write_sitk(tmp_path / "photo.png", rgb, vector=True), "is a colour image, not a greyscale scintigram"


def _vector(tmp_path):
    return write_sitk(tmp_path / "field.mha", np.ones((5, 4, 2), np.float32), vector=True), "has 2 values per pixel"


def _complex(tmp_path):
    sitk.WriteImage(sitk.Image([4, 5], sitk.sitkComplexFloat32), str(tmp_path / "k.nrrd"))
    return tmp_path / "k.nrrd", "has complex pixel values"


def _nan(tmp_path):
    array = counts().astype(np.float32)
    array[2, 3] = np.nan
    return write_sitk(tmp_path / "nan.nrrd", array), \
        "has 1 NaN or infinite voxel value(s) (first at voxel index (3, 2, 0))"


def _overflow_to_inf(tmp_path):  # a slope beyond float32: the counts cannot be represented
    return nm_file(tmp_path / "inf.dcm", counts()[None], slope=1e40, intercept=0.0), "NaN or infinite"


def _blank(tmp_path):
    return write_sitk(tmp_path / "blank.png", np.full((5, 4), 7, np.uint8)), \
        "is blank: it has the same value (7) in all 20 pixels"


def _blank_posterior(tmp_path):
    path = nm_file(tmp_path / "wb.dcm", [counts(), np.zeros((5, 4))], views=[ANTERIOR, POSTERIOR])
    return path, "is blank: its posterior view has the same value (0) in all 20 pixels"


def _no_pixels(tmp_path):
    ds = pydicom.dcmread(nm_file(tmp_path / "hdr.dcm", counts()[None]))
    del ds.PixelData
    ds.save_as(tmp_path / "hdr.dcm")
    return tmp_path / "hdr.dcm", "is a DICOM file without an image"


BAD = [_text, _truncated_png, _truncated_dicom, _missing, _zero_bytes, _zero_size_mha, _zero_rows_nm, _volume,
       _multipage_tiff, _spect, _four_d, _colour, _vector, _complex, _nan, _overflow_to_inf, _blank,
       _blank_posterior, _no_pixels]


@pytest.mark.parametrize("make", BAD, ids=[f.__name__.strip("_") for f in BAD])
def test_bad_file_is_one_line_naming_file_and_problem(tmp_path, make):
    path, problem = make(tmp_path)
    with pytest.raises(LesionDetectError) as caught:
        read_views(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ") and problem in message
    assert "\n" not in message


# --- is_planar_file, as_volume, real data ------------------------------------------------------

def test_is_planar_file_by_name_and_header(tmp_path):
    assert all(is_planar_file(tmp_path / name) for name in ("a.png", "b.JPG", "c.jpeg", "d.tif", "e.tiff"))
    assert is_planar_file(write_sitk(tmp_path / "flat.nrrd", counts()))
    assert is_planar_file(write_sitk(tmp_path / "one.nii.gz", counts()[None].astype(np.int16)))
    assert not is_planar_file(write_sitk(tmp_path / "ct.nii.gz", np.zeros((3, 5, 4), np.int16)))
    assert not is_planar_file(nm_file(tmp_path / "spect.dcm", [counts()] * 3, image_type="RECON TOMO"))
    assert not is_planar_file(tmp_path / "missing.nrrd")
    (tmp_path / "notes.txt").write_text("hello")
    assert not is_planar_file(tmp_path / "notes.txt")


def test_as_volume_matches_geometry_of_the_2d_image():
    image = sitk.GetImageFromArray(counts().astype(np.float32))
    image.SetSpacing((2.6, 2.4))
    image.SetOrigin((-10.0, 20.0))
    image.SetDirection((0.0, 1.0, -1.0, 0.0))
    volume = as_volume(image)
    assert volume.GetSize() == (4, 5, 1) and volume.GetSpacing() == (2.6, 2.4, 1.0)
    assert volume.GetOrigin() == (-10.0, 20.0, 0.0)
    assert volume.GetDirection() == (0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 1.0)
    assert Geometry.of(volume) == Geometry.of(image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(volume)[0], values(image))
    with pytest.raises(ValueError):
        as_volume(volume)


def test_real_bone_scan_crop():
    path = DATA / "bone_scan_bs80k" / "anterior" / "1.jpg"
    if not path.is_file():
        pytest.skip(f"real BS-80K crop not found at {path}")
    assert is_planar_file(path)
    image = only_view(path)
    assert image.GetSize() == (67, 154) and image.GetSpacing() == (1.0, 1.0)
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
    np.testing.assert_array_equal(values(image), reference.astype(np.float32))
    assert values(image).max() > values(image).min()
