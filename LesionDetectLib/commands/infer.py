"""`lesiondetect infer (--model M | --method NAME) --input IMAGE --out DIR [...]`."""

from __future__ import annotations

from pathlib import Path

from ..errors import LesionDetectError


def add_parser(sub) -> None:
    from ..methods import method_names

    p = sub.add_parser("infer", help="run a trained model on an image and write Slicer-ready results",
                       description="Writes probability.nrrd, mask.seg.nrrd, boxes/points .mrk.json, classes and "
                                   "prediction.json into --out (whichever the method produces).")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="model directory (with model.json)")
    src.add_argument("--method", choices=method_names(), help="use the model shipped for this method")
    p.add_argument("--input", required=True, help="image file or DICOM series folder")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--threshold", type=float, help="decision threshold (default: the model card's)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a method's inference option (JSON value), e.g. --set slices=10:40 for liver-frcnn")
    p.add_argument("--mrb", help="also write a Slicer scene bundle (.mrb) with everything styled")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier prediction in --out")
    p.set_defaults(func=run)


def resolve_model(args) -> Path:
    if args.model:
        return Path(args.model)
    from ..models import shipped_model_dir

    path = shipped_model_dir(args.method)
    if path is None:
        raise LesionDetectError(f"no model is shipped for method '{args.method}'; train one and pass --model")
    return path


def run(args) -> int:
    from ..io import read_image
    from ..prediction import write_prediction
    from ..training import load_trained

    model_path = resolve_model(args)
    method, model, card, device = load_trained(model_path, device=args.device)
    from .train import parse_key_values

    options = parse_key_values(args.set)  # inference options: the method checks them, not the trainer
    method.check_inference_options(options)
    image = read_image(args.input)
    if args.threshold is not None:
        options["threshold"] = args.threshold
    pred = method.predict(model, card, image, device, **options)
    pred.provenance.input = str(args.input)
    written = write_prediction(pred, args.out, overwrite=args.overwrite)
    for key, path in written.items():
        print(f"{key:13s} {path}")
    if args.mrb:
        from ..scene_bundle import write_scene_bundle

        print(f"{'scene bundle':13s} {write_scene_bundle(args.input, args.out, args.mrb)}")
    return 0
