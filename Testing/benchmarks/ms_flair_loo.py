"""Leave-one-case-out on the real MS FLAIR cases (method 004), both models, one command:

    .venv/bin/python Testing/benchmarks/ms_flair_loo.py [--data ../shared/data/ms_flair] [--work /tmp/ms_flair_loo]

For each of the cases in ../shared/data/ms_flair it trains on the others and tests on it,
once with the default model (small 2.5-D U-Net) and once with the paper's network
(Resources/configs/ms-flair-fcn/paper.json), through the same `lesiondetect` train and
evaluate code.  Thresholds are chosen on the training cases only (F-max on their full
slices).  Results: Resources/benchmarks/ms_flair_loo.json and .md (per case, mean; the
paper's best test pixel F was 0.55).  Models are kept in --work; a rerun reuses them.

Experiments: --models default --default-config C trains the default model with config C
(labelled "defaults + C" in the results); --cases X runs only the fold that
tests on X, so folds can run as separate processes (--out to a scratch file), and a final
--evaluate-only run collects them into one results file.
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

import torch  # noqa: E402

from LesionDetectLib.dataset import load_dataset, write_dataset_json  # noqa: E402
from LesionDetectLib.files import write_json, write_text  # noqa: E402
from LesionDetectLib.training import load_trained, train  # noqa: E402

MODELS = {"default (2.5-D U-Net)": None, "paper's network": ROOT / "Resources/configs/ms-flair-fcn/paper.json"}
KEYS = ("pixel_precision", "pixel_recall", "pixel_f", "dice", "lesion_sensitivity", "lesion_precision", "lesion_f1")


def fold_dataset(data: Path, cases: list[str], test: str, work: Path) -> Path:
    folder = work / f"fold_{test}"
    if not (folder / "dataset.json").exists():
        write_dataset_json(folder, f"ms_flair_loo_test_{test}", "MR", [
            {"id": c, "patient": c, "image": str(data / c / "flair.nii.gz"), "mask": str(data / c / "lesions.nii.gz"),
             "split": "test" if c == test else "train"} for c in cases])
    return folder


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/ms_flair"))
    parser.add_argument("--work", default="/tmp/ms_flair_loo")
    parser.add_argument("--out", default=str(ROOT / "Resources/benchmarks/ms_flair_loo"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="train nothing: evaluate the fold models already in --work, skip the missing ones")
    parser.add_argument("--models", nargs="+", choices=("default", "paper"), default=("default", "paper"))
    parser.add_argument("--cases", nargs="+", help="test only these cases (default: every case)")
    parser.add_argument("--default-config", help="a config file for the default model (experiments)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data, work = Path(args.data).resolve(), Path(args.work)
    cases = sorted(p.name for p in data.iterdir() if (p / "flair.nii.gz").exists())
    rows = []
    default_config = args.default_config
    chosen = {(f"defaults + {Path(default_config).name}" if config is None and default_config else label): config
              for label, config in MODELS.items() if ("default" if config is None else "paper") in args.models}
    for label, config in chosen.items():
        for test in args.cases or cases:
            folder = fold_dataset(data, cases, test, work)
            model_dir = folder / ("model_default" if config is None else f"model_{Path(config).stem}")
            t0 = time.perf_counter()
            if not (model_dir / "model.json").exists():
                if args.evaluate_only:
                    continue
                train("ms-flair-fcn", folder, model_dir, config_path=default_config if config is None else config,
                      device=args.device, resume=True)
            method, model, card, device = load_trained(model_dir, device=args.device)
            metrics = method.evaluate(model, card, load_dataset(folder), device, split="test")
            case = metrics["cases"][0]
            rows.append({"model": label, "test_case": test, **{k: case[k] for k in KEYS},
                         "truth_lesions": case["truth_lesions"], "predicted_lesions": case["predicted_lesions"],
                         "threshold": metrics["threshold"], "train_seconds": card.training.get("seconds"),
                         "train_tiles": card.training.get("train_samples"), "model_dir": str(model_dir),
                         "wall_seconds": round(time.perf_counter() - t0, 1)})
            print(f"{label:24s} {test:28s} " + " ".join(f"{k}={case[k]:.3f}" for k in KEYS), flush=True)
    means = []
    for label in chosen:
        mine = [r for r in rows if r["model"] == label]
        if mine:
            means.append({"model": label, "folds": len(mine), **{k: sum(r[k] for r in mine) / len(mine) for k in KEYS}})
    command = " ".join(["python Testing/benchmarks/ms_flair_loo.py", *(sys.argv[1:] if argv is None else argv)])
    result = {"command": command, "machine": f"{platform.machine()}, "
              f"{torch.get_num_threads()} torch threads, torch {torch.__version__}"
              + (f", {torch.cuda.get_device_name()}" if args.device != "cpu" and torch.cuda.is_available() else ""), "cases": cases, "rows": rows,
              "means": means, "paper_pixel_f": 0.55}
    out = Path(args.out)
    write_json(out.with_suffix(".json"), result, overwrite=True)
    write_text(out.with_suffix(".md"), markdown(result), overwrite=True)
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    head = "| model | test case | pixel P | pixel R | pixel F | Dice | lesion sens | lesion prec | lesion F1 | GT / pred lesions | threshold |"
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in result["rows"]:
        lines.append(f"| {r['model']} | {r['test_case']} | " + " | ".join(f"{r[k]:.3f}" for k in KEYS)
                     + f" | {r['truth_lesions']} / {r['predicted_lesions']} | {r['threshold']:.3f} |")
    for m in result["means"]:
        lines.append(f"| **{m['model']}** | **mean of {m['folds']} folds** | " + " | ".join(f"**{m[k]:.3f}**" for k in KEYS) + " | | |")
    lines.append("| paper (19 test patients, own data) | | | | 0.55 | | | | | | |")
    return "\n".join(lines) + f"\n\nMachine: {result['machine']}. Command: `{result['command']}`.\n"


if __name__ == "__main__":
    raise SystemExit(main())
