"""Write a Slicer scene bundle (.mrb): the input, the styled probability map, the lesion
segmentation, the boxes, the points and the class table, ready to open in Slicer.

Run as `python -m LesionDetectMRML.bundle --image IMG --prediction DIR --out OUT.mrb`
(LesionDetectLib.scene_bundle does this, so the library never imports slicer).  Needs the
slicer-core wheel: the scene is built headless (headless.py), saved with the application
logic's SaveSceneToSlicerDataBundleDirectory and zipped with its Zip, exactly as Slicer's
scene writer makes an .mrb.  The file appears atomically and never replaces an existing one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

NO_SLICER_EXIT = 3  # exit status when slicer-core cannot be imported
BUNDLE_SUFFIX = ".mrb"


def write_bundle(image_path, prediction_dir, out_mrb, threshold: float | None = None, opacity: float | None = None
                 ) -> Path:
    from LesionDetectLib.errors import input_error
    from LesionDetectLib.files import refuse_existing
    from LesionDetectLib.io import read_volume
    from LesionDetectLib.prediction import read_prediction

    from . import convert, headless, overlay

    out_mrb = Path(out_mrb)
    if out_mrb.suffix.lower() != BUNDLE_SUFFIX:
        raise input_error(out_mrb, f"a scene bundle must end in {BUNDLE_SUFFIX}")
    refuse_existing(out_mrb)
    image = read_volume(image_path, allow_2d=True)  # planar scintigrams: one-slice volumes
    prediction = read_prediction(prediction_dir)
    slicer_scene = headless.new_scene()
    try:
        name = _volume_name(Path(image_path))
        volume = convert.add_image_volume(slicer_scene.scene, image, name)
        try:
            overlay.add_prediction(slicer_scene.scene, slicer_scene.logic("Segmentations"), volume, prediction,
                                   threshold=threshold,
                                   opacity=overlay.DEFAULT_OPACITY if opacity is None else opacity)
        except ValueError as exc:
            raise input_error(prediction_dir, f"does not fit {image_path}: {exc}") from None
        save_scene_bundle(slicer_scene.app_logic, out_mrb)
    finally:
        slicer_scene.close()
    return out_mrb


def save_scene_bundle(app_logic, out_mrb) -> Path:
    """Save the application logic's scene as an .mrb, as Slicer's scene writer does
    (SaveSceneToSlicerDataBundleDirectory, then Zip); atomic, never replacing a file.  Node
    attributes and segment tags (e.g. the review states, review.py) are saved with the scene."""
    from LesionDetectLib.errors import LesionDetectError, input_error
    from LesionDetectLib.files import atomic_path, refuse_existing

    out_mrb = Path(out_mrb)
    if out_mrb.suffix.lower() != BUNDLE_SUFFIX:
        raise input_error(out_mrb, f"a scene bundle must end in {BUNDLE_SUFFIX}")
    refuse_existing(out_mrb)
    with tempfile.TemporaryDirectory(prefix="lesiondetect-mrb-") as tmp:
        pack_dir = Path(tmp) / out_mrb.name[: -len(BUNDLE_SUFFIX)]
        pack_dir.mkdir()
        if not app_logic.SaveSceneToSlicerDataBundleDirectory(str(pack_dir), None):
            raise LesionDetectError(f"{out_mrb}: Slicer could not save the scene")
        with atomic_path(out_mrb) as tmp_mrb:
            tmp_mrb.unlink()  # the zipper creates its file itself
            if not app_logic.Zip(str(tmp_mrb), str(pack_dir)):
                raise LesionDetectError(f"{out_mrb}: Slicer could not zip the scene")
    return out_mrb


def _volume_name(path: Path) -> str:
    name = path.name
    for suffix in (".nii.gz", ".seg.nrrd", ".nrrd", ".nii", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem or "image"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m LesionDetectMRML.bundle", description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", required=True)
    parser.add_argument("--prediction", required=True, help="folder written by lesiondetect infer")
    parser.add_argument("--out", required=True, help="the .mrb to write (never overwritten)")
    parser.add_argument("--threshold", type=float)
    parser.add_argument("--opacity", type=float)
    args = parser.parse_args(argv)
    try:
        from . import headless

        headless.import_slicer()
    except ImportError as exc:
        print(f"lesiondetect: error: {exc}", file=sys.stderr)
        return NO_SLICER_EXIT
    from LesionDetectLib.errors import LesionDetectError

    try:
        write_bundle(args.image, args.prediction, args.out, threshold=args.threshold, opacity=args.opacity)
    except LesionDetectError as exc:
        print(f"lesiondetect: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
