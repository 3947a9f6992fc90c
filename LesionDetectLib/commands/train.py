"""`lesiondetect train --method M --data DATASET --out MODEL [--config C] [...]`, and fine-tuning:
`lesiondetect train --init MODEL --data DATASET --out NEW [--register]`."""

from __future__ import annotations

import json

from ..errors import LesionDetectError


def add_parser(sub) -> None:
    from ..methods import method_names

    p = sub.add_parser("train", help="train a method on a dataset folder",
                       description="Train one of the methods on a dataset (dataset.json layout). "
                                   "Experiment configs live in Resources/configs/<method>/.")
    p.add_argument("--method", choices=method_names(), help="the method to train (with --init: the model's own, "
                                                            "which it may be left out for)")
    p.add_argument("--init", metavar="MODEL",
                   help="fine-tune this trained model folder: its weights and config, a short schedule (few epochs, "
                        "a tenth of its learning rate, one warm-up epoch) unless --config/--set/--epochs say "
                        "otherwise; the new card records the parent and the data (training.lineage)")
    p.add_argument("--recalibrate", action="store_true",
                   help="with --init: choose the decision thresholds again on this dataset (default: keep the "
                        "parent's; a case or two would overfit them)")
    p.add_argument("--register", action="store_true",
                   help="add the new model to your model library (see `lesiondetect models`) as the next version "
                        "of its method; `lesiondetect models use` makes it the default")
    p.add_argument("--data", required=True, help="dataset folder (with dataset.json)")
    p.add_argument("--out", required=True, help="model directory to create")
    p.add_argument("--config", help="JSON config file; values override the method's defaults (an unknown key "
                                    "is an error)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    p.add_argument("--weights", help="local ImageNet/COCO weight file for transfer learning")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override one config value (JSON value), e.g. --set lr=0.001 --set batch_size=16; "
                        "the key must be one of the trainer's or the method's")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.set_defaults(func=run)


def parse_key_values(items: list[str]) -> dict:
    """["parse_tile=64", "parse_precision=bfloat16"] -> {"parse_tile": 64, "parse_precision":
    "bfloat16"}: each value read as JSON, or kept as text when it is not JSON."""
    values = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise LesionDetectError(f"--set {item!r}: expected KEY=VALUE")
        try:
            values[key] = json.loads(value)
        except json.JSONDecodeError:
            values[key] = value
    return values


def parse_overrides(args) -> dict:
    overrides = parse_key_values(args.set)
    for key in ("epochs", "seed", "weights"):
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    return overrides


def run(args) -> int:
    from ..training import train

    if not args.method and not args.init:
        raise LesionDetectError("train needs --method NAME (or --init MODEL to fine-tune a trained model)")
    if args.recalibrate and not args.init:
        raise LesionDetectError("--recalibrate goes with --init (a new model's thresholds are always chosen)")
    if args.register:  # the library is checked before any training, so a long run does not fail at the end
        from ..library import library_dir

        library_dir()
    out = train(args.method, args.data, args.out, config_path=args.config, overrides=parse_overrides(args),
                device=args.device, resume=args.resume, init=args.init, recalibrate=args.recalibrate)
    print(f"model written to {out}")
    if args.register:
        from ..library import register

        entry = register(out)
        print(f"registered as {entry.method} version {entry.version} in {entry.path.parent.parent}; "
              f"`lesiondetect models use {entry.method} {entry.version}` makes it the default")
    return 0
