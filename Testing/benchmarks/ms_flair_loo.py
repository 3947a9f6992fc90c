"""Leave-one-case-out on the real MS FLAIR cases (method 004), old default, new recipe and the paper's network, one command:

    .venv/bin/python Testing/benchmarks/ms_flair_loo.py [--data ../shared/data/ms_flair] [--work /tmp/ms_flair_loo]

For each of the cases in ../shared/data/ms_flair it trains on the others (plus --synthetic
full-size synthetic heads, 3 by default, as the shipped model) and tests on it, with the
default model (small 2.5-D U-Net), the issue #17 recipe (Resources/configs/ms-flair-fcn/lesion-level.json)
and the paper's network (paper.json), through the same `lesiondetect` train and evaluate code.
Both operating points are reported: "lesion" (threshold, minimum component volume and
component max-probability chosen for lesion F1 on the training cases) and "pixel" (F-max over
the training cases' voxels); plus lesion detection by size bin (< 10, 10-100, > 100 mm^3).  Results: Resources/benchmarks/ms_flair_loo.json and .md (per case, mean; the
paper's best test pixel F was 0.55).  Models are kept in --work; a rerun reuses them.

Experiments: --models default --default-config C trains the default model with config C
(labelled "defaults + C" in the results); --cases X runs only the fold that
tests on X, so folds can run as separate processes (--out to a scratch file), and a final
--evaluate-only run collects them into one results file.
The issue #17 recipe comparison (small-plaque loss, 5-slice context, random-contrast
synthetic heads; parallel folds, GPU) is ms_flair_recipes.py, which uses this file's fold code.
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

MODELS = {"default (2.5-D U-Net)": None, "paper's network": ROOT / "Resources/configs/ms-flair-fcn/paper.json",
          "new recipe (issue 17)": ROOT / "Resources/configs/ms-flair-fcn/lesion-level.json"}
KIND = {"default (2.5-D U-Net)": "default", "paper's network": "paper", "new recipe (issue 17)": "new"}
KEYS = ("pixel_precision", "pixel_recall", "pixel_f", "dice", "lesion_sensitivity", "lesion_precision", "lesion_f1")


def synthetic_cases(work: Path, n: int, params: dict | None = None, size: str = "full", jobs: int = 1) -> list[dict]:
    """`n` synthetic ms-flair heads (seed 0, full size, as the shipped model's) for training;
    `params` are synth parameters (e.g. {"random_contrast": True}), `jobs` generator processes."""
    if n <= 0:
        return []
    from LesionDetectLib.synth import generate

    folder = work / synthetic_tag(n, params, size)
    if not (folder / "dataset.json").exists():
        generate("ms-flair", folder, cases=n, seed=0, size=size, params=params, jobs=jobs)
    return [{"id": c.id, "patient": c.patient, "image": str(c.image), "mask": str(c.mask), "split": "train"}
            for c in load_dataset(folder).cases]


def synthetic_tag(n: int, params: dict | None = None, size: str = "full") -> str:
    """Folder name part of a synthetic set: "synthetic_3" for the shipped model's heads."""
    extra = "".join(f"_{k}-{v}" for k, v in sorted((params or {}).items())) + ("" if size == "full" else f"_{size}")
    return f"synthetic_{n}{extra}"


def fold_dataset(data: Path, cases: list[str], test: str, work: Path, synthetic: int = 0,
                 synth_params: dict | None = None, synth_size: str = "full") -> Path:
    tag = synthetic_tag(synthetic, synth_params, synth_size).replace("synthetic_", "_synth") if synthetic else ""
    folder = work / f"fold_{test}{tag}"
    if not (folder / "dataset.json").exists():
        write_dataset_json(folder, f"ms_flair_loo_test_{test}", "MR", [
            {"id": c, "patient": c, "image": str(data / c / "flair.nii.gz"), "mask": str(data / c / "lesions.nii.gz"),
             "split": "test" if c == test else "train"} for c in cases]
            + synthetic_cases(work, synthetic, synth_params, synth_size))
    return folder


def fold_rows(label: str, folder: Path, model_dir: Path, test: str, device: str, t0: float) -> list[dict]:
    """The result rows (lesion and pixel operating points) of a trained fold model on its test case."""
    method, model, card, dev = load_trained(model_dir, device=device)
    if "lesion" not in card.thresholds:  # a fold model of an earlier run: add the lesion operating point
        card.thresholds.update(method.calibrate(model, load_dataset(folder), card.config, dev))
    rows = []
    for point, threshold in (("lesion", None), ("pixel", card.thresholds["pixel"])):
        metrics = method.evaluate(model, card, load_dataset(folder), dev, split="test", threshold=threshold)
        case = metrics["cases"][0]
        rows.append({"model": label, "test_case": test, "operating_point": point, **{k: case[k] for k in KEYS},
                     "truth_lesions": case["truth_lesions"], "predicted_lesions": case["predicted_lesions"],
                     "threshold": metrics["threshold"], "min_lesion_mm3": metrics["operating_point"]["min_lesion_mm3"],
                     "component": metrics["operating_point"]["component"], "by_size": case["by_size"],
                     "train_seconds": card.training.get("seconds"),
                     "train_tiles": card.training.get("train_samples"), "model_dir": str(model_dir),
                     "wall_seconds": round(time.perf_counter() - t0, 1)})
        print(f"{label:24s} {test:28s} {point:7s}" + " ".join(f"{k}={case[k]:.3f}" for k in KEYS), flush=True)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/ms_flair"))
    parser.add_argument("--work", default="/tmp/ms_flair_loo")
    parser.add_argument("--out", default=str(ROOT / "Resources/benchmarks/ms_flair_loo"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or auto")
    parser.add_argument("--evaluate-only", action="store_true",
                        help="train nothing: evaluate the fold models already in --work, skip the missing ones")
    parser.add_argument("--models", nargs="+", choices=("default", "paper", "new"), default=("default", "paper", "new"))
    parser.add_argument("--synthetic", type=int, default=3,
                        help="full-size synthetic heads (seed 0) added to every fold's training cases (0: none)")
    parser.add_argument("--cases", nargs="+", help="test only these cases (default: every case)")
    parser.add_argument("--default-config", help="a config file for the default model (experiments)")
    parser.add_argument("--collect", nargs="+", metavar="JSON[=LABEL]",
                        help="train and evaluate nothing: merge the rows of earlier results files (e.g. one per "
                             "fold, run as separate processes) into --out; =LABEL appends LABEL to that file's "
                             "model names")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data, work = Path(args.data).resolve(), Path(args.work)
    cases = sorted(p.name for p in data.iterdir() if (p / "flair.nii.gz").exists())
    rows = []
    default_config = args.default_config
    chosen = {(f"defaults + {Path(default_config).name}" if config is None and default_config else label): config
              for label, config in MODELS.items() if KIND[label] in args.models}
    if args.collect:
        chosen = {}
        for spec in args.collect:
            path, _, suffix = spec.partition("=")
            for row in json.loads(Path(path).read_text())["rows"]:
                row = {**row, "model": row["model"] + (f" {suffix}" if suffix else "")}
                row.setdefault("operating_point", "pixel")
                rows.append(row)
                chosen.setdefault(row["model"], None)
    for label, config in ([] if args.collect else chosen.items()):
        for test in args.cases or cases:
            folder = fold_dataset(data, cases, test, work, args.synthetic)
            model_dir = folder / ("model_default" if config is None and not default_config else
                                  f"model_{Path(config or default_config).stem}")
            t0 = time.perf_counter()
            if not (model_dir / "model.json").exists():
                if args.evaluate_only:
                    continue
                train("ms-flair-fcn", folder, model_dir, config_path=default_config if config is None else config,
                      device=args.device, resume=True)
            rows += fold_rows(label, folder, model_dir, test, args.device, t0)
    means = []
    for label in chosen:
        for point in ("lesion", "pixel"):
            mine = [r for r in rows if r["model"] == label and r.get("operating_point", "pixel") == point]
            if mine:
                means.append({"model": label, "operating_point": point, "folds": len(mine),
                              **{k: sum(r[k] for r in mine) / len(mine) for k in KEYS}})
    command = " ".join(["python Testing/benchmarks/ms_flair_loo.py", *(sys.argv[1:] if argv is None else argv)])
    if args.collect:  # the machine and commands of the runs that measured the rows
        runs = [json.loads(Path(spec.partition("=")[0]).read_text()) for spec in args.collect]
        command += " (rows measured by: " + "; ".join(r.get("command", "?") for r in runs) + ")"
        args.threads = None
    result = {"command": command, "machine": (runs[0]["machine"] if args.collect else f"{platform.machine()}, "
              f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")
              + (f", {torch.cuda.get_device_name()}" if args.device != "cpu" and torch.cuda.is_available()
                 and not args.collect else ""), "cases": cases, "rows": rows,
              "means": means, "paper_pixel_f": 0.55}
    out = Path(args.out)
    write_json(out.with_suffix(".json"), result, overwrite=True)
    write_text(out.with_suffix(".md"), markdown(result), overwrite=True)
    print(markdown(result))
    return 0


def markdown(result: dict) -> str:
    head = ("| model | test case | operating point | pixel P | pixel R | pixel F | Dice | lesion sens | lesion prec | "
            "lesion F1 | GT / pred lesions | threshold, min mm3, component |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in result["rows"]:
        point = r.get("operating_point", "pixel")
        extra = f", {r['min_lesion_mm3']:g}, {r['component']:.2f}" if point == "lesion" else ""
        lines.append(f"| {r['model']} | {r['test_case']} | {point} | " + " | ".join(f"{r[k]:.3f}" for k in KEYS)
                     + f" | {r['truth_lesions']} / {r['predicted_lesions']} | {r['threshold']:.3f}{extra} |")
    for m in result["means"]:
        lines.append(f"| **{m['model']}** | **mean of {m['folds']} folds** | {m.get('operating_point', 'pixel')} | "
                     + " | ".join(f"**{m[k]:.3f}**" for k in KEYS) + " | | |")
    lines.append("| paper (19 test patients, own data) | | | | | | 0.55 | | | | | |")
    sized = [r for r in result["rows"] if r.get("by_size") and r.get("operating_point") == "lesion"]
    if sized:
        bins = list(sized[0]["by_size"])
        lines += ["", "Lesion detection by size, lesion operating point (true lesions found / true lesions; "
                  "true predicted / predicted):", "",
                  "| model | test case | " + " | ".join(bins) + " |", "|---|---|" + "---|" * len(bins)]
        for r in sized:
            lines.append(f"| {r['model']} | {r['test_case']} | " + " | ".join(
                f"{r['by_size'][b]['detected']}/{r['by_size'][b]['truth']}; {r['by_size'][b]['true_pred']}/"
                f"{r['by_size'][b]['pred']}" for b in bins) + " |")
    return "\n".join(lines) + f"\n\nMachine: {result['machine']}. Command: `{result['command']}`.\n"


if __name__ == "__main__":
    raise SystemExit(main())
