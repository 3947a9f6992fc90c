"""`lesiondetect demo --out DIR`: the main job end to end on a generated study.

1. generate a synthetic study of the method's kind (`lesiondetect synth`), with ground truth;
2. run the method's shipped model on it (`lesiondetect infer --method ...`) and print how it
   did against the study's truth (`demo_check`: lesions found / missed / false and lesion-level
   precision, recall, F1, or the class result against the label; also in truth_check.json); a
   method with no shipped model shows the study's ground truth instead, and says so;
3. write the Slicer-ready files (probability map, segmentation, boxes, points) and, last,
   one scene bundle (.mrb) that opens in 3D Slicer with everything styled.
"""

from __future__ import annotations

import time
from pathlib import Path

from ..errors import LesionDetectError, input_error

# which synthetic study (kind, parameters, seed) each method's demo runs on; the bone-scan
# seed draws a crop with metastatic hot spots in it
DEMO_STUDIES = {"ms-flair-fcn": ("ms-flair", {}, 7), "bone-ct-patch": ("bone-ct", {}, 7),
                "liver-frcnn": ("liver-ct", {}, 7), "spine-mtl": ("spine-ct", {}, 7),
                "bone-scan-cls": ("bone-scan", {"view": "crop", "positive_fraction": 1.0}, 4)}
BUNDLE = "LesionDetectDemo.mrb"
CHECK_FILE = "truth_check.json"  # how the model did against the study's truth (demo_check.TruthCheck)


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="generate a study, run a detector on it, write Slicer-ready results",
                       description="Generates a synthetic study, runs the method's shipped model on it and writes "
                                   "Slicer-ready files plus one scene bundle (.mrb) to open in 3D Slicer.")
    p.add_argument("--out", default="demo-output", help="output folder (must not hold an earlier demo)")
    p.add_argument("--method", default="ms-flair-fcn", choices=sorted(DEMO_STUDIES))
    p.add_argument("--size", default="full", choices=["small", "full"],
                   help="study size: full = real-scan size (default), small = seconds")
    p.add_argument("--seed", type=int, help="the study's seed (default: the method's demo study)")
    p.add_argument("--device", default="auto")
    p.add_argument("--no-mrb", action="store_true", help="skip the scene bundle (it needs slicer-core)")
    p.set_defaults(func=run)


def run(args) -> int:
    from .. import synth
    from ..dataset import load_dataset
    from ..io import read_image, require_scalar_volume
    from ..files import write_json
    from ..models import shipped_model_dir
    from ..prediction import write_prediction

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise input_error(out, "already exists and is not empty; choose another --out (nothing was changed)")
    kind, params, seed = DEMO_STUDIES[args.method]
    seed = seed if args.seed is None else args.seed
    t0 = time.perf_counter()
    study = load_dataset(synth.generate(kind, out / "study", cases=1, seed=seed, size=args.size, params=params))
    case = study.cases[0]
    print(f"study        {study.root} ({kind}, {args.size}, seed {seed})")
    image = require_scalar_volume(read_image(case.image), case.image, allow_2d=kind == "bone-scan")
    times = {"study": time.perf_counter() - t0}
    model_dir = shipped_model_dir(args.method)
    if model_dir is not None:
        pred, check = _run_model(args, model_dir, image, case, study)
    else:
        pred, check = _ground_truth(args.method, image, case), None
    times["model"] = time.perf_counter() - t0 - sum(times.values())
    written = write_prediction(pred, out / "prediction")
    for key, path in written.items():
        print(f"{key:12s} {path}")
    print(f"findings     {len(pred.points)} points, {len(pred.boxes)} boxes, "
          f"{int(pred.mask.sum()) if pred.mask is not None else 0} mask voxels")
    if check is not None:
        for line in check.lines():
            print(line)
        write_json(out / CHECK_FILE, {"method": args.method, "model_id": pred.provenance.model_id,
                                      "study": {"kind": kind, "size": args.size, "seed": seed, "case": case.id},
                                      **check.to_dict()})
    elif model_dir is not None:
        print("verdict      the prediction holds nothing this study's truth can judge")
    times["files"] = time.perf_counter() - t0 - sum(times.values())
    if not args.no_mrb:
        from ..scene_bundle import write_scene_bundle

        try:
            mrb = write_scene_bundle(case.image, out / "prediction", out / BUNDLE)
        except LesionDetectError as exc:
            raise LesionDetectError(f"{exc} (the other results are written in {out}; use --no-mrb to skip)") from None
        times["bundle"] = time.perf_counter() - t0 - sum(times.values())
        print(f"done in {_timing(times)}; open this in 3D Slicer:")
        print(mrb)
    else:
        print(f"done in {_timing(times)}")
    return 0


def _timing(times: dict) -> str:
    """'12.3 s (study 2.0 s, model 9.1 s, ...)': the demo's time and where it went."""
    parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in times.items())
    return f"{sum(times.values()):.1f} s ({parts})"


def _run_model(args, model_dir, image, case, study):
    """(prediction, how it did against the case's truth) with the method's shipped model."""
    from ..demo_check import Truth, check_against_truth
    from ..models import synthetic_notice
    from ..training import load_trained

    method, model, card, device = load_trained(model_dir, device=args.device)
    print(f"model        {model_dir} ({card.model_id})")
    notice = synthetic_notice(card)
    if notice:
        print(notice)
    pred = method.predict(model, card, image, device)
    pred.provenance.input = str(case.image)
    truth = Truth.of_case(case, pred.geometry, study.labels)
    settings = card.config if isinstance(card.config, dict) else {}  # the model's, not the trainer's
    return pred, check_against_truth(pred, truth, hit_radius_mm=settings.get("hit_radius_mm"))


def _ground_truth(method: str, image, case):
    """No trained model ships for this method yet: the ground truth the study was drawn with."""
    from .. import markups
    from ..dataset import read_mask
    from ..geometry import Geometry
    from ..prediction import Prediction, Provenance

    geometry = Geometry.of(image)
    print(f"model        none shipped for {method}: showing the study's ground truth instead of a detector's "
          "output (nothing is scored)")
    return Prediction(geometry=geometry, provenance=Provenance(method="synthetic ground truth", input=str(case.image)),
                      mask=read_mask(case.mask).reshape(geometry.shape) if case.mask else None, threshold=0.5,
                      points=markups.read_points(case.points) if case.points else [],
                      boxes=markups.read_boxes(case.boxes) if case.boxes else [])
