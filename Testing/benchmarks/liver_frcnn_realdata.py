"""liver-frcnn on real CT: do the 3-D boxes land in the right physical place?

    .venv/bin/python Testing/benchmarks/liver_frcnn_realdata.py --model MODEL_DIR --out /tmp/lf/real

Runs whole-volume detection on the contrast CT with colorectal liver metastases
(../shared/data/realistic_inputs/mirp_crlm_1004_ct_dicom, no lesion mask) and on the
whole-body CT (totalsegmentator_example_ct.nii.gz), writes each Prediction (boxes.mrk.json
opens in Slicer) and PNG overlays on the LPS-oriented slices the detector saw (anterior up,
patient's left on the right): for every box, its best slice in the abdominal window with
(red) the detector's 2-D box and (yellow, dashed) the 3-D box read back from the written
.mrk.json, physical LPS corners mapped into the slice with the image's geometry.  Where the
two rectangles coincide, the physical coordinates are right.  A summary is printed and
written as Markdown next to the PNGs.  There is no ground truth: judge the overlays by eye.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from LesionDetectLib.geometry import Geometry  # noqa: E402
from LesionDetectLib.io import read_volume  # noqa: E402
from LesionDetectLib.markups import read_boxes  # noqa: E402
from LesionDetectLib.prediction import write_prediction  # noqa: E402
from LesionDetectLib.training import load_trained  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "realistic_inputs"
INPUTS = {"mirp_crlm_1004": "mirp_crlm_1004_ct_dicom",
          "totalsegmentator_wholebody": "totalsegmentator_example_ct.nii.gz"}


def overlay(image: sitk.Image, boxes_written, boxes_pred, path: Path, title: str, per_page: int = 12) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    image = sitk.DICOMOrient(image, "LPS")  # the grid the detector's 2-D boxes refer to (radiological view)
    hu = sitk.GetArrayViewFromImage(image)
    geometry = Geometry.of(image)
    shown = list(zip(boxes_written, boxes_pred))[:per_page]
    if not shown:
        k = hu.shape[0] // 2
        fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
        ax.imshow(hu[k], cmap="gray", vmin=-160, vmax=240)
        ax.set_title(f"{title}: no boxes (slice {k})", fontsize=8)
        ax.axis("off")
        fig.savefig(path)
        plt.close(fig)
        return
    cols = min(4, len(shown))
    rows = int(np.ceil(len(shown) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 4 * rows), dpi=100, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (written, pred) in zip(axes.ravel(), shown):
        k = pred.extra["key_slice"]
        ax.imshow(hu[k], cmap="gray", vmin=-160, vmax=240)
        x0, y0, x1, y1 = next(s["box"] for s in pred.extra["slices"] if s["slice"] == k)
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="red", lw=1.5))
        idx = geometry.lps_to_index(written.corners())  # physical -> voxel indices, independently
        lo, hi = idx.min(axis=0), idx.max(axis=0)
        ax.add_patch(Rectangle((lo[0], lo[1]), hi[0] - lo[0], hi[1] - lo[1], fill=False, ec="yellow", lw=1,
                               ls="--"))
        c = np.round(written.center, 1)
        ax.set_title(f"slice {k} (z {lo[2] + 0.5:.0f}-{hi[2] - 0.5:.0f}) score {written.score:.2f}\n"
                     f"LPS {c[0]}, {c[1]}, {c[2]} mm", fontsize=8)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--threshold", type=float, help="score threshold (default: the model card's)")
    ap.add_argument("--redraw", action="store_true", help="only redraw the overlays from boxes written before")
    ap.add_argument("--data", type=Path, default=DATA, help=f"folder holding the inputs (default {DATA})")
    ap.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    args = ap.parse_args(argv)
    method, model, card, device = load_trained(args.model, device=args.device)
    lines = [f"# liver-frcnn on real CT ({card.model_id}, threshold "
             f"{args.threshold if args.threshold is not None else card.thresholds.get('score')})", ""]
    for name, path in INPUTS.items():
        path = args.data / path
        if not path.exists():
            print(f"skipped {name}: {path} not found")
            continue
        image = read_volume(path)
        if args.redraw:
            boxes = read_boxes(args.out / name / "boxes.mrk.json")
            overlay(image, boxes, boxes, args.out / f"{name}.png", f"{name}: {len(boxes)} boxes")
            continue
        t0 = time.perf_counter()
        options = {} if args.threshold is None else {"threshold": args.threshold}
        pred = method.predict(model, card, image, device, **options)
        seconds = time.perf_counter() - t0
        pred.provenance.input = str(path)
        written = write_prediction(pred, args.out / name, overwrite=True)
        boxes = read_boxes(written["boxes"]) if "boxes" in written else []
        png = args.out / f"{name}.png"
        overlay(image, boxes, pred.boxes, png, f"{name}: {len(pred.boxes)} boxes")
        size = image.GetSize()
        lines.append(f"- {name}: {size[0]}x{size[1]}x{size[2]} voxels, spacing "
                     f"{', '.join(f'{s:.3g}' for s in image.GetSpacing())} mm; {len(pred.boxes)} boxes in "
                     f"{seconds:.1f} s; scores {', '.join(f'{b.score:.2f}' for b in pred.boxes[:12])}; "
                     f"overlay {png.name}")
    text = "\n".join(lines) + "\n"
    if not args.redraw:
        (args.out / "summary.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
