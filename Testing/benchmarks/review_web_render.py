"""Server-side render times of the web review page (`lesiondetect review`, LesionDetectWeb) for a
512 x 512 x 100 CT: time to the first image of a study, slice scrolling and threshold changes.

It builds the page's application exactly as `serve()` does (trame-slicer's SlicerApp, its
remote-rendered views in the Quad layout, the ReviewSession on LesionDetectMRML) without starting
the web server, and times what the server does for each user action until the image the browser
receives exists: the MRML update, the VTK render of the view(s) and the JPEG encoding of the
frame (trame-rca's default is TurboJPEG; PIL's JPEG at the same quality stands in).  The
network and the browser's decode are not included.

Targets (issue #20): scroll and threshold redraw <= 150 ms median on 2 cores; first image <= 3 s.
A threshold change is timed as the re-threshold (set_display) plus the three slice views' frames,
and also with the page's refresh of its findings table (ReviewApp._refresh) in between.

    OMP_NUM_THREADS=1 python Testing/benchmarks/review_web_render.py [--size 512 512 100] [--view 600]

Needs trame-slicer with its slicer-core (pip install "trame-slicer[standalone]==2.0.0").
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "LesionDetect")]


def make_ct(root: Path, size=(512, 512, 100), spacing=(0.7, 0.7, 2.5)):
    """A synthetic CT (body ellipse, bony rim, three lesions) as a one-case dataset, and a
    Prediction with a probability map, boxes and points for it."""
    from LesionDetectLib.geometry import Geometry
    from LesionDetectLib.io import write_image
    from LesionDetectLib.prediction import ClassResult, LesionBox, LesionPoint, Prediction, Provenance

    nx, ny, nz = size
    geometry = Geometry(size, spacing, (-nx * spacing[0] / 2, -ny * spacing[1] / 2, -nz * spacing[2] / 2),
                        np.eye(3).ravel().tolist())
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:ny, 0:nx]
    body = ((x - nx / 2) / (nx * 0.42)) ** 2 + ((y - ny / 2) / (ny * 0.35)) ** 2 <= 1
    rim = body & ~(((x - nx / 2) / (nx * 0.40)) ** 2 + ((y - ny / 2) / (ny * 0.33)) ** 2 <= 1)
    ct = np.full((nz, ny, nx), -1000, np.int16)
    ct[:, body] = 40
    ct[:, rim] = 700
    probability = np.zeros((nz, ny, nx), np.float32)
    points, boxes = [], []
    for n, (fx, fy, fz) in enumerate(((0.35, 0.45, 0.4), (0.62, 0.55, 0.55), (0.5, 0.35, 0.7))):
        c = np.array([fx * nx, fy * ny, fz * nz])
        r_mm = 9.0 - 2 * n
        r = np.ceil(r_mm * 2.5 / np.array(spacing)).astype(int)
        lo, hi = np.maximum(c.astype(int) - r, 0), np.minimum(c.astype(int) + r + 1, [nx, ny, nz])
        zz, yy, xx = np.mgrid[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
        d2 = (((xx - c[0]) * spacing[0]) ** 2 + ((yy - c[1]) * spacing[1]) ** 2 + ((zz - c[2]) * spacing[2]) ** 2)
        peak = 0.95 - 0.2 * n
        block = probability[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]]
        np.maximum(block, peak * np.exp(-d2 / (2 * (r_mm / 1.5) ** 2)), out=block)
        ct[lo[2]:hi[2], lo[1]:hi[1], lo[0]:hi[0]][d2 <= r_mm ** 2] = 90
        lps = geometry.index_to_lps(c)
        points.append(LesionPoint(lps, score=peak, label="lesion"))
        rr = np.ceil(r_mm / np.array(spacing)).astype(int)
        boxes.append(LesionBox.from_index_range(geometry, c.astype(int) - rr, c.astype(int) + rr, score=peak - 0.05,
                                                label="lesion"))
    ct += rng.normal(0, 10, ct.shape).astype(np.int16)
    (root / "images").mkdir(parents=True, exist_ok=True)
    write_image(geometry.image(ct), root / "images" / "ct.nrrd")
    doc = {"name": "bench", "modality": "CT", "labels": {"0": "bg", "1": "lesion"},
           "cases": [{"id": "ct", "patient": "p", "image": "images/ct.nrrd"}]}
    (root / "dataset.json").write_text(json.dumps(doc))
    provenance = Provenance(method="liver-frcnn", model_id="synthetic", model_version="0", parameters={},
                            input="synthetic CT")
    return Prediction(geometry=geometry, provenance=provenance, probability=probability, threshold=0.5,
                      mask=probability >= 0.5, points=points, boxes=boxes,
                      classes=[ClassResult({"no tumour": 0.05, "liver tumour": 0.95})])


PARTS: dict[str, list[float]] = {"render": [], "grab": [], "encode": []}


def frame(view) -> bytes:
    """Render `view` and encode its frame as the browser would receive it (JPEG, quality 80)."""
    from PIL import Image
    from vtkmodules.util.numpy_support import vtk_to_numpy
    from vtkmodules.vtkRenderingCore import vtkWindowToImageFilter

    t0 = time.perf_counter()
    view.render_window().Render()  # (view.render() goes through the interactor, idle until a client connects)
    t1 = time.perf_counter()
    grab = vtkWindowToImageFilter()
    grab.SetInput(view.render_window())
    grab.SetInputBufferTypeToRGB()
    grab.ReadFrontBufferOff()
    grab.Update()
    data = grab.GetOutput()
    w, h, _ = data.GetDimensions()
    pixels = vtk_to_numpy(data.GetPointData().GetScalars()).reshape(h, w, 3)[::-1]
    t2 = time.perf_counter()
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(out, "JPEG", quality=80)
    t3 = time.perf_counter()
    for part, seconds in zip(PARTS, (t1 - t0, t2 - t1, t3 - t2)):
        PARTS[part].append(1000 * seconds)
    return out.getvalue()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, nargs=3, default=(512, 512, 100), metavar=("X", "Y", "Z"))
    parser.add_argument("--view", type=int, default=600, help="view size in pixels (square)")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", help="write the numbers here too")
    parser.add_argument("--frames", help="save the last axial frames (first image, scrolled, thresholded) here as JPEG")
    args = parser.parse_args(argv)
    load_at_start = os.getloadavg()[0]  # the 2 cores may be shared: say how busy they were

    import LesionDetectWeb

    missing = LesionDetectWeb.missing_requirement()
    if missing:
        print(missing, file=sys.stderr)
        return 2
    from trame.app import get_server

    from LesionDetectWeb.app import ReviewApp

    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        prediction = make_ct(Path(tmp), tuple(args.size))
        print(f"made the {'x'.join(map(str, args.size))} CT in {time.perf_counter() - t:.1f} s", flush=True)
        app = ReviewApp(get_server("bench", client_type="vue3"), tmp, method="liver-frcnn")
        views = {v.get_singleton_tag(): v for v in app.slicer_app.view_manager.get_views()}
        for view in views.values():
            view.update_size(args.view, args.view)
        red = views["Red"]

        # time to first image: open the study, reset the views, render and encode every view
        t = time.perf_counter()
        app.session.open_case("ct")
        app.slicer_app.display_manager.reset_views()
        first_red = frame(red)
        saved = {"first": first_red}
        first_all = [frame(v) for tag, v in views.items() if tag != "Red"]
        first_image_s = time.perf_counter() - t
        open_only = time.perf_counter()
        print(f"first image (open + 4 views): {first_image_s:.2f} s", flush=True)

        # the result in the scene, as after Detect (the child process is not what is timed here)
        t = time.perf_counter()
        app.session.logic.showPrediction(app.session.volume, prediction)
        app.session._attach_editor()
        show_s = time.perf_counter() - t
        from LesionDetectMRML import overlay

        # the views on the first lesion, so the overlays are in the frames
        overlay.centre_views(app.slicer_app.scene,
                             next(f.center_ras for f in app.session.logic.reviewFindings() if f.kind == "point"))
        for v in views.values():
            frame(v)

        # slice scrolling in the axial view (one step per frame, as the slider or the wheel does)
        lo, hi = red.get_slice_range()
        step = red.get_slice_step()
        start = red.get_slice_value()
        scroll = []
        for part in PARTS.values():
            part.clear()
        for n in range(args.repeats):
            t = time.perf_counter()
            red.set_slice_value(min(hi, max(lo, start + (n - args.repeats // 2) * step)))
            frame(red)
            scroll.append(1000 * (time.perf_counter() - t))
        scroll_parts = {k: round(statistics.median(v), 1) for k, v in PARTS.items()}
        saved["scrolled"] = frame(red)
        red.set_slice_value(start)

        # threshold changes: re-threshold (segment + review states) and redraw the three slice views;
        # the page also refreshes its findings table and review progress (ReviewApp._refresh)
        thresholds = np.linspace(0.3, 0.7, args.repeats)
        update, redraw, refresh, page = [], [], [], []
        for part in PARTS.values():
            part.clear()
        for value in thresholds:
            t = time.perf_counter()
            app.session.set_display(threshold=float(value))
            t1 = time.perf_counter()
            app._refresh()
            t2 = time.perf_counter()
            for tag in ("Red", "Yellow", "Green"):
                frame(views[tag])
            t3 = time.perf_counter()
            update.append(1000 * (t1 - t))
            refresh.append(1000 * (t2 - t1))
            redraw.append(1000 * (t3 - t - (t2 - t1)))
            page.append(1000 * (t3 - t))
        threshold_parts = {k: round(statistics.median(v), 1) for k, v in PARTS.items()}
        saved["thresholded"] = frame(red)
        findings_t = time.perf_counter()
        n_findings = len(app.session.findings())
        findings_ms = 1000 * (time.perf_counter() - findings_t)

    result = {
        "command": " ".join(["python", "Testing/benchmarks/review_web_render.py", *(argv or sys.argv[1:])]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_implementation()} "
                   f"{platform.python_version()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}",
        "load_1min_at_start": round(load_at_start, 2),
        "size": list(args.size), "view_px": args.view, "repeats": args.repeats,
        "first_image_s": round(first_image_s, 3), "first_frame_bytes": len(first_red),
        "show_result_s": round(show_s, 3),
        "scroll_median_ms": round(statistics.median(scroll), 1), "scroll_max_ms": round(max(scroll), 1),
        "scroll_parts_median_ms": scroll_parts,
        "threshold_update_median_ms": round(statistics.median(update), 1),
        "threshold_redraw_3_views_median_ms": round(statistics.median(redraw), 1),
        "threshold_redraw_max_ms": round(max(redraw), 1),
        "threshold_render_parts_median_ms": threshold_parts,
        "threshold_page_refresh_median_ms": round(statistics.median(refresh), 1),
        "threshold_with_page_refresh_median_ms": round(statistics.median(page), 1),
        "findings_list_ms": round(findings_ms, 1), "findings": n_findings,
    }
    del open_only, first_all
    print(json.dumps(result, indent=1))
    if args.frames:
        Path(args.frames).mkdir(parents=True, exist_ok=True)
        for name, data in saved.items():
            (Path(args.frames) / f"{name}.jpg").write_bytes(data)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
