"""bone-scan: planar whole-body 99mTc-MDP scintigrams, anterior and posterior.

Activity is painted as a projection: skull, spine, ribs (posterior and anterior arcs),
sternum, clavicles, scapulae, pelvis, limbs and joints add up where they overlap, plus
soft-tissue background, kidneys, a bladder and sometimes the injection site at an elbow.
Normal variation: overall bone uptake, joint (degenerative) uptake, kidney and bladder
activity, patient size.  Positive patients get metastatic hot spots in spine, ribs and
pelvis.  The image is blurred by the collimator and drawn as Poisson counts (uint16).

Cases come in pairs: case 2p is patient p's anterior view, 2p + 1 the posterior view (the
patient's right on the image's left in the anterior view, mirrored in the posterior one);
both carry the patient's "label" (0/1) and "view".  With `view=crop`, every case is instead
a BS-80K-like 8-bit crop of the right hemithorax in anterior view (one per patient), its
label saying whether a hot spot lies inside the crop.  Ground truth: "label", hot-spot mask,
hot-spot centre points (z = 0), and `roi` = the body outline.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from ..prediction import LesionPoint
from .common import (Param, SynthCase, blur_mm, capsule_depth, case_id, case_rng, ellipsoid_depth, log_uniform,
                     smoothstep)

KIND = "bone-scan"
MODALITY = "NM"
LABELS = {"0": "background", "1": "metastatic hot spot"}
WINDOW = None  # per image: 0 .. 99.5th percentile, dark uptake on white as nuclear medicine shows it
PARAMS = {
    "positive_fraction": Param(0.5, "share of patients with metastases"),
    "hotspots_mean": Param(4.0, "mean number of hot spots in a positive patient (Poisson, at least 1)"),
    "hotspot_diameter_min_mm": Param(10.0, "smallest hot spot"),
    "hotspot_diameter_max_mm": Param(40.0, "largest hot spot"),
    "counts_k": Param(1500.0, "total counts of a whole-body view, in thousands (lower = noisier)"),
    "view": Param("whole", "'whole' (anterior + posterior pairs) or 'crop' (BS-80K-like right-chest crops)"),
}
# rows x columns and pixel size (mm) of a whole-body view; crops are cut at CROP_MM
SIZE = {"full": ((646, 220), 2.6), "small": ((160, 56), 10.4)}
CROP_MM = {"full": 1.8, "small": 4.0}
BODY_MM = 1640.0  # head top to soles at scale 1


def make_case(seed: int, index: int, size: str, params: dict) -> SynthCase:
    crop = params["view"] == "crop"
    if params["view"] not in ("whole", "crop"):
        from ..errors import LesionDetectError

        raise LesionDetectError(f"bone-scan view must be 'whole' or 'crop', not {params['view']!r}")
    patient = index if crop else index // 2
    view = "anterior" if crop or index % 2 == 0 else "posterior"
    rng = case_rng(KIND, seed, patient)  # shared by both views of a patient
    patient_id = case_id(KIND, seed, patient).replace(f"_{patient:04d}", f"_p{patient:04d}")
    (rows, cols), pixel = SIZE[size]
    if crop:
        pixel = CROP_MM[size]
        rows, cols = int(round(rows * SIZE[size][1] / pixel)), int(round(cols * SIZE[size][1] / pixel))
    shape, spacing = (rows, cols), (pixel, pixel)
    body = Body(rng, shape, spacing)
    positive = rng.random() < params["positive_fraction"] and params["lesion_count"] > 0
    hotspots = body.metastases(rng, params, right_chest=crop) if positive else []

    noise_rng = case_rng(KIND, seed, index, stream=1)
    activity, mask = body.render(view, hotspots)
    activity = blur_mm(activity, spacing, 4.5)
    total = params["counts_k"] * 1000.0 * (pixel / SIZE["full"][1]) ** 2 * shape[0] * shape[1] / (646 * 220)
    expected = activity * np.float32(total / max(float(activity.sum()), 1e-6))
    if params["noise"] > 0:
        # lower noise multiplier = more counts (count statistics are the noise)
        expected_scaled = expected / np.float32(params["noise"] ** 2)
        counts = noise_rng.poisson(expected_scaled).astype(np.float32) * np.float32(params["noise"] ** 2)
    else:
        counts = expected
    points = [LesionPoint(position=(h["center"][1], h["center"][0], 0.0), label="metastasis")
              for h in hotspots]
    if view == "posterior":
        points = [LesionPoint(position=((cols - 1) * pixel - p.position[0], p.position[1], 0.0),
                              label=p.label) for p in points]
    roi = body.outline(view)
    label = int(positive)
    entry = {"label": label, "view": view}
    if crop:
        sl = body.right_chest_crop()
        counts, mask, roi = counts[sl], mask[sl], roi[sl]
        origin = (sl[1].start * pixel, sl[0].start * pixel)
        points = [LesionPoint(position=(p.position[0] - origin[0], p.position[1] - origin[1], 0.0), label=p.label)
                  for p in points
                  if sl[1].start * pixel <= p.position[0] < sl[1].stop * pixel
                  and sl[0].start * pixel <= p.position[1] < sl[0].stop * pixel]
        label = int(bool(mask.any()))  # any hot-spot pixel inside the crop
        entry = {"label": label, "view": "anterior right-chest crop"}
        counts = _jpeg_like(noise_rng, counts, mask_corner=True)
        array = counts.astype(np.uint8)
    else:
        array = np.clip(np.rint(counts), 0, 65535).astype(np.uint16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    name = patient_id.replace("_p", "_") if crop else f"{patient_id}_{view[:3]}"
    findings = [{"type": "hotspot", "center_zyx": (0, int(round(p.position[1] / pixel)),
                                                    int(round(p.position[0] / pixel)))} for p in points]
    return SynthCase(id=name, patient=patient_id, image=image, mask=mask.astype(np.uint8),
                     roi=roi.astype(np.uint8), points=points, findings=findings, mask_labels=dict(LABELS),
                     entry=entry)


def _jpeg_like(rng, counts, mask_corner):
    """8-bit like BS-80K's crops: scaled to the bright end, a black cut-off top corner and a
    ragged black strip on the medial side where the published crops were masked."""
    top = max(float(np.percentile(counts, 99.5)), 1.0)
    out = np.clip(counts / top * 230.0, 0, 255)
    if mask_corner:
        rows, cols = out.shape
        depth = int(rows * rng.uniform(0.1, 0.3))
        r, c = np.mgrid[0:rows, 0:cols]
        out[r < depth * (1 - c / cols)] = 0
        edge = cols * rng.uniform(0.1, 0.3) + np.cumsum(rng.normal(0, 0.8, rows))
        out[c >= cols - np.clip(edge, 0, cols * 0.45)[:, None]] = 0
    return np.rint(out)


class Body:
    """One patient's skeleton and organs in image millimetres (y down from the head, x across,
    anterior view: patient's right on the left)."""

    def __init__(self, rng, shape, spacing):
        self.shape, self.spacing = shape, spacing
        height = shape[0] * spacing[0]
        self.s = s = rng.uniform(0.9, 1.0) * height / BODY_MM * 0.97
        self.top = rng.uniform(0.005, 0.02) * height
        self.cx = shape[1] * spacing[1] / 2 + rng.normal(0, 2)
        self.bone_gain = rng.uniform(0.8, 1.25)
        self.soft_tissue = rng.uniform(0.05, 0.1)  # soft-tissue background relative to bone
        self.kidney = rng.uniform(0.15, 0.6)
        self.bladder = rng.uniform(2.0, 8.0)
        self.injection = rng.uniform(3.0, 10.0) if rng.random() < 0.5 else 0.0
        self.injection_side = int(rng.choice([-1, 1]))
        self.joints = rng.uniform(0.0, 0.8, 6)  # degenerative uptake: shoulders, knees, lower lumbar
        # (part, kind, params, activity, anterior weight, posterior weight)
        self.parts = []
        y = lambda mm: self.top + mm * s  # noqa: E731
        x = lambda side, mm: self.cx + side * mm * s  # noqa: E731
        add = self.parts.append
        add(("skull", "ellipse", (y(105), x(0, 0), 100 * s, 78 * s), 0.55, 1.0, 1.0))
        add(("skull rim", "ring", (y(105), x(0, 0), 100 * s, 78 * s, 12 * s), 0.6, 1.0, 1.0))
        add(("mandible", "capsule", ((y(205), x(-1, 45)), (y(235), x(0, 0)), 9 * s, 9 * s), 0.5, 1.0, 0.6))
        add(("mandible", "capsule", ((y(205), x(1, 45)), (y(235), x(0, 0)), 9 * s, 9 * s), 0.5, 1.0, 0.6))
        add(("cervical spine", "capsule", ((y(225), x(0, 0)), (y(320), x(0, 0)), 11 * s, 13 * s), 0.7, 0.8, 1.1))
        self.spine = []
        for n in range(17):  # T1..L5 as blocks
            yc = y(335 + n * 29)
            self.spine.append((yc, x(0, 0)))
            add(("spine", "ellipse", (yc, x(0, 0), 11 * s, (15 + n * 0.6) * s), 0.95, 0.7, 1.3))
        self.ribs = []
        for n in range(12):
            y0 = 350 + n * 27
            t = np.linspace(0, 1, 8)
            for side in (-1, 1):
                width = 70 + 55 * np.sin(np.pi * min(n + 2, 9) / 18)
                post = [(y(y0 + 30 * tt + 55 * tt * tt), x(side, 12 + width * np.sin(np.pi / 2 * tt))) for tt in t]
                ant = [(y(y0 + 85 + 40 * tt), x(side, (12 + width) * (1 - 0.75 * tt))) for tt in t] if n < 10 else []
                self.ribs.append(post + ant)
                for a, b in zip(post[:-1], post[1:]):
                    add(("rib", "capsule", (a, b, 5.0 * s, 5.0 * s), 0.4, 0.45, 1.1))
                for a, b in zip(ant[:-1], ant[1:]):
                    add(("rib", "capsule", (a, b, 4.0 * s, 4.0 * s), 0.35, 0.8, 0.5))
        add(("sternum", "capsule", ((y(345), x(0, 0)), (y(520), x(0, 0)), 13 * s, 10 * s), 0.7, 1.0, 0.3))
        for side in (-1, 1):
            add(("clavicle", "capsule", ((y(340), x(side, 18)), (y(318), x(side, 150)), 9 * s, 9 * s), 0.6, 1.0, 0.5))
            add(("scapula", "ellipse", (y(420), x(side, 125), 70 * s, 40 * s), 0.3, 0.35, 1.0))
            add(("shoulder", "ellipse", (y(335), x(side, 178), 24 * s, 24 * s), 0.8 + self.joints[0 if side < 0 else 1],
                 1.0, 1.0))
            add(("humerus", "capsule", ((y(345), x(side, 182)), (y(640), x(side, 200)), 13 * s, 11 * s), 0.5, 1.0, 1.0))
            add(("forearm", "capsule", ((y(650), x(side, 200)), (y(900), x(side, 215)), 12 * s, 10 * s), 0.45, 1.0,
                 1.0))
            add(("hand", "ellipse", (y(960), x(side, 222), 55 * s, 28 * s), 0.5, 1.0, 1.0))
            add(("iliac wing", "ellipse", (y(870), x(side, 80), 62 * s, 48 * s), 0.6, 0.8, 1.0))
            add(("sacroiliac joint", "capsule", ((y(850), x(side, 30)), (y(905), x(side, 38)), 9 * s, 9 * s), 0.9, 0.6,
                 1.3))
            add(("pubis", "capsule", ((y(955), x(side, 70)), (y(985), x(side, 10)), 10 * s, 10 * s), 0.6, 1.0, 0.6))
            add(("femoral head", "ellipse", (y(950), x(side, 92), 24 * s, 24 * s), 0.8, 1.0, 1.0))
            add(("femur", "capsule", ((y(965), x(side, 100)), (y(1380), x(side, 78)), 15 * s, 14 * s), 0.5, 1.0, 1.0))
            add(("knee", "ellipse", (y(1405), x(side, 78), 32 * s, 36 * s), 0.9 + self.joints[2 if side < 0 else 3],
                 1.0, 1.0))
            add(("tibia", "capsule", ((y(1430), x(side, 76)), (y(1560), x(side, 70)), 13 * s, 12 * s), 0.5, 1.0, 1.0))
            add(("ankle and foot", "capsule", ((y(1575), x(side, 70)), (y(1630), x(side, 95)), 18 * s, 16 * s), 0.8,
                 1.0, 1.0))
            add(("kidney", "ellipse", (y(710), x(side, 70), 55 * s, 30 * s), self.kidney, 0.5, 1.0))
        add(("sacrum", "ellipse", (y(880), x(0, 0), 48 * s, 38 * s), 0.8 + self.joints[4], 0.7, 1.2))
        add(("bladder", "ellipse", (y(985), x(0, 0), 40 * s, 55 * s), self.bladder, 1.0, 0.7))
        if self.injection:
            add(("injection site", "ellipse", (y(650), x(self.injection_side, 205), 8 * s, 8 * s), self.injection,
                 1.0, 0.6))
        self.outline_parts = [("ellipse", (y(105), x(0, 0), 110 * s, 88 * s)),
                              ("capsule", ((y(200), x(0, 0)), (y(330), x(0, 0)), 55 * s, 60 * s)),
                              ("capsule", ((y(400), x(0, 0)), (y(900), x(0, 0)), 165 * s, 150 * s))]
        for side in (-1, 1):
            self.outline_parts += [("capsule", ((y(340), x(side, 180)), (y(650), x(side, 205)), 42 * s, 35 * s)),
                                   ("capsule", ((y(650), x(side, 205)), (y(960), x(side, 222)), 35 * s, 30 * s)),
                                   ("capsule", ((y(950), x(side, 85)), (y(1400), x(side, 78)), 80 * s, 55 * s)),
                                   ("capsule", ((y(1400), x(side, 78)), (y(1620), x(side, 75)), 55 * s, 35 * s))]

    def _depth(self, kind, params):
        shape, spacing = self.shape, self.spacing
        if kind == "ellipse":
            yc, xc, ry, rx = params
            return ellipsoid_depth(shape, spacing, (yc, xc), (ry, rx))
        if kind == "ring":
            yc, xc, ry, rx, width = params
            res = ellipsoid_depth(shape, spacing, (yc, xc), (ry, rx))
            return None if res is None else (res[0], width / 2 - np.abs(res[1] - width / 2))
        p0, p1, r0, r1 = params
        return capsule_depth(shape, spacing, p0, p1, r0, r1)

    def _paint(self, canvas, kind, params, value):
        res = self._depth(kind, params)
        if res is not None:
            sl, d = res
            canvas[sl] += np.float32(value) * smoothstep(-1.5, 1.5, d)

    def metastases(self, rng, params, right_chest=False):
        # a crop shows one hemithorax: a few spots there, not a whole skeleton's worth
        mean = params["hotspots_mean"] * params["lesion_count"] * (0.4 if right_chest else 1.0)
        count = max(1, int(rng.poisson(mean)))
        spots = []
        for _ in range(count):
            where = rng.random()
            if right_chest or where < 0.35:
                # ribs alternate right, left: even ones are the patient's right (the crop's side)
                n = 2 * int(rng.integers(0, 10)) if right_chest else int(rng.integers(len(self.ribs)))
                rib = self.ribs[n]
                centre = rib[int(rng.integers(len(rib)))]
                site = "rib"
            elif where < 0.8:
                centre = self.spine[int(rng.integers(len(self.spine)))]
                site = "spine"
            else:
                side = int(rng.choice([-1, 1]))
                centre = (self.top + rng.uniform(840, 930) * self.s, self.cx + side * rng.uniform(20, 110) * self.s)
                site = "pelvis"
            diameter = log_uniform(rng, params["hotspot_diameter_min_mm"], params["hotspot_diameter_max_mm"])
            # BS-80K's positive crops show small foci: a rib metastasis is narrower than a vertebra's
            site_scale = 0.6 if site == "rib" else 1.0
            radius = max(diameter / 2 * site_scale * params["lesion_size"] * self.s, 1.0 * self.spacing[0])
            intensity = 1.0 + params["contrast"] * rng.uniform(0.8, 3.0)
            spots.append({"site": site, "center": (float(centre[0]), float(centre[1])),
                          "radii": (radius * rng.uniform(0.8, 1.2), radius * rng.uniform(0.8, 1.2)),
                          "intensity": intensity})
        return spots

    def render(self, view, hotspots):
        """(activity, hot-spot mask) of the anterior or posterior view."""
        canvas = np.zeros(self.shape, np.float32)
        for kind, params in self.outline_parts:  # soft-tissue background
            res = self._depth(kind, params)
            if res is not None:
                np.maximum(canvas[res[0]], self.soft_tissue * smoothstep(-3, 3, res[1]),
                           out=canvas[res[0]])
        for name, kind, params, value, anterior, posterior in self.parts:
            gain = 1.0 if name in ("kidney", "bladder", "injection site") else self.bone_gain
            self._paint(canvas, kind, params, value * gain * (anterior if view == "anterior" else posterior))
        mask = np.zeros(self.shape, bool)
        for spot in hotspots:
            res = ellipsoid_depth(self.shape, self.spacing, spot["center"], spot["radii"])
            if res is None:
                continue
            sl, d = res
            canvas[sl] += np.float32(spot["intensity"] * self.bone_gain) * smoothstep(-2.0, 2.0, d)
            mask[sl] |= d > 0
        if view == "posterior":
            canvas, mask = canvas[:, ::-1].copy(), mask[:, ::-1].copy()
        return canvas, mask

    def outline(self, view):
        canvas = np.zeros(self.shape, bool)
        for kind, params in self.outline_parts:
            res = self._depth(kind, params)
            if res is not None:
                canvas[res[0]] |= res[1] > 0
        return canvas[:, ::-1].copy() if view == "posterior" else canvas

    def right_chest_crop(self):
        """Rows from the shoulder to the lower ribs, columns from the body's right edge to the spine."""
        s, (py, px) = self.s, self.spacing
        y0, y1 = self.top + 300 * s, self.top + 620 * s
        x0, x1 = self.cx - 128 * s, self.cx + 2 * s
        return (slice(max(int(y0 / py), 0), min(int(y1 / py), self.shape[0])),
                slice(max(int(x0 / px), 0), min(int(x1 / px), self.shape[1])))
