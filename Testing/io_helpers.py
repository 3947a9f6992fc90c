"""Small test images with awkward geometry, and DICOM series written with pydicom."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

# asymmetric size, anisotropic spacing, oblique direction (rotation about three axes)
SIZE_XYZ = (9, 7, 5)
SPACING = (0.6, 1.3, 4.1)
ORIGIN = (-123.45, 67.89, -0.321)


def oblique_direction() -> tuple[float, ...]:
    from scipy.spatial.transform import Rotation

    return tuple(Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix().ravel())


def oblique_image(dtype=np.int16, seed: int = 0) -> sitk.Image:
    """A 9x7x5 image with distinct voxel values (negative ones too when the type allows)."""
    rng = np.random.default_rng(seed)
    shape = SIZE_XYZ[::-1]
    if np.issubdtype(dtype, np.floating):
        values = rng.normal(-200.0, 500.0, shape)
    else:
        info = np.iinfo(dtype)
        values = rng.integers(max(info.min, -3000), min(info.max, 3000), shape, endpoint=True)
    img = sitk.GetImageFromArray(values.astype(dtype))
    img.SetSpacing(SPACING)
    img.SetOrigin(ORIGIN)
    img.SetDirection(oblique_direction())
    return img


def dicom_dataset(sop_class, modality: str, patient_id: str, instance_uid: str | None = None):
    """A pydicom Dataset with its file meta (explicit VR little endian), SOP class and instance,
    modality, patient and 16-bit unsigned greyscale pixel description: the part every test
    DICOM file shares; callers add geometry and pixel data."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = instance_uid or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID = modality, patient_id
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    return ds


def write_dicom_series(folder: Path, slices: int, slope: float = 2.0, intercept: float = -1024.0,
                       rows: int = 4, cols: int = 6, modality: str = "CT", first_z: float = 30.0,
                       spacing_z: float = 2.5) -> np.ndarray:
    """Write one CT/MR series (uint16 stored values) with pydicom; returns the stored values (z, y, x)."""
    from pydicom.uid import CTImageStorage, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    sop_class = CTImageStorage if modality == "CT" else MRImageStorage
    series, study, frame = generate_uid(), generate_uid(), generate_uid()
    stored = (np.arange(slices * rows * cols, dtype=np.uint16).reshape(slices, rows, cols) * 7 + 3)
    for k in range(slices):
        ds = dicom_dataset(sop_class, modality, "TEST")
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-10.0, 20.0, first_z + spacing_z * k]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.7, 0.9]  # row spacing (y), column spacing (x)
        ds.SliceThickness = spacing_z
        ds.Rows, ds.Columns = rows, cols
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        ds.PixelData = stored[k].tobytes()
        # file names in reverse order, so sorting by name alone would stack the slices wrongly
        ds.save_as(folder / f"{series[-6:]}-{slices - k:03d}.dcm", enforce_file_format=True)
    return stored
