"""liver-frcnn on held-out synthetic liver CT: train on one synthetic study, FROC on another.

    .venv/bin/python Testing/benchmarks/liver_frcnn_experiment.py --work /tmp/lf \
        --config Resources/configs/liver-frcnn/cpu-resnet18-256.json [--train-cases 30] [--test-cases 8]

Generates (or reuses) `work/train` (seed 1) and `work/test` (seed 2) with the library's
liver-ct generator at full size (512 x 512, 2.5-5 mm slices), trains with the shared trainer,
evaluates FROC on every key slice of the test study, plots the curve and writes
Resources/benchmarks/liver-frcnn_<config>.json / .md with the machine, the command and the numbers.
Slow (minutes to hours on CPU): not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from LesionDetectLib.commands.train import parse_key_values  # noqa: E402
from LesionDetectLib.dataset import load_dataset  # noqa: E402
from LesionDetectLib.methods import get_method  # noqa: E402
from LesionDetectLib.metrics.froc import plot_froc  # noqa: E402
from LesionDetectLib.synth import generate  # noqa: E402
from LesionDetectLib.training import load_trained, read_config, train, training_config  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--config", required=True, type=Path)
    ap.add_argument("--train-cases", type=int, default=30)
    ap.add_argument("--test-cases", type=int, default=8)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    ap.add_argument("--jobs", type=int, default=1, help="processes for generating the synthetic studies")
    ap.add_argument("--results", type=Path, default=ROOT / "Resources" / "benchmarks")
    args = ap.parse_args(argv)

    overrides = parse_key_values(args.set)  # as `lesiondetect train --set` reads them
    training_config(get_method("liver-frcnn"), args.config, overrides)  # unknown keys: fail before the data
    for name, seed, n in (("train", 1, args.train_cases), ("test", 2, args.test_cases)):
        if not (args.work / name / "dataset.json").exists():
            generate("liver-ct", args.work / name, cases=n, seed=seed, size="full", jobs=args.jobs)
    tag = args.config.stem + "".join(f"_{k}{v}" for k, v in overrides.items())
    model_dir = args.work / f"model_{tag}"
    t0 = time.perf_counter()
    if not (model_dir / "model.json").exists():
        train("liver-frcnn", args.work / "train", model_dir, config_path=args.config, overrides=overrides,
              device=args.device, resume=True)
    train_s = time.perf_counter() - t0
    method, model, card, device = load_trained(model_dir, device=args.device)
    t0 = time.perf_counter()
    metrics = method.evaluate(model, card, load_dataset(args.work / "test"), device, split="all")
    eval_s = time.perf_counter() - t0
    print(method.report(metrics))
    args.results.mkdir(parents=True, exist_ok=True)
    if "curve" in metrics:
        plot_froc(metrics, args.work / f"froc_{tag}.png", title=f"liver-frcnn {tag}, held-out synthetic liver CT")
    record = {
        "command": " ".join([".venv/bin/python", "Testing/benchmarks/liver_frcnn_experiment.py", *sys.argv[1:]]),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
                   f"load average {os.getloadavg()[0]:.1f} at the end"
                   + (f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""),
        "torch": torch.__version__,
        "config": {k: v for k, v in read_config(args.config).items()} | overrides,
        "train_cases": args.train_cases, "test_cases": args.test_cases,
        "train_samples": card.training.get("train_samples"), "val_samples": card.training.get("val_samples"),
        "epochs_done": len(card.training.get("history", [])), "history": card.training.get("history"),
        "train_seconds": card.training.get("seconds", round(train_s, 1)), "eval_seconds": round(eval_s, 1),
        "threshold_at_1fp_on_val": card.thresholds.get("score"),
        "metrics": {k: v for k, v in metrics.items() if k != "curve"},
    }
    out = args.results / f"liver-frcnn_{tag}.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
