"""Make the screenshots in this folder: a full-size synthetic study of each kind, a simulated
detector output for it, the scene bundle `lesiondetect infer --mrb` writes, rendered offscreen
by MRML's slice views (LesionDetectMRML.render).  Needs slicer-core and an offscreen OpenGL
(EGL or OSMesa).

    .venv/bin/python Resources/Screenshots/make_screenshots.py

The "prediction" is the ground truth blurred into a probability map (what a good detector
returns), so the pictures show the module's overlays, not any method's accuracy.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "LesionDetect")]

from LesionDetectLib import synth  # noqa: E402
from LesionDetectLib.geometry import Geometry  # noqa: E402
from LesionDetectLib.io import write_image  # noqa: E402
from LesionDetectLib.prediction import LesionBox, LesionPoint, Prediction, Provenance, write_prediction  # noqa: E402
from LesionDetectLib.scene_bundle import write_scene_bundle  # noqa: E402

KINDS = {"bone-ct": "bone-ct-patch", "ms-flair": "ms-flair-fcn", "liver-ct": "liver-frcnn"}
THRESHOLD = 0.5


def simulated_prediction(case, method: str) -> Prediction:
    geometry = Geometry.of(case.image)
    sigma = [1.5 / s for s in geometry.spacing[::-1]]  # 1.5 mm, in (z, y, x) voxels
    probability = ndimage.gaussian_filter(case.mask.astype(np.float32), sigma)
    probability = (0.97 * probability / max(float(probability.max()), 1e-6)).astype(np.float32)
    labels, count = ndimage.label(probability >= THRESHOLD)
    boxes, points = [], []
    for n, found in enumerate(ndimage.find_objects(labels), start=1):
        component = labels == n
        score = float(probability[component].max())
        lo = [s.start for s in found][::-1]
        hi = [s.stop - 1 for s in found][::-1]
        boxes.append(LesionBox.from_index_range(geometry, lo, hi, score=score))
        centre = np.array(ndimage.center_of_mass(component))[::-1]
        points.append(LesionPoint(geometry.index_to_lps(centre), score=score))
    return Prediction(geometry=geometry, provenance=Provenance(method=method, model_id="simulated"),
                      probability=probability, mask=probability >= THRESHOLD, threshold=THRESHOLD,
                      points=points, boxes=boxes)


def main() -> None:
    from LesionDetectMRML import render

    out_dir = Path(__file__).resolve().parent
    for kind, method in KINDS.items():
        case = synth.make_case(kind, seed=0, index=0, size="full")
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            write_image(case.image, tmp / f"{kind}.nrrd")
            write_prediction(simulated_prediction(case, method), tmp / "prediction")
            bundle = write_scene_bundle(tmp / f"{kind}.nrrd", tmp / "prediction", tmp / f"{kind}.mrb", opacity=0.5)
            target = out_dir / f"{kind}.png"
            target.unlink(missing_ok=True)
            render.main(["--bundle", str(bundle), "--out", str(target), "--size", "420",
                         "--field-of-view", "110"])
            print(target)


if __name__ == "__main__":
    main()
