"""bone-ct: whole-body-like low-dose CT with osteolytic (and a few sclerotic) bone lesions.

Anatomy comes from `anatomy.build_trunk` (body, fat, organs, lungs, vertebrae, ribs,
pelvis, femora, scapulae, clavicles, sternum; cortical shells around trabecular marrow).
The scan covers a random stretch of the trunk.  Lesions are lobulated ellipsoids centred
in marrow; an osteolytic lesion replaces marrow, and any cortex it reaches, by
soft-tissue-like attenuation, a sclerotic one raises it.  Ground truth: lesion mask
(1 = osteolytic, 2 = sclerotic), bone mask (`roi`), one point per lesion at its centre
voxel (always inside the bone mask and inside that lesion).
"""

from __future__ import annotations

import numpy as np

from ..geometry import Geometry
from .anatomy import TRUNK_LENGTH, build_trunk, finish_ct, paint_bone_lesion
from .common import (Param, SynthCase, case_id, case_rng, lobulation, log_uniform, overlaps, point_at_voxel,
                     random_rotation)

KIND = "bone-ct"
MODALITY = "CT"
LABELS = {"0": "background", "1": "osteolytic", "2": "sclerotic"}
WINDOW = (-400.0, 1200.0)
PARAMS = {
    "lesions_mean": Param(6.0, "mean number of lesions per case (Poisson, at least 1)"),
    "diameter_min_mm": Param(3.0, "smallest lesion diameter"),
    "diameter_max_mm": Param(20.0, "largest lesion diameter (sizes are log-uniform)"),
    "sclerotic_fraction": Param(0.15, "share of sclerotic lesions"),
    "noise_hu": Param(18.0, "CT noise standard deviation in HU before the noise multiplier"),
    "slice_mm": Param(0.0, "slice spacing in mm (0 = drawn per case from 2, 3, 4, 5 at full size)"),
}
SIZE = {"small": ((16, 64, 64), (6.4, 6.4)), "full": ((100, 512, 512), (0.8, 0.8))}


def make_case(seed: int, index: int, size: str, params: dict) -> SynthCase:
    rng, name = case_rng(KIND, seed, index), case_id(KIND, seed, index)
    shape, inplane = SIZE[size]
    slice_mm = params["slice_mm"] or (float(rng.choice([2.0, 3.0, 4.0, 5.0])) if size == "full" else 12.0)
    spacing = (slice_mm, *inplane)
    length = shape[0] * slice_mm
    u0 = float(rng.uniform(0, max(TRUNK_LENGTH - length, 0)))
    trunk = build_trunk(rng, shape, spacing, u0, enhanced=False)
    hu, bone = trunk.hu, trunk.bone
    labels = np.zeros(shape, np.uint8)
    geometry = Geometry(size=shape[::-1], spacing=spacing[::-1],
                        origin=(-shape[2] * inplane[1] / 2, -shape[1] * inplane[0] / 2, u0 - 900.0))

    count = 0 if params["lesion_count"] == 0 else max(1, int(rng.poisson(params["lesions_mean"] *
                                                                           params["lesion_count"])))
    # lesion centres: marrow at least 1 mm deeper than the cortex
    marrow = np.flatnonzero(bone > 1.5)
    points, findings = [], []
    r_floor = 1.0 * max(inplane)  # a lesion must cover a few voxels even on coarse grids
    for _ in range(count * 20):
        if len(findings) == count or marrow.size == 0:
            break
        zyx = np.unravel_index(marrow[rng.integers(marrow.size)], shape)
        center = np.asarray(zyx, float) * spacing
        diameter = log_uniform(rng, params["diameter_min_mm"], params["diameter_max_mm"])
        radius = max(diameter / 2 * params["lesion_size"], r_floor)
        radii = radius * rng.uniform(0.75, 1.25, 3)
        amplitude = rng.uniform(0.1, 0.25)
        reach = float(radii.max()) * (1 + amplitude) + 1.0  # no two lesions may touch
        if overlaps(findings, center, reach):
            continue
        sclerotic = rng.random() < params["sclerotic_fraction"]
        if sclerotic:
            target = trunk.marrow_hu + params["contrast"] * rng.uniform(300, 800)
        else:
            target = max(trunk.marrow_hu - params["contrast"] * rng.uniform(0.35, 1.0) * (trunk.marrow_hu - 30), -80)
        code = 2 if sclerotic else 1
        took = paint_bone_lesion(hu, labels, bone, spacing, center, radii, random_rotation(rng),
                                 lobulation(rng, amplitude), target, code, rng=rng)
        if took == 0 or labels[zyx] != code:
            continue
        sl = tuple(slice(max(int(c - reach / s), 0), int(c + reach / s) + 1) for c, s in zip(zyx, spacing))
        touches_cortex = bool(np.any((labels[sl] == code) & (bone[sl] <= 1)))
        kind = "sclerotic" if sclerotic else "osteolytic"
        findings.append({"type": kind, "center_zyx": tuple(int(v) for v in zyx), "center_mm": center,
                         "reach_mm": reach, "radius_mm": float(radius), "target_hu": float(target),
                         "touches_cortex": touches_cortex})
        points.append(point_at_voxel(geometry, zyx, label=kind))

    image = geometry.image(finish_ct(hu, spacing, rng, params["noise_hu"] * params["noise"]))
    for f in findings:
        del f["center_mm"], f["reach_mm"]
    return SynthCase(
        id=name, patient=name, image=image, mask=labels, roi=(bone > 0).astype(np.uint8),
        points=points, findings=findings, mask_labels=dict(LABELS),
        entry={"slice_mm": slice_mm, "trunk_mm": [round(u0, 1), round(u0 + length, 1)]})
