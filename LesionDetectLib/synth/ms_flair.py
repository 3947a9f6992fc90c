"""ms-flair: brain FLAIR volumes with multiple-sclerosis plaques on the MNI grid.

The full-size grid is the real cases' own (182 x 218 x 182 at 1 mm, origin (-90, 126, -72),
y axis flipped), so synthetic and real volumes overlay.  Brain: white matter, a cortical
grey-matter ribbon with sulci (zero crossings of a smooth random field), interhemispheric
fissure, deep grey nuclei, lateral and third ventricles, cerebellum and brainstem, dark
CSF.  Plaques: periventricular ovoids pointing away from the ventricles (Dawson's
fingers), juxtacortical and deep white-matter ones, log-uniform 2-15 mm, many small and
faint.  Unless `skull_stripped=1`, the head keeps what fooled the paper's filter: bright
scalp fat (also cut tangentially on top-of-head slices), skull, eyes with bright orbital fat
and sinuses with bright mucosa.  Ground truth: plaque mask, brain mask (`roi`).
"""

# The docstring above is every study's dataset.json "description": changing it changes the files.
# `random_contrast=1` (random_contrasts) draws the tissue contrasts per case to cover the real
# cases' range; off by default, so the plain studies stay byte-identical.
from __future__ import annotations

import numpy as np

from ..geometry import Geometry
from .common import (OUTSIDE, Param, SynthCase, blur_mm, capsule_depth, case_id, case_rng, coarse_noise,
                     ellipsoid_depth, lobulation, log_uniform, overlaps, paint_max, paint_polyline, smoothstep)

KIND = "ms-flair"
MODALITY = "MR"
LABELS = {"0": "background", "1": "plaque"}
WINDOW = (0.0, 220.0)
PARAMS = {
    "lesions_mean": Param(18.0, "mean number of plaques per case (Poisson)"),
    "diameter_min_mm": Param(2.0, "smallest plaque diameter"),
    "diameter_max_mm": Param(15.0, "largest plaque diameter (log scale, skewed: most are small)"),
    "plaque_contrast_min": Param(0.2, "faintest plaque, as a fraction above white matter"),
    "plaque_contrast_max": Param(0.9, "brightest plaque, as a fraction above white matter"),
    "noise_fraction": Param(0.035, "noise standard deviation as a fraction of white matter"),
    "skull_stripped": Param(False, "zero everything outside the brain, like the MNI cases"),
    "random_contrast": Param(False, "draw the plaque, grey-matter, deep-grey and CSF contrasts per case (plaque "
                                    "median about 1.2-1.7 x white matter, as open_ms_data to MSLesSeg) and, in half "
                                    "of the cases, a bright unlabelled periventricular rim", quiet=True),
}
# (z, y, x) sizes, spacing (mm) and the physical origin of index 0 (LPS)
SIZE = {"full": ((182, 218, 182), (1.0, 1.0, 1.0), (-90.0, 126.0, -72.0)),
        "small": ((26, 76, 64), (6.0, 2.85, 2.85), (-90.0, 126.0, -50.0))}
DIRECTION = (1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
# FLAIR signal relative to white matter
TISSUE = {"csf": 0.16, "wm": 1.0, "gm": 1.25, "deep_gm": 1.08, "skull": 0.08, "diploe": 0.75, "scalp_fat": 1.55,
          "muscle": 0.55, "orbital_fat": 1.5, "globe": 1.15, "mucosa": 1.35}
WM, GM, DEEP_GM, CSF = 1, 2, 3, 4


def grid(size: str) -> Geometry:
    """The voxel grid of a case: the real MNI cases' grid at full size, a coarse one at small."""
    shape, spacing, origin = SIZE[size]
    return Geometry(size=shape[::-1], spacing=spacing[::-1], origin=origin, direction=DIRECTION)


def make_case(seed: int, index: int, size: str, params: dict) -> SynthCase:
    rng, name = case_rng(KIND, seed, index), case_id(KIND, seed, index)
    shape, spacing, origin = SIZE[size]
    geometry = grid(size)

    def arr(lps):
        """LPS mm -> array mm (z, y, x) on this grid (y axis flipped)."""
        x, y, z = lps
        return (z - origin[2], origin[1] - y, x - origin[0])

    scale = rng.uniform(0.93, 1.05)
    centre = np.array([rng.normal(0, 1.5), 18 + rng.normal(0, 3), 15 + rng.normal(0, 3)])
    semi = np.array([68, 84, 58]) * scale

    # brain depth (mm inside the brain surface)
    brain = np.full(shape, OUTSIDE, np.float32)
    res = ellipsoid_depth(shape, spacing, arr(centre), semi[::-1], lobes=lobulation(rng, 0.04))
    paint_max(brain, *res)
    cerebellum = centre + np.array([0, 40, -45]) * scale
    paint_max(brain, *ellipsoid_depth(shape, spacing, arr(cerebellum), np.array([22, 28, 50]) * scale))
    stem = capsule_depth(shape, spacing, arr(centre + np.array([0, 8, -20]) * scale),
                         arr(centre + np.array([0, 14, -80]) * scale), 13 * scale, 10 * scale)
    if stem is not None:
        paint_max(brain, *stem)
    z_index = np.arange(shape[0]) * spacing[0] + origin[2]
    brain[z_index < centre[2] - 75 * scale] = OUTSIDE  # the grid ends at the foramen magnum

    tissue = np.zeros(shape, np.uint8)
    inside = brain > 0
    tissue[inside] = WM
    # cortex: an outer ribbon, and grey matter along sulci (zero crossings of a random field)
    folds = coarse_noise(rng, shape, spacing, 7.0, 1.0)
    near_surface = inside & (brain < 16)
    tissue[inside & (brain < 2.8)] = GM
    tissue[near_surface & (np.abs(folds) < 0.55)] = GM
    tissue[near_surface & (np.abs(folds) < 0.09)] = CSF
    # interhemispheric fissure (above the corpus callosum) and the CSF around the brain
    x_mm = (np.arange(shape[2]) * spacing[2] + origin[0] - centre[0])[None, None, :]
    z_mm = (z_index - centre[2])[:, None, None]
    fissure = (np.abs(x_mm) < max(1.2, 0.45 * spacing[2])) & (z_mm > 22 * scale) & inside
    tissue[fissure] = CSF
    # deep grey nuclei and ventricles
    deep = np.full(shape, OUTSIDE, np.float32)
    for side in (-1, 1):
        for offset, radii in (((12, 4, 2), (10, 15, 11)), ((22, -12, 6), (12, 16, 8))):
            pos = centre + np.array([side * offset[0], offset[1], offset[2]]) * scale
            paint_max(deep, *ellipsoid_depth(shape, spacing, arr(pos), np.array(radii[::-1]) * scale))
    tissue[(deep > 0) & inside] = DEEP_GM
    ventricles = np.full(shape, OUTSIDE, np.float32)
    vent_scale = rng.uniform(0.8, 1.6)  # atrophy widens them
    horn_paths = []
    for side in (-1, 1):
        path = centre + np.array([[side * 4, -26, 12], [side * 8, -8, 20], [side * 12, 14, 20],
                                  [side * 19, 34, 10], [side * 25, 22, -10], [side * 28, 2, -20]]) * scale
        path_arr = np.array([arr(p) for p in path])
        paint_polyline(ventricles, spacing, path_arr, np.array([4.5, 6, 5.5, 7, 3.5, 2.5]) * vent_scale)
        horn_paths.append(path_arr)
    paint_max(ventricles, *ellipsoid_depth(shape, spacing, arr(centre + np.array([0, 4, 0]) * scale),
                                           np.array([10, 14, 2.2 * vent_scale]) * scale))
    tissue[(ventricles > 0) & inside] = CSF

    # plaques
    labels = np.zeros(shape, np.uint8)
    wm_signal = float(rng.uniform(70, 150))
    signal = np.zeros(shape, np.float32)
    # random_contrast draws from a stream of its own: anatomy, plaques and noise stay those of the plain case
    contrasts = random_contrasts(case_rng(KIND, seed, index, stream=1)) if params["random_contrast"] else None
    values = {**TISSUE, **contrasts["tissue"]} if contrasts else TISSUE
    for t, value in ((WM, values["wm"]), (GM, values["gm"]), (DEEP_GM, values["deep_gm"]), (CSF, values["csf"])):
        signal[tissue == t] = value
    parenchyma = (tissue == WM) | (tissue == DEEP_GM) | (tissue == GM)
    if contrasts and contrasts["rim"]:  # caps and bands: bright white matter hugging the ventricles, not a plaque
        rim = parenchyma & (ventricles <= 0) & (ventricles > -contrasts["rim_mm"])
        signal[rim] = np.maximum(signal[rim], np.float32(contrasts["rim"]))
    count = int(rng.poisson(params["lesions_mean"] * params["lesion_count"]))
    juxtacortical = np.flatnonzero((tissue == WM) & (brain > 3) & (brain < 9))
    deep_wm = np.flatnonzero((tissue == WM) & (brain > 18) & (ventricles < -8))
    findings = []
    r_floor = 0.5 * max(spacing[1:])
    for _ in range(count * 20):
        if len(findings) == count:
            break
        diameter = log_uniform(rng, params["diameter_min_mm"], params["diameter_max_mm"], skew=1.8)
        radius = max(diameter / 2 * params["lesion_size"], r_floor)
        where = rng.random()
        direction = rng.normal(size=3)
        if where < 0.55:  # periventricular, elongated away from the ventricle
            path = horn_paths[int(rng.integers(2))]
            seg = int(rng.integers(0, 3))
            t = rng.random()
            on_axis = path[seg] * (1 - t) + path[seg + 1] * t
            axis = path[seg + 1] - path[seg]
            direction -= axis * (direction @ axis) / (axis @ axis)
            direction /= np.linalg.norm(direction)
            centre_mm = on_axis + direction * (6.5 * vent_scale + radius * 0.7 + rng.uniform(0, 3))
            radii = np.array([radius * rng.uniform(1.3, 1.9), radius, radius * rng.uniform(0.7, 1.0)])
            zyx = tuple(int(round(c / s)) for c, s in zip(centre_mm, spacing))
            if not all(0 <= v < n for v, n in zip(zyx, shape)):
                continue
            kind = "periventricular"
        else:
            pool = juxtacortical if where < 0.8 else deep_wm
            if pool.size == 0:
                continue
            zyx = np.unravel_index(pool[rng.integers(pool.size)], shape)
            centre_mm = np.asarray(zyx, float) * spacing
            direction /= np.linalg.norm(direction)
            radii = radius * rng.uniform(0.75, 1.25, 3)
            kind = "juxtacortical" if where < 0.8 else "deep white matter"
        zyx = tuple(int(v) for v in zyx)
        if tissue[zyx] != WM:
            continue
        centre_mm = np.asarray(zyx, float) * spacing  # centred on a voxel, so the centre is in the mask
        reach = float(radii.max()) * 1.25 + 1.0
        if overlaps(findings, centre_mm, reach):
            continue
        basis = np.linalg.qr(np.column_stack([direction, rng.normal(size=(3, 2))]))[0].astype(np.float32)
        res = ellipsoid_depth(shape, spacing, centre_mm, radii, basis, lobulation(rng, rng.uniform(0.05, 0.2)))
        if res is None:
            continue
        sl, d = res
        brightness = params["contrast"] * rng.uniform(params["plaque_contrast_min"], params["plaque_contrast_max"])
        if contrasts:
            brightness *= contrasts["plaque_factor"]
        weight = smoothstep(-0.6, 0.6, d) * parenchyma[sl]
        region_signal = signal[sl]
        region_signal += weight * (TISSUE["wm"] + brightness - region_signal)
        labels[sl][(d > 0) & parenchyma[sl]] = 1
        findings.append({"type": kind, "center_zyx": zyx, "center_mm": centre_mm, "reach_mm": reach,
                         "radius_mm": float(radius), "brightness": float(brightness)})
    for f in findings:
        del f["center_mm"], f["reach_mm"]

    if not params["skull_stripped"]:
        _paint_head(rng, signal, brain, shape, spacing, arr, centre, scale)
    signal *= np.float32(wm_signal)
    signal *= 1.0 + coarse_noise(rng, shape, spacing, 60.0, 0.07)  # coil bias field
    signal = blur_mm(signal, spacing, 0.7)
    sigma = params["noise_fraction"] * params["noise"] * wm_signal
    if sigma > 0:  # magnitude images: Rician noise
        real = signal + rng.normal(0, sigma, shape).astype(np.float32)
        imag = rng.normal(0, sigma, shape).astype(np.float32)
        signal = np.sqrt(real * real + imag * imag)
    roi = inside.astype(np.uint8)
    if params["skull_stripped"]:
        signal *= roi
    image = geometry.image(signal.astype(np.float32))
    entry = {"skull_stripped": bool(params["skull_stripped"])}
    if contrasts:
        entry["tissue_contrast"] = {k: round(float(v), 4) for k, v in
                                    {**contrasts["tissue"], "plaque_factor": contrasts["plaque_factor"],
                                     "rim": contrasts["rim"], "rim_mm": contrasts["rim_mm"]}.items()}
    return SynthCase(
        id=name, patient=name, image=image, mask=labels, roi=roi, findings=findings,
        mask_labels=dict(LABELS), entry=entry)


def random_contrasts(rng: np.random.Generator) -> dict:
    """One case's tissue contrasts for `random_contrast` (relative to white matter = 1).

    The real cases differ most in plaque contrast: plaque median 1.30-1.35 x white matter in
    open_ms_data (and the plain synthetic head), 1.49-1.57 x in MSLesSeg P18, whose grey matter
    is brighter too and whose bright periventricular rims are not annotated.  The plaque
    brightness above white matter is scaled by `plaque_factor` (log-uniform 0.55-1.6: plaque
    median about 1.2-1.7 x); grey matter 1.1-1.45, deep grey 1.0-1.2, CSF 0.05-0.3; half the
    cases get a rim of 1-3 mm at 1.15-1.5 x around the ventricles (left out of the mask)."""
    tissue = {"gm": rng.uniform(1.1, 1.45), "deep_gm": rng.uniform(1.0, 1.2), "csf": rng.uniform(0.05, 0.3)}
    plaque_factor = float(np.exp(rng.uniform(np.log(0.55), np.log(1.6))))
    rim = float(rng.uniform(1.15, 1.5)) if rng.random() < 0.5 else 0.0
    return {"tissue": tissue, "plaque_factor": plaque_factor, "rim": rim, "rim_mm": float(rng.uniform(1.0, 3.0))}


def _paint_head(rng, signal, brain, shape, spacing, arr, centre, scale):
    """Scalp, skull, orbits and sinuses around the brain (into `signal`, relative units)."""
    head = np.full(shape, OUTSIDE, np.float32)
    paint_max(head, *ellipsoid_depth(shape, spacing, arr(centre + np.array([0, -2, -4])),
                                     np.array([78, 102, 86]) * scale))
    face = ellipsoid_depth(shape, spacing, arr(centre + np.array([0, -30, -55]) * scale),
                           np.array([55, 70, 62]) * scale)
    if face is not None:
        paint_max(head, *face)
    # everything in the head that is not brain: CSF gap, skull, scalp
    outside_brain = (head > 0) & (brain <= 0)
    shell = np.where(outside_brain, np.clip(-brain, 0, None), 0)
    layer = np.zeros(shape, np.float32)
    layer[outside_brain] = TISSUE["muscle"]
    layer[outside_brain & (shell < 2.5)] = TISSUE["csf"]
    skull = outside_brain & (shell >= 2.5) & (shell < 9)
    layer[skull] = TISSUE["skull"]
    layer[skull & (shell >= 4.5) & (shell < 7)] = TISSUE["diploe"]
    scalp = (head > 0) & (head < 6.5) & (brain <= 0)
    layer[scalp] = TISSUE["scalp_fat"]
    layer[(head > 0) & (head < 1.5) & (brain <= 0)] = TISSUE["muscle"]  # skin
    signal[outside_brain] = layer[outside_brain]
    # orbits: bright fat around a globe; sinuses: air lined by bright mucosa
    for side in (-1, 1):
        eye = centre + np.array([side * 32, -70, -28]) * scale
        for radius, value in ((17, TISSUE["orbital_fat"]), (12, TISSUE["globe"]), (10, 0.35)):
            _fill(signal, brain, shape, spacing, arr(eye + np.array([0, 0, 0])), radius * scale, value)
        sinus = centre + np.array([side * 24, -55, -62]) * scale
        _fill(signal, brain, shape, spacing, arr(sinus), 17 * scale, TISSUE["mucosa"])
        _fill(signal, brain, shape, spacing, arr(sinus), 13 * scale * rng.uniform(0.6, 1.0), 0.02)
    frontal = centre + np.array([0, -80, 0]) * scale
    _fill(signal, brain, shape, spacing, arr(frontal), 10 * scale, TISSUE["mucosa"])
    _fill(signal, brain, shape, spacing, arr(frontal), 7 * scale, 0.02)


def _fill(signal, brain, shape, spacing, centre, radius, value):
    """A ball of `value` outside the brain."""
    res = ellipsoid_depth(shape, spacing, centre, (radius, radius, radius))
    if res is None:
        return
    sl, d = res
    m = (d > 0) & (brain[sl] <= 0)
    signal[sl][m] = value
