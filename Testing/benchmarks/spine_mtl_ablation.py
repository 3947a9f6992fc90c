"""The whole ablation table of spine-mtl (paper 002, Tables 1-4) on synthetic spine CT, one command.

    .venv/bin/python Testing/benchmarks/spine_mtl_ablation.py --work /tmp/spine-ablation \
        [--train DS --test DS | --train-cases 48 --test-cases 16] [--rows all] [--seeds 0 1] \
        [--config Resources/configs/spine-mtl/gpu-paper.json] [--set epochs=10 ...] [--name NAME]

Every row (Resources/configs/spine-mtl/ablation-<row>.json: single-task, soft-sharing,
hard-sharing-3, hard-sharing-4, hard-sharing-pi, hard-sharing-mlp, spl, spl-ls, final) is
trained with each seed on the training studies by the shared trainer and evaluated on the
held-out studies; the result is the paper's tables (slice- and vertebra-level sensitivity and
specificity per class, mean ± SD over the seeds) in Resources/benchmarks/<name>.{md,json}.
`--config` adds a size (e.g. the paper's DenseNet121 for a GPU) under every row; `--set`
overrides keys of every run (e.g. epochs).  Datasets are generated when not given: spine-ct
full size, seed 1 for training and seed 2 for testing.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from LesionDetectLib import synth  # noqa: E402
from LesionDetectLib.commands.train import parse_key_values  # noqa: E402
from LesionDetectLib.dataset import load_dataset  # noqa: E402
from LesionDetectLib.files import write_json, write_text  # noqa: E402
from LesionDetectLib.methods import get_method  # noqa: E402
from LesionDetectLib.training import load_trained, merge_config, read_config, train  # noqa: E402

CONFIGS = ROOT / "Resources" / "configs" / "spine-mtl"
ROWS = ["single-task", "soft-sharing", "hard-sharing-3", "hard-sharing-4", "hard-sharing-pi", "hard-sharing-mlp",
        "spl", "spl-ls", "final"]


def dataset(path: str | None, work: Path, name: str, cases: int, seed: int, jobs: int) -> Path:
    if path:
        return Path(path)
    out = work / name
    if not (out / "dataset.json").exists():
        synth.generate("spine-ct", out, cases=cases, seed=seed, size="full", jobs=jobs)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", required=True, type=Path)
    ap.add_argument("--train")
    ap.add_argument("--test")
    ap.add_argument("--train-cases", type=int, default=48)
    ap.add_argument("--test-cases", type=int, default=16)
    ap.add_argument("--rows", nargs="+", default=["all"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    ap.add_argument("--config", help="a size config under every row (e.g. gpu-paper.json)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--name", default="spine-mtl-ablation")
    ap.add_argument("--results", type=Path, default=ROOT / "Resources" / "benchmarks")
    args = ap.parse_args(argv)
    rows = ROWS if args.rows == ["all"] else args.rows
    args.work.mkdir(parents=True, exist_ok=True)
    train_ds = dataset(args.train, args.work, "train", args.train_cases, 1, args.jobs)
    test_ds = load_dataset(dataset(args.test, args.work, "test", args.test_cases, 2, args.jobs))
    method = get_method("spine-mtl")
    size = read_config(args.config) if args.config else {}
    overrides = parse_key_values(args.set)
    runs = []
    t0 = time.perf_counter()
    for row in rows:
        for seed in args.seeds:
            out = args.work / f"model-{row}-seed{seed}"
            config = merge_config(size, read_config(CONFIGS / f"ablation-{row}.json"), overrides, {"seed": seed})
            if not (out / "model.json").exists():
                started = time.perf_counter()
                train("spine-mtl", train_ds, out, overrides=config, device=args.device)
                print(f"{row} seed {seed}: trained in {time.perf_counter() - started:.0f} s", flush=True)
            _, model, card, device = load_trained(out, device=args.device)
            metrics = method.evaluate(model, card, test_ds, device, split="all")
            metrics.update(name=row, seed=seed, thresholds=card.thresholds,
                           train_seconds=card.training.get("seconds"))
            runs.append(metrics)
            print(method.report(metrics), flush=True)
    table = method.combine(runs)
    table["setup"] = {"command": " ".join(sys.argv), "machine": f"{platform.machine()} {platform.processor()}",
                      "train": str(train_ds), "test": str(test_ds.root), "test_cases": len(test_ds.cases),
                      "rows": rows, "seeds": args.seeds, "size_config": args.config, "overrides": overrides,
                      "minutes": round((time.perf_counter() - t0) / 60, 1)}
    args.results.mkdir(parents=True, exist_ok=True)
    write_json(args.results / f"{args.name}.json", table, overwrite=True)
    text = (f"# spine-mtl ablation on synthetic spine CT ({args.name})\n\nCommand: `{table['setup']['command']}`\n\n"
            f"Train: {train_ds}; test: {test_ds.root} ({len(test_ds.cases)} studies never seen); seeds "
            f"{args.seeds}; {table['setup']['minutes']} min.\n\n```\n{method.report(table)}\n```\n")
    write_text(args.results / f"{args.name}.md", text, overwrite=True)
    print(method.report(table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
