"""Body parts shared by the CT generators (bone-ct, liver-ct, spine-ct).

All positions are array millimetres (z, y, x) as in `common`: y grows towards the patient's
back (posterior) and x towards the patient's left, so the image shows the patient the
radiological way (patient's right on the image's left).  Bones are painted into a volume
of "cortex units" (depth in mm divided by the local cortical thickness): > 0 is bone,
0..1 cortex, > 1 marrow; every other organ into its own depth volume or straight into the
HU image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .common import (OUTSIDE, blur_mm, capsule_depth, coarse_noise, ellipsoid_depth, lobulation, paint_max,
                     paint_polyline,
                     random_rotation, region, smooth_noise, smoothstep)


def elliptic_cylinder_depth(shape, spacing, center, rz, ry, rx):
    """(slices, depth mm) of an upright elliptic cylinder with flat ends (a vertebral body)."""
    reg = region(shape, spacing, center, (rz + spacing[0], ry + spacing[1], rx + spacing[2]))
    if reg is None:
        return None
    sl, (gz, gy, gx) = reg
    q = np.sqrt((gy / ry) ** 2 + (gx / rx) ** 2)
    radial = (1.0 - q) * min(ry, rx)
    axial = rz - np.abs(gz)
    return sl, np.minimum(radial, axial).astype(np.float32)


def paint_bone(cortex_units: np.ndarray, res, cortex_mm: float) -> None:
    """Merge one bone primitive (slices, depth mm) into the cortex-unit volume."""
    if res is not None:
        sl, depth = res
        paint_max(cortex_units, sl, depth / np.float32(cortex_mm))


def body_depth(shape, spacing, center_yx, semi_lr, semi_ap) -> np.ndarray:
    """Depth (mm) inside an elliptic trunk whose semi-axes vary per slice (arrays of length nz)."""
    nz, ny, nx = shape
    y = (np.arange(ny, dtype=np.float32) * spacing[1] - center_yx[0])[None, :, None]
    x = (np.arange(nx, dtype=np.float32) * spacing[2] - center_yx[1])[None, None, :]
    a = np.asarray(semi_lr, np.float32)[:, None, None]
    b = np.asarray(semi_ap, np.float32)[:, None, None]
    q = np.sqrt((x / a) ** 2 + (y / b) ** 2)
    return ((1.0 - q) * np.minimum(a, b)).astype(np.float32)


def draw_vertebra(cortex_units, spacing, center, rx, ry, height, cortex_mm, posterior=True, rng=None):
    """A vertebra: body (elliptic cylinder) centred at `center`, pedicles, laminae,
    transverse and spinous processes behind it.  Returns the y (mm) of the body's back wall,
    where the posterior elements start."""
    shape = cortex_units.shape
    cz, cy, cx = center
    paint_bone(cortex_units, elliptic_cylinder_depth(shape, spacing, center, height / 2, ry, rx), cortex_mm)
    back = cy + ry
    if not posterior:
        return back
    jitter = (lambda s: rng.normal(0, s)) if rng is not None else (lambda s: 0.0)
    canal = 0.55 * rx + 3
    pz = cz + 0.15 * height
    r_ped = max(0.22 * rx, 3.0)
    for side in (-1, 1):
        # pedicles and laminae are tall plates, drawn as two stacked tubes
        for level in (pz, pz - 0.25 * height):
            ped0 = (level, back - 0.25 * ry, cx + side * 0.6 * rx)
            ped1 = (level, back + 0.45 * ry + 6, cx + side * canal)
            paint_bone(cortex_units, capsule_depth(shape, spacing, ped0, ped1, r_ped, r_ped), cortex_mm)
            lamina = (level - 0.1 * height, ped1[1] + 0.5 * ry + 6, cx)
            paint_bone(cortex_units, capsule_depth(shape, spacing, ped1, lamina, r_ped * 0.8, 3.5), cortex_mm)
        ped1 = (pz, back + 0.45 * ry + 6, cx + side * canal)
        transverse = (pz + jitter(1.0), ped1[1] + 4, cx + side * (rx + 18 + jitter(2.0)))
        paint_bone(cortex_units, capsule_depth(shape, spacing, ped1, transverse, r_ped * 0.9, 3.0), cortex_mm)
    lamina = (pz - 0.1 * height, back + 0.95 * ry + 12, cx)
    spinous = (pz - 0.45 * height, lamina[1] + 0.9 * ry + 10, cx + jitter(1.5))
    paint_bone(cortex_units, capsule_depth(shape, spacing, lamina, spinous, 4.0, 3.0), cortex_mm)
    return back


def draw_rib(cortex_units, spacing, origin_zyx, side, semi_lr, semi_ap, body_center_yx, drop, extent, radius,
             cortex_mm):
    """A rib from beside the vertebra around the chest wall, sloping down towards the front.

    The rib follows an ellipse (semi_lr, semi_ap) about the trunk centre; `extent` (radians)
    is how far round it goes from the back (floating ribs are short)."""
    cz = origin_zyx[0]
    cy, cx = body_center_yx
    phi = np.linspace(0.5, 0.5 + extent, 14)
    ys = cy + semi_ap * np.cos(phi)
    xs = cx + side * semi_lr * np.sin(phi)
    zs = cz - drop * (phi - phi[0]) / (phi[-1] - phi[0])
    pts = np.stack([zs, ys, xs], axis=1)
    # start at the transverse process, then join the arc
    pts = np.vstack([np.asarray(origin_zyx, float)[None], pts])
    radii = np.full(len(pts), radius, np.float32)
    radii[0] = radius * 0.8
    paint_polyline(cortex_units, spacing, pts, radii, scale=1.0 / cortex_mm)


def draw_ellipsoid_bone(cortex_units, spacing, center, radii, cortex_mm, rotation=None):
    paint_bone(cortex_units, ellipsoid_depth(cortex_units.shape, spacing, center, radii, rotation), cortex_mm)


def rotation_z(angle: float) -> np.ndarray:
    """Rotation about the cranio-caudal axis, as a (z, y, x)-ordered matrix."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]], np.float32)


def rotation_x(angle: float) -> np.ndarray:
    """Rotation about the left-right axis (tilts a shape forwards/backwards)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]], np.float32)


# --- the trunk: body, organs and skeleton from mid-thigh to the neck ---------------------------
TRUNK_LENGTH = 700.0  # mm from mid-thigh (u = 0) to the lower neck
LEVELS_U = np.array([0, 120, 170, 230, 300, 380, 450, 520, 600, 660, 700], float)
SEMI_LR = np.array([0, 0, 168, 166, 150, 146, 152, 158, 164, 168, 150], float)  # trunk half-width
SEMI_AP = np.array([0, 0, 112, 110, 104, 104, 110, 116, 118, 112, 95], float)   # trunk half-depth
VERTEBRAE = ["L5", "L4", "L3", "L2", "L1"] + [f"T{n}" for n in range(12, 0, -1)]
SPINE_U = (255.0, 690.0)  # centres of L5 and T1
SPINE_OFFSET_Y = 28.0  # vertebral body centres lie this far behind the trunk's centre (mm)
LIVER, LUNG, HEART = 1, 2, 3  # organ ids whose masks a generator needs


@dataclass
class Trunk:
    """A painted trunk before lesions, blur and noise: HU image (float32), bone in cortex
    units, organ masks and the tissue values a lesion is drawn against."""

    hu: np.ndarray
    bone: np.ndarray
    organs: dict[str, np.ndarray]
    marrow_hu: float
    cortex_hu: float
    fat_hu: float
    center_yx: tuple[float, float]
    vertebrae: list[dict]


def _trunk_semiaxes(u, scale):
    return scale * np.interp(u, LEVELS_U, SEMI_LR), scale * np.interp(u, LEVELS_U, SEMI_AP)


def vertebra_levels(rng, scale):
    """Centre u, half-size (rx, ry) and height of L5..T1, L5 largest."""
    us = np.linspace(*SPINE_U, len(VERTEBRAE))
    step = us[1] - us[0]
    out = []
    for n, (name, u) in enumerate(zip(VERTEBRAE, us)):
        frac = n / (len(VERTEBRAE) - 1)
        rx = scale * (25 - 11 * frac) * rng.uniform(0.95, 1.05)
        out.append({"name": name, "u": float(u), "rx": float(rx), "ry": float(rx * rng.uniform(0.72, 0.8)),
                    "height": float(step * 0.78)})
    return out


def build_trunk(rng: np.random.Generator, shape, spacing, u0: float, enhanced: bool,
                liver_hu: float = 55.0, spine_centred: bool = False) -> Trunk:
    """Paint a trunk whose slice k sits at trunk height u = u0 + k * spacing_z.

    `enhanced` gives contrast-phase blood, kidneys and spleen (abdominal CT); otherwise the
    native values of a low-dose whole-body scan.
    """
    nz, ny, nx = shape
    sz, sy, sx = spacing
    scale = rng.uniform(0.9, 1.06)
    cy = ny * sy / 2 + rng.normal(0, 4) - (SPINE_OFFSET_Y * scale if spine_centred else 0.0)
    cx = nx * sx / 2 + rng.normal(0, 4)
    u = u0 + np.arange(nz) * sz
    a, b = _trunk_semiaxes(u, scale)
    zmm = lambda uu: uu - u0  # noqa: E731  trunk height -> array mm
    min_px = min(sy, sx)

    # body outline: the trunk ellipse, two thighs below the crotch
    body = body_depth(shape, spacing, (cy, cx), np.maximum(a, 1.0), np.maximum(b, 1.0))
    body[u < LEVELS_U[2]] = -1e4
    low = np.flatnonzero(u < 185)
    if low.size:
        yy = (np.arange(ny, dtype=np.float32) * sy - cy)[:, None]
        xx = np.arange(nx, dtype=np.float32) * sx
        for side in (-1, 1):
            r = scale * 82
            d = r - np.sqrt(yy ** 2 + (xx - (cx + side * scale * 88)) ** 2)
            body[low] = np.maximum(body[low], d[None])
    fat_mm = rng.uniform(8, 28) * scale
    fat_hu = float(rng.normal(-100, 6))
    hu = np.full(shape, -1000.0, np.float32)
    inside = body > 0
    # interior: muscle / bowel / mesenteric fat mixed at a scale of a few centimetres
    interior = np.clip(20.0 + coarse_noise(rng, shape, spacing, 14.0, 55.0), fat_hu, 55.0)
    hu[inside] = np.where(body[inside] < fat_mm, fat_hu, interior[inside])
    del interior
    del body

    owner = np.zeros(shape, np.uint8)  # which organ painted each voxel last (0 = none)

    def paint(center_u, y, x, radii, value, rotation=None, lobes=None, organ=255, keep=0):
        """Fill an organ into the body's interior (never into air or subcutaneous fat)."""
        res = ellipsoid_depth(shape, spacing, (zmm(center_u), y, x), radii, rotation, lobes)
        if res is None:
            return
        sl, d = res
        m = (d > 0) & (hu[sl] > -500) & ((hu[sl] != np.float32(fat_hu)) | (owner[sl] > 0))
        if keep:
            m &= owner[sl] != keep
        hu[sl][m] = value
        owner[sl][m] = organ

    blood = 170.0 if enhanced else 40.0
    # abdominal contents: visceral fat pockets and bowel loops
    for _ in range(int(rng.integers(10, 20))):
        uu = rng.uniform(190, 420)
        y = cy - rng.uniform(-0.1, 0.7) * np.interp(uu, LEVELS_U, SEMI_AP) * scale
        x = cx + rng.uniform(-0.6, 0.6) * np.interp(uu, LEVELS_U, SEMI_LR) * scale
        r = rng.uniform(10, 26, 3)
        choice = rng.random()
        value = fat_hu if choice < 0.4 else (-950.0 if choice < 0.6 else rng.uniform(10, 35))
        paint(uu, y, x, r, value, random_rotation(rng))
    paint(200, cy - 0.35 * b.mean(), cx, (35 * scale, 35 * scale, 45 * scale), 8.0)  # bladder
    # liver: right lobe high in the right upper quadrant, left lobe tapering across the midline in front
    paint(435, cy - 8, cx - 82 * scale, (75 * scale, 70 * scale, 62 * scale), liver_hu,
          rotation_z(rng.normal(0, 0.1)), lobulation(rng, 0.06), organ=LIVER)
    paint(455, cy - 45 * scale, cx - 10 * scale, (40 * scale, 30 * scale, 60 * scale), liver_hu,
          rotation_z(0.25), lobulation(rng, 0.06), organ=LIVER)
    paint(440, cy + 45 * scale, cx + 88 * scale, (50 * scale, 42 * scale, 26 * scale),
          115.0 if enhanced else 45.0, rotation_z(0.5))  # spleen
    paint(455, cy - 35 * scale, cx + 55 * scale, (38 * scale, 38 * scale, 42 * scale), 15.0)  # stomach
    paint(470, cy - 55 * scale, cx + 55 * scale, (12, 18, 26), -950.0)  # gastric air
    for side in (-1, 1):
        paint(370 + side * 8, cy + 52 * scale, cx + side * 70 * scale, (52 * scale, 30, 24),
              160.0 if enhanced else 33.0, rotation_z(side * 0.45))  # kidneys
    paint(555, cy - 28 * scale, cx + 18 * scale, (58, 52 * scale, 62 * scale), blood, organ=HEART)  # heart
    for side in (-1, 1):
        paint(605, cy - 2, cx + side * 78 * scale, (125, 88 * scale, 62 * scale), -850.0, organ=LUNG,
              keep=HEART)
    lungs = owner == LUNG
    hu[lungs] += smooth_noise(rng, shape, (0.8, 1.2, 1.2), 35.0)[lungs]

    # skeleton, in cortex units
    bone = np.full(shape, OUTSIDE, np.float32)
    cort = lambda mm: max(mm, 0.6 * min_px)  # noqa: E731  a cortex thinner than a voxel vanishes
    vertebrae = vertebra_levels(rng, scale)
    aorta, ivc = [], []
    for v in vertebrae:
        ay, bx = _trunk_semiaxes(v["u"], scale)
        body_y = cy + SPINE_OFFSET_Y * scale + 10 * np.sin((v["u"] - 250) / 450 * np.pi)
        center = (zmm(v["u"]), body_y, cx)
        v["center"] = center
        v["back"] = draw_vertebra(bone, spacing, center, v["rx"], v["ry"], v["height"], cort(1.0), rng=rng)
        aorta.append((zmm(v["u"]), body_y - v["ry"] - 12, cx + 14))
        ivc.append((zmm(v["u"]), body_y - v["ry"] - 10, cx - 24))
        if v["name"].startswith("T"):
            level = int(v["name"][1:])
            extent = 2.45 if level <= 7 else (2.15 if level <= 10 else 1.3)
            for side in (-1, 1):
                origin = (zmm(v["u"]) + 4, v["back"] + 10, cx + side * (v["rx"] + 14))
                draw_rib(bone, spacing, origin, side, ay - 20, bx - 14, (cy, cx), rng.uniform(40, 65), extent,
                         scale * rng.uniform(4.2, 5.2), cort(1.0))
    for lower, upper in zip(vertebrae[:-1], vertebrae[1:]):  # intervertebral discs (soft tissue, ~80 HU)
        centre = tuple((np.asarray(lower["center"]) + np.asarray(upper["center"])) / 2)
        gap = upper["center"][0] - lower["center"][0] - (lower["height"] + upper["height"]) / 2
        res = elliptic_cylinder_depth(shape, spacing, centre, gap / 2 + 1.0, (lower["ry"] + upper["ry"]) / 2,
                                      (lower["rx"] + upper["rx"]) / 2)
        if res is not None:
            hu[res[0]][res[1] > 0] = 80.0
    for line, r, top in ((aorta, 11 * scale, 620), (ivc, 10 * scale, 480)):
        pts = np.array([p for p, v in zip(line, vertebrae) if v["u"] <= top])
        if len(pts) > 1:
            tube = np.full(shape, OUTSIDE, np.float32)
            paint_polyline(tube, spacing, pts, np.full(len(pts), r))
            hu[(tube > 0) & (bone <= 0)] = blood
            del tube
    a_pelvis, b_pelvis = _trunk_semiaxes(200, scale)
    sac_y = cy + b_pelvis * 0.55
    draw_ellipsoid_bone(bone, spacing, (zmm(215), sac_y, cx), (45 * scale, 17, 40 * scale), cort(1.2),
                        rotation_x(0.35))
    for side in (-1, 1):
        hip = (zmm(168), cy + 4, cx + side * 0.52 * a_pelvis)
        draw_ellipsoid_bone(bone, spacing, (zmm(232), cy + 0.3 * b_pelvis, cx + side * 0.55 * a_pelvis),
                            (52 * scale, 11, 46 * scale), cort(1.5), rotation_z(side * 0.6))  # iliac wing
        draw_ellipsoid_bone(bone, spacing, hip, (26 * scale,) * 3, cort(1.5))  # acetabulum + femoral head
        paint_bone(bone, capsule_depth(shape, spacing, hip, (zmm(178), cy - 0.62 * b_pelvis, cx + side * 12),
                                       10 * scale, 8 * scale), cort(1.5))  # pubis
        paint_bone(bone, capsule_depth(shape, spacing, hip, (zmm(122), cy + 0.3 * b_pelvis,
                                                             cx + side * 0.36 * a_pelvis), 12 * scale, 10 * scale),
                   cort(1.5))  # ischium
        trochanter = (zmm(150), cy + 10, cx + side * 0.7 * a_pelvis)
        paint_bone(bone, capsule_depth(shape, spacing, hip, trochanter, 15 * scale, 17 * scale), cort(2.0))
        paint_bone(bone, capsule_depth(shape, spacing, trochanter, (zmm(-40), cy + 6, cx + side * 0.56 * a_pelvis),
                                       14 * scale, 13 * scale), cort(4.5))  # femoral shaft
        a_sh, b_sh = _trunk_semiaxes(655, scale)
        draw_ellipsoid_bone(bone, spacing, (zmm(640), cy + 0.72 * b_sh, cx + side * 0.55 * a_sh),
                            (55, 7, 42 * scale), cort(1.5), rotation_z(-side * 0.55))  # scapula
        paint_polyline(bone, spacing, np.array([(zmm(688), cy - b_sh + 22, cx + side * 14),
                                                (zmm(694), cy - 0.55 * b_sh, cx + side * 0.5 * a_sh),
                                                (zmm(700), cy - 0.15 * b_sh, cx + side * 0.85 * a_sh)]),
                       np.full(3, 7.0 * scale), scale=1.0 / cort(1.5))  # clavicle
    a_st, b_st = _trunk_semiaxes(620, scale)
    paint_bone(bone, capsule_depth(shape, spacing, (zmm(680), cy - b_st + 20, cx), (zmm(555), cy - b_st + 14, cx),
                                   9 * scale, 8 * scale), cort(1.2))  # sternum

    marrow_hu = float(rng.uniform(170, 320))
    cortex_hu = float(rng.uniform(750, 1250))
    is_bone = bone > 0
    texture = smooth_noise(rng, shape, (0.6, 1.2, 1.2), 1.0)
    hu = np.where(is_bone, np.where(bone > 1, marrow_hu + 45 * texture, cortex_hu * (1 + 0.06 * texture)), hu)
    organs = {"liver": (owner == LIVER) & ~is_bone, "lungs": lungs & ~is_bone}
    return Trunk(hu=hu.astype(np.float32), bone=bone, organs=organs, marrow_hu=marrow_hu, cortex_hu=cortex_hu,
                 fat_hu=fat_hu, center_yx=(cy, cx), vertebrae=vertebrae)


def paint_bone_lesion(hu, labels, bone, spacing, center, radii, rotation, lobes, target_hu, code,
                      texture_std: float = 15.0, rng=None) -> int:
    """Replace bone (marrow and any cortex it reaches) inside a blob by `target_hu`, with a
    soft 1 mm edge; label the blob's bone voxels `code`.  Returns how many voxels it took."""
    res = ellipsoid_depth(hu.shape, spacing, center, radii, rotation, lobes)
    if res is None:
        return 0
    sl, d = res
    in_bone = bone[sl] > 0
    weight = smoothstep(-0.7, 0.7, d) * in_bone
    value = np.float32(target_hu)
    if rng is not None and texture_std > 0:
        value = value + rng.normal(0, texture_std, size=d.shape).astype(np.float32)
    region_hu = hu[sl]
    region_hu += weight * (value - region_hu)
    inside = (d > 0) & in_bone
    labels[sl][inside] = code
    return int(inside.sum())


def finish_ct(hu: np.ndarray, spacing, rng: np.random.Generator, noise_hu: float) -> np.ndarray:
    """Scanner blur (partial volume), correlated quantum noise, int16 HU as CT stores them."""
    sz, sy, sx = spacing
    hu = blur_mm(hu, spacing, (0.3 * sz, max(0.45, 0.3 * sy), max(0.45, 0.3 * sx)))
    hu += smooth_noise(rng, hu.shape, (0.0, 0.7, 0.7), noise_hu)
    return np.clip(np.rint(hu), -1024, 3071).astype(np.int16)
