"""spine-ct: axial CT through a few vertebrae with per-slice metastasis labels.

A spine-centred reconstruction of the `anatomy.build_trunk` trunk covering consecutive
vertebrae (body, pedicles, laminae, transverse and spinous processes, ribs at thoracic
levels).  Each vertebra gets a bone-quality class (normal, blastic, mixed, lytic) and a
posterolateral-involvement class (normal, unilateral, bilateral): lytic lesions replace
marrow (and cortex) by soft tissue, blastic ones are dense, mixed vertebrae hold both, and
posterolateral involvement puts a lesion of the same kind into one or both pedicles.

Labels come from what was drawn, slice by slice: in case entry "slices" every axial slice
through a vertebral body has {"index", "vertebra", "bone_quality", "posterolateral"}
(slices through discs are not listed); "vertebrae" gives the per-vertebra classes the
generator intended.  A slice is lytic/blastic when it holds at least `min_lesion_mm2` of
that lesion kind inside the vertebra, mixed when both; posterolateral sides count lesion
behind the vertebral body's back wall left and right of the midline.
Mask: 1 = lytic, 2 = blastic; roi = bone mask; points = lesion centres.
"""

from __future__ import annotations

import numpy as np

from ..geometry import Geometry
from .anatomy import SPINE_U, VERTEBRAE, build_trunk, finish_ct, paint_bone_lesion
from .common import Param, SynthCase, case_id, case_rng, lobulation, point_at_voxel, random_rotation

KIND = "spine-ct"
MODALITY = "CT"
LABELS = {"0": "background", "1": "lytic", "2": "blastic"}
WINDOW = (-400.0, 1200.0)
BONE_QUALITY = ("normal", "blastic", "mixed", "lytic")
POSTEROLATERAL = ("normal", "unilateral", "bilateral")
PARAMS = {
    "p_blastic": Param(0.2, "probability that a vertebra is blastic"),
    "p_mixed": Param(0.15, "probability that a vertebra is mixed"),
    "p_lytic": Param(0.3, "probability that a vertebra is lytic (the rest are normal)"),
    "p_posterolateral": Param(0.5, "probability that a diseased vertebra also involves its pedicles"),
    "min_lesion_mm2": Param(6.0, "lesion area in a slice below which that slice is not labelled with it"),
    "noise_hu": Param(15.0, "CT noise standard deviation in HU before the noise multiplier"),
}
# (z, y, x) size, slice spacing, in-plane spacing
SIZE = {"small": ((16, 64, 64), 4.0, 2.0), "full": ((44, 512, 512), 2.5, 0.6)}
VERTEBRA_STEP = (SPINE_U[1] - SPINE_U[0]) / (len(VERTEBRAE) - 1)


def make_case(seed: int, index: int, size: str, params: dict) -> SynthCase:
    rng, name = case_rng(KIND, seed, index), case_id(KIND, seed, index)
    shape, slice_mm, inplane = SIZE[size]
    spacing = (slice_mm, inplane, inplane)
    covered = shape[0] * slice_mm / VERTEBRA_STEP
    first = int(rng.integers(0, len(VERTEBRAE) - int(np.ceil(covered))))
    u0 = SPINE_U[0] + first * VERTEBRA_STEP - VERTEBRA_STEP * rng.uniform(0.3, 0.6)
    trunk = build_trunk(rng, shape, spacing, u0, enhanced=False, spine_centred=True)
    hu, bone = trunk.hu, trunk.bone
    geometry = Geometry(size=shape[::-1], spacing=spacing[::-1],
                        origin=(-shape[2] * inplane / 2, -shape[1] * inplane / 2, u0 - 900.0))
    labels = np.zeros(shape, np.uint8)
    z_extent = shape[0] * slice_mm
    visible = [v for v in trunk.vertebrae if 0 <= v["center"][0] <= z_extent]
    probabilities = np.array([1.0 - params["p_blastic"] - params["p_mixed"] - params["p_lytic"],
                              params["p_blastic"], params["p_mixed"], params["p_lytic"]])
    probabilities = np.clip(probabilities, 0, None) / np.clip(probabilities, 0, None).sum()
    points, findings, vertebrae = [], [], []
    for v in visible:
        quality = BONE_QUALITY[int(rng.choice(4, p=probabilities))]
        if params["lesion_count"] == 0:
            quality = "normal"
        kinds = {"normal": [], "blastic": ["blastic"], "lytic": ["lytic"], "mixed": ["lytic", "blastic"]}[quality]
        sides = []
        if kinds and rng.random() < params["p_posterolateral"]:
            sides = [int(rng.choice([-1, 1]))] if rng.random() < 0.6 else [-1, 1]
        cz, cy, cx = v["center"]
        for n, kind in enumerate(kinds):  # body lesions; a mixed vertebra has them side by side
            x_range = (-0.45, 0.45) if len(kinds) == 1 else ((-0.5, -0.2), (0.2, 0.5))[n]
            for _ in range(int(rng.integers(1, 3))):
                offset = np.array([rng.uniform(-0.25, 0.25) * v["height"], rng.uniform(-0.4, 0.4) * v["ry"],
                                   rng.uniform(*x_range) * v["rx"]])
                radius = v["rx"] * rng.uniform(0.22, 0.4 if len(kinds) == 1 else 0.3) * params["lesion_size"]
                _lesion(rng, hu, labels, bone, spacing, trunk, np.array(v["center"]) + offset, radius, kind,
                        params, geometry, points, findings, v["name"])
        for side in sides:  # pedicle / posterior-element lesions
            kind = kinds[int(rng.integers(len(kinds)))]
            centre = np.array([cz + 0.15 * v["height"], v["back"] + 0.3 * v["ry"] + 4,
                               cx + side * (0.58 * v["rx"] + 2)])
            _lesion(rng, hu, labels, bone, spacing, trunk, centre, max(0.3 * v["rx"], 5.0) * params["lesion_size"],
                    kind, params, geometry, points, findings, v["name"])
        vertebrae.append({"name": v["name"], "bone_quality": quality,
                          "posterolateral": POSTEROLATERAL[len(sides)]})

    # a later lesion may have covered an earlier one's centre: keep only points inside their lesion
    kept = [(p, f) for p, f in zip(points, findings) if labels[f["center_zyx"]] == (1 if f["type"] == "lytic" else 2)]
    points, findings = [p for p, _ in kept], [f for _, f in kept]
    slices = slice_labels(labels, visible, spacing, params["min_lesion_mm2"])
    for vert in vertebrae:
        vert["slices"] = [s["index"] for s in slices if s["vertebra"] == vert["name"]]
    image = geometry.image(finish_ct(hu, spacing, rng, params["noise_hu"] * params["noise"]))
    return SynthCase(
        id=name, patient=name, image=image, mask=labels, roi=(bone > 0).astype(np.uint8),
        points=points, findings=findings, mask_labels=dict(LABELS),
        entry={"slices": slices, "vertebrae": vertebrae})


def _lesion(rng, hu, labels, bone, spacing, trunk, centre_mm, radius, kind, params, geometry, points, findings,
            vertebra):
    """Draw one lesion centred on the marrow voxel nearest `centre_mm`."""
    zyx = tuple(int(round(c / s)) for c, s in zip(centre_mm, spacing))
    if not all(0 <= i < n for i, n in zip(zyx, hu.shape)) or bone[zyx] <= 0:
        return
    radius = max(radius, 1.2 * spacing[1])
    centre = np.asarray(zyx, float) * spacing
    if kind == "lytic":
        target = max(trunk.marrow_hu - params["contrast"] * rng.uniform(0.5, 1.0) * (trunk.marrow_hu - 30), -80)
    else:
        target = trunk.marrow_hu + params["contrast"] * rng.uniform(350, 900)
    code = 1 if kind == "lytic" else 2
    took = paint_bone_lesion(hu, labels, bone, spacing, centre, radius * rng.uniform(0.8, 1.2, 3),
                             random_rotation(rng), lobulation(rng, 0.15), target, code, rng=rng)
    if took and labels[zyx] == code:
        findings.append({"type": kind, "vertebra": vertebra, "center_zyx": zyx, "radius_mm": float(radius),
                         "target_hu": float(target)})
        points.append(point_at_voxel(geometry, zyx, label=kind))


def slice_labels(labels, vertebrae, spacing, min_mm2) -> list[dict]:
    """Per-slice labels from the drawn lesion mask, for every slice through a vertebral body."""
    min_voxels = max(1, int(np.ceil(min_mm2 / (spacing[1] * spacing[2]))))
    out = []
    for k in range(labels.shape[0]):
        z = k * spacing[0]
        owner = [v for v in vertebrae if abs(z - v["center"][0]) <= v["height"] / 2]
        if not owner:
            continue
        v = owner[0]
        # this vertebra's neighbourhood in the slice: within reach of its body centre
        _, cy, cx = v["center"]
        ys = (np.arange(labels.shape[1]) * spacing[1] - cy)[:, None]
        xs = (np.arange(labels.shape[2]) * spacing[2] - cx)[None, :]
        near = (np.abs(xs) < v["rx"] + 30) & (ys > -v["ry"] - 5) & (ys < v["ry"] + 70)
        lesion = labels[k] * near
        lytic = int((lesion == 1).sum()) >= min_voxels
        blastic = int((lesion == 2).sum()) >= min_voxels
        quality = "mixed" if lytic and blastic else "lytic" if lytic else "blastic" if blastic else "normal"
        behind = (lesion > 0) & (ys > v["back"] - cy)
        sides = sum(int((behind & (xs * side > 0)).sum()) >= min_voxels for side in (-1, 1))
        out.append({"index": k, "vertebra": v["name"], "bone_quality": quality,
                    "posterolateral": POSTEROLATERAL[sides]})
    return out
