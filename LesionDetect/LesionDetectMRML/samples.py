"""Small synthetic studies with a matching Prediction, made locally and deterministically.

They drive the module's sample data, its self-test and the adapter tests without a network
or trained weights.  Each study is a scalar image with an asymmetric, anisotropic, oblique
geometry (so any axis or sign mix-up shows) and lesions of known position; the Prediction
holds what a detector would return for it: a probability map, the thresholded mask, lesion
points, boxes and class probabilities.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from LesionDetectLib.geometry import Geometry
from LesionDetectLib.prediction import ClassResult, LesionBox, LesionPoint, Prediction, Provenance

# kind -> (modality, method, background value, organ value, lesion value, class names)
KINDS = {
    "bone-ct": ("CT", "bone-ct-patch", -800.0, 700.0, 150.0, ("no metastasis", "metastasis")),
    "flair": ("MR", "ms-flair-fcn", 0.0, 300.0, 650.0, ("no lesion", "ms lesion")),
    "liver": ("CT", "liver-frcnn", -900.0, 60.0, 5.0, ("no tumour", "liver tumour")),
}
THRESHOLD = 0.5


@dataclass
class SampleStudy:
    kind: str
    modality: str
    image: sitk.Image
    prediction: Prediction


def oblique_geometry(size=(28, 24, 10), spacing=(0.8, 1.15, 2.5), origin=(-31.7, 12.4, 55.3),
                     angle_deg: float = 17.0) -> Geometry:
    """An anisotropic grid rotated about an oblique axis (det +1), origin off-centre."""
    axis = np.array([0.3, -0.5, 0.81])
    axis /= np.linalg.norm(axis)
    rotation = sitk.VersorTransform(tuple(axis), np.deg2rad(angle_deg)).GetMatrix()
    return Geometry(size, spacing, origin, rotation)


def make_study(kind: str = "bone-ct", seed: int = 0, geometry: Geometry | None = None) -> SampleStudy:
    """A synthetic study of `kind` (see KINDS) with 2-3 lesions and the Prediction for it."""
    if kind not in KINDS:
        raise ValueError(f"unknown sample kind {kind!r}; choose from {', '.join(KINDS)}")
    modality, method, background, organ, lesion, class_names = KINDS[kind]
    rng = np.random.default_rng(seed)
    geometry = geometry or oblique_geometry()
    nz, ny, nx = geometry.shape
    k, j, i = np.meshgrid(np.arange(nz), np.arange(ny), np.arange(nx), indexing="ij")
    voxels_lps = geometry.index_to_lps(np.stack([i, j, k], axis=-1).reshape(-1, 3)).reshape(nz, ny, nx, 3)
    centre = geometry.index_to_lps((np.array(geometry.size) - 1) / 2)
    organ_radii = np.array([nx * geometry.spacing[0], ny * geometry.spacing[1], nz * geometry.spacing[2]]) * 0.42
    organ_mask = (((voxels_lps - centre) / organ_radii) ** 2).sum(-1) <= 1

    n_lesions = 3 if kind != "flair" else 2
    lesion_idx = [np.array([nx * f0, ny * f1, nz * f2]) for f0, f1, f2 in
                  ((0.32, 0.38, 0.45), (0.66, 0.62, 0.55), (0.5, 0.3, 0.6))[:n_lesions]]
    lesion_idx = [np.round(p + rng.uniform(-0.5, 0.5, 3)).astype(int) for p in lesion_idx]
    radius_mm = 3.2
    probability = np.zeros(geometry.shape, dtype=np.float32)
    points, boxes = [], []
    for n, idx in enumerate(lesion_idx):
        position = geometry.index_to_lps(idx)
        dist2 = ((voxels_lps - position) ** 2).sum(-1)
        peak = 0.95 - 0.2 * n
        probability = np.maximum(probability, peak * np.exp(-dist2 / (2 * radius_mm ** 2)))
        points.append(LesionPoint(position, score=peak, label="lesion"))
        blob = np.argwhere(dist2 <= radius_mm ** 2)  # (z, y, x) voxels of this lesion
        lo, hi = blob.min(0)[::-1], blob.max(0)[::-1]
        boxes.append(LesionBox.from_index_range(geometry, lo, hi, score=peak - 0.05, label="lesion",
                                                extra={"synthetic": kind}))
    lesion_mask = probability >= THRESHOLD
    values = np.full(geometry.shape, background, dtype=np.float32)
    values[organ_mask] = organ
    if modality == "CT":  # a bony rim, so the image reads as CT (air and bone) to modality_guess
        values[:, :2, :] = 900.0
    values[lesion_mask] = lesion
    values += rng.normal(0, 8.0, geometry.shape).astype(np.float32)
    image = geometry.image(values.astype(np.int16) if modality == "CT" else values)
    p_lesion = float(probability.max())
    classes = [ClassResult({class_names[0]: 1 - p_lesion, class_names[1]: p_lesion})]
    provenance = Provenance(method=method, model_id=f"synthetic-{kind}", model_version="0",
                            parameters={"threshold": THRESHOLD, "seed": seed}, input=f"synthetic {kind}")
    prediction = Prediction(geometry=geometry, provenance=provenance, probability=probability,
                            mask=lesion_mask, threshold=THRESHOLD, points=points, boxes=boxes, classes=classes)
    return SampleStudy(kind=kind, modality=modality, image=image, prediction=prediction)
