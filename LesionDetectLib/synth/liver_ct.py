"""liver-ct: contrast-enhanced abdominal CT with hypo- and hyperdense liver lesions.

The trunk of `anatomy.build_trunk` in portal-venous phase (bright aorta, kidneys, spleen),
scanned over the liver.  Lesions are lobulated ellipsoids, 5-50 mm, inside the liver: most
hypodense (metastases, cysts), some hyperdense.  Ground truth: lesion mask (1 = hypodense,
2 = hyperdense), liver mask (`roi`), one 3-D box per lesion (ROI markups) and a
DeepLesion-style key slice per lesion in dataset.json: {"slice": k, "box": [x0, y0, x1, y1],
"lesion": n} where k is the axial slice with the lesion's largest area and the box is in
pixel-edge coordinates of that slice (column i spans [i, i + 1), so x1 = last column + 1),
`lesion` the 1-based number of the 3-D box.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..geometry import Geometry
from .anatomy import build_trunk, finish_ct
from .common import (OUTSIDE, Param, SynthCase, case_id, case_rng, ellipsoid_depth, instance_boxes, lobulation,
                     log_uniform, overlaps, paint_polyline, point_at_voxel, random_rotation, smoothstep)

KIND = "liver-ct"
MODALITY = "CT"
LABELS = {"0": "background", "1": "hypodense lesion", "2": "hyperdense lesion"}
WINDOW = (-160.0, 240.0)
PARAMS = {
    "lesions_mean": Param(3.0, "mean number of liver lesions per case (Poisson, at least 1)"),
    "diameter_min_mm": Param(5.0, "smallest lesion diameter"),
    "diameter_max_mm": Param(50.0, "largest lesion diameter (log-uniform)"),
    "hyperdense_fraction": Param(0.25, "share of hyperdense lesions"),
    "liver_hu": Param(58.0, "liver attenuation (enhanced parenchyma)"),
    "lesion_delta_hu": Param(35.0, "typical |lesion - liver| difference in HU at contrast 1"),
    "noise_hu": Param(14.0, "CT noise standard deviation in HU before the noise multiplier"),
    "slice_mm": Param(0.0, "slice spacing in mm (0 = drawn per case from 2.5, 3, 5 at full size)"),
}
SIZE = {"small": ((16, 64, 64), (6.4, 6.4)), "full": ((80, 512, 512), (0.8, 0.8))}
LIVER_CENTRE_U = 430.0


def make_case(seed: int, index: int, size: str, params: dict) -> SynthCase:
    rng, name = case_rng(KIND, seed, index), case_id(KIND, seed, index)
    shape, inplane = SIZE[size]
    slice_mm = params["slice_mm"] or (float(rng.choice([2.5, 3.0, 5.0])) if size == "full" else 10.0)
    spacing = (slice_mm, *inplane)
    length = shape[0] * slice_mm
    u0 = LIVER_CENTRE_U - length / 2 + rng.normal(0, 10)
    trunk = build_trunk(rng, shape, spacing, u0, enhanced=True, liver_hu=params["liver_hu"])
    hu, liver = trunk.hu, trunk.organs["liver"]
    paint_vessels(rng, hu, liver, spacing)
    geometry = Geometry(size=shape[::-1], spacing=spacing[::-1],
                        origin=(-shape[2] * inplane[1] / 2, -shape[1] * inplane[0] / 2, u0 - 900.0))

    # depth inside the liver (mm), on the liver's bounding box only
    depth = np.zeros(shape, np.float32)
    box = ndimage.find_objects(liver.astype(np.uint8))
    if box:
        depth[box[0]] = ndimage.distance_transform_edt(liver[box[0]], sampling=spacing)
    count = 0 if params["lesion_count"] == 0 else max(1, int(rng.poisson(params["lesions_mean"] *
                                                                           params["lesion_count"])))
    instances = np.zeros(shape, np.uint8)
    mask = np.zeros(shape, np.uint8)
    findings, points = [], []
    r_floor = 1.0 * max(inplane)
    for _ in range(count * 30):
        if len(findings) == count:
            break
        radius = max(log_uniform(rng, params["diameter_min_mm"], params["diameter_max_mm"]) / 2
                     * params["lesion_size"], r_floor)
        # the centre at least 40 % of the radius inside the liver, so most of the lesion is liver
        candidates = np.flatnonzero(depth > max(0.4 * radius, 1.5 * max(spacing)))
        if candidates.size == 0:
            continue
        zyx = tuple(int(v) for v in np.unravel_index(candidates[rng.integers(candidates.size)], shape))
        centre = np.asarray(zyx, float) * spacing
        radii = radius * rng.uniform(0.8, 1.2, 3)
        amplitude = rng.uniform(0.05, 0.18)
        reach = float(radii.max()) * (1 + amplitude) + 2.0
        if overlaps(findings, centre, reach):
            continue
        res = ellipsoid_depth(shape, spacing, centre, radii, random_rotation(rng), lobulation(rng, amplitude))
        if res is None:
            continue
        sl, d = res
        hyper = rng.random() < params["hyperdense_fraction"]
        delta = params["contrast"] * params["lesion_delta_hu"] * rng.uniform(0.45, 1.4) * (1 if hyper else -1)
        in_liver = liver[sl]
        weight = smoothstep(-1.0, 1.0, d) * in_liver
        target = params["liver_hu"] + delta + rng.normal(0, 6, d.shape).astype(np.float32)
        region_hu = hu[sl]
        region_hu += weight * (target - region_hu)
        inside = (d > 0) & in_liver
        n = len(findings) + 1
        instances[sl][inside] = n
        mask[sl][inside] = 2 if hyper else 1
        findings.append({"type": "hyperdense" if hyper else "hypodense", "center_zyx": zyx, "center_mm": centre,
                         "reach_mm": reach, "radius_mm": float(radius), "delta_hu": float(delta)})
        points.append(point_at_voxel(geometry, zyx, label=findings[-1]["type"]))
    for f in findings:
        del f["center_mm"], f["reach_mm"]

    boxes = instance_boxes(geometry, instances, {n: f["type"] for n, f in enumerate(findings, start=1)})
    key_slices = []
    for box in boxes:
        n = box.extra["lesion"]
        area = (instances == n).reshape(shape[0], -1).sum(axis=1)
        k = int(np.argmax(area))
        rows, cols = np.nonzero(instances[k] == n)
        key = {"slice": k, "box": [int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1],
               "lesion": n}
        key_slices.append(key)
        box.extra.update({"key_slice": k, "key_box": key["box"]})
    image = geometry.image(finish_ct(hu, spacing, rng, params["noise_hu"] * params["noise"]))
    return SynthCase(
        id=name, patient=name, image=image, mask=mask, roi=liver.astype(np.uint8), points=points,
        boxes=boxes, findings=findings, mask_labels=dict(LABELS),
        entry={"key_slices": key_slices, "slice_mm": slice_mm})


def paint_vessels(rng, hu, liver, spacing, blood_hu: float = 150.0):
    """Enhanced portal / hepatic vein branches fanning out from the liver hilum."""
    zyx = np.argwhere(liver)
    if len(zyx) == 0:
        return
    hilum = zyx.mean(axis=0) * spacing
    tubes = np.full(liver.shape, OUTSIDE, np.float32)
    for _ in range(int(rng.integers(4, 8))):
        direction = rng.normal(size=3) * np.array([0.5, 1.0, 1.0])
        direction /= np.linalg.norm(direction)
        length = rng.uniform(35, 75)
        bend = rng.normal(0, 8, 3)
        points = np.array([hilum, hilum + direction * length / 2 + bend, hilum + direction * length])
        paint_polyline(tubes, spacing, points, np.array([5.0, 3.2, 1.8]))
    vessels = (tubes > 0) & liver
    hu[vessels] = blood_hu
