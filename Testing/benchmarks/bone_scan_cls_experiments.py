"""Method 001 experiments, one command: the paper's table (accuracy, recall, precision, F1 per
network) plus AUC, average precision, specificity and confusion matrices, mean +- SD over
seeds, on the real BS-80K right-chest anterior crops (or any folder of scintigrams with a
label table), with ROC and PR plots:

    .venv/bin/python Testing/benchmarks/bone_scan_cls_experiments.py \
        [--images ../shared/data/bone_scan_bs80k/anterior] [--labels .../labels.tsv] \
        [--archs compact resnet50 vgg19 densenet121] [--seeds 0 1 2] [--config FILE] [--set epochs=30 ...] \
        [--work /tmp/bone_scan_cls] [--name bone-scan-cls-bs80k] [--device auto]

The paper's networks on 2 CPU cores: `--archs resnet50 densenet121 vgg19 --seeds 0 --config
Resources/configs/bone-scan-cls/cpu-paper.json`; with ImageNet files on a GPU: `--config
Resources/configs/bone-scan-cls/gpu-paper.json --device cuda`.  Synthetic whole-body scans: `lesiondetect synth bone-scan --out WB --cases 240 --size small`,
then `--data WB --set input_size=[160,56] --set epochs=15`.  Each seed is also the split seed, so the SD covers both the training noise and which
patients land in the 30 % test split.  Results: Resources/benchmarks/<name>.json / .md /
-roc.png / -pr.png.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from LesionDetectLib.commands.train import parse_key_values  # noqa: E402
from LesionDetectLib.dataset import load_dataset, write_dataset_json  # noqa: E402
from LesionDetectLib.methods import get_method  # noqa: E402
from LesionDetectLib.training import config_defaults, load_trained, train, training_config  # noqa: E402

SHARED = ROOT.parent / "shared" / "data" / "bone_scan_bs80k" / "anterior"


def label_table_dataset(images: Path, labels: Path, out: Path, name: str) -> Path:
    """dataset.json over a folder of images and a `image<TAB>label` table (absolute paths, one
    patient per image: BS-80K's file numbers are patient numbers)."""
    cases = []
    with open(labels, newline="") as f:
        for row in csv.reader(f, delimiter="\t"):
            if not row or row[0].startswith("#") or row[0] == "image":
                continue
            path = (images / row[0]).resolve()
            cases.append({"id": path.stem, "patient": path.stem, "image": str(path), "label": int(row[1])})
    out.mkdir(parents=True, exist_ok=True)
    write_dataset_json(out, name, "NM", cases, labels={"0": "normal", "1": "metastasis"}, overwrite=True)
    return out


def shown(path: Path) -> str:
    """A data path as the README quotes it (../shared/... from the project root)."""
    try:
        return "../" + str(path.resolve().relative_to(ROOT.parent.resolve()))
    except ValueError:
        return str(path)


def plot_curves(runs_by_arch: dict, path_roc: Path, path_pr: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import precision_recall_curve, roc_curve

    for path, kind in ((path_roc, "roc"), (path_pr, "pr")):
        fig, ax = plt.subplots(figsize=(5, 4.5), dpi=120)
        for arch, runs in runs_by_arch.items():
            for k, run in enumerate(runs):
                y, s = np.asarray(run["labels"]), np.asarray(run["scores"])
                if kind == "roc":
                    a, b, _ = roc_curve(y, s)
                else:
                    b, a, _ = precision_recall_curve(y, s)
                label = f"{arch} (AUC {np.mean([r['auc'] for r in runs]):.3f})" if kind == "roc" else \
                    f"{arch} (AP {np.mean([r['average_precision'] for r in runs]):.3f})"
                ax.plot(a, b, color=f"C{list(runs_by_arch).index(arch)}", alpha=0.8, lw=1,
                        label=label if k == 0 else None)
        if kind == "roc":
            ax.plot([0, 1], [0, 1], "k:", lw=0.8)
            ax.set_xlabel("1 - specificity")
            ax.set_ylabel("sensitivity")
        else:
            ax.set_xlabel("recall")
            ax.set_ylabel("precision")
        ax.set_title(f"bone-scan-cls, test crops, one line per seed ({kind.upper()})")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if kind == "roc" else "lower left", fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=SHARED)
    ap.add_argument("--labels", type=Path, default=None, help="image<TAB>label table (default: IMAGES/labels.tsv)")
    ap.add_argument("--data", type=Path, help="a dataset folder instead (e.g. `lesiondetect synth bone-scan`)")
    ap.add_argument("--archs", nargs="+", default=["compact"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--config", type=Path, help="an experiment config (Resources/configs/bone-scan-cls/)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--work", type=Path, default=Path("/tmp/bone_scan_cls"))
    ap.add_argument("--name", default="bone-scan-cls-bs80k")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--results", type=Path, default=ROOT / "Resources" / "benchmarks")
    args = ap.parse_args(argv)
    method = get_method("bone-scan-cls")
    overrides = training_config(method, args.config, parse_key_values(args.set))  # checked: unknown keys refused
    overrides = {k: v for k, v in overrides.items() if v != config_defaults(method).get(k)}  # what differs
    data = args.data or label_table_dataset(args.images, args.labels or args.images / "labels.tsv",
                                            args.work / "dataset", args.name)
    dataset = load_dataset(data)
    runs, by_arch = [], {}
    for arch in args.archs:
        for seed in args.seeds:
            out = args.work / "models" / f"{arch}-seed{seed}"
            if not (out / "model.json").exists():
                t0 = time.perf_counter()
                train(method.name, data, out, overrides={**overrides, "architecture": arch, "seed": seed,
                                                         "split_seed": seed}, device=args.device)
                print(f"{arch} seed {seed}: trained in {time.perf_counter() - t0:.0f} s", flush=True)
            m, model, card, dev = load_trained(out, device=args.device)
            metrics = m.evaluate(model, card, dataset, dev, split="test")
            metrics["train_seconds"] = card.training.get("seconds")
            runs.append(metrics)
            by_arch.setdefault(arch, []).append(metrics)
            print(f"{arch} seed {seed}: AUC {metrics['auc']:.3f} sens {metrics['recall']:.3f} "
                  f"spec {metrics['specificity']:.3f} (threshold {metrics['threshold']:.3f})", flush=True)
    table = method.combine(runs)
    report = method.report(table)
    print(report)
    args.results.mkdir(parents=True, exist_ok=True)
    command = " ".join([".venv/bin/python", "Testing/benchmarks/bone_scan_cls_experiments.py", *sys.argv[1:]])
    machine = f"{platform.machine()}, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}, device {args.device}"
    (args.results / f"{args.name}.json").write_text(json.dumps(
        {"command": command, "machine": machine, "overrides": overrides, "rows": table["rows"], "runs": runs}, indent=1))
    plot_curves(by_arch, args.results / f"{args.name}-roc.png", args.results / f"{args.name}-pr.png")
    (args.results / f"{args.name}.md").write_text(
        f"# bone-scan-cls on {shown(args.data or args.images)}\n\nCommand: `{command}`  \nMachine: {machine}\n\n"
        f"Test split: 30 % of the patients (stratified), threshold chosen on the validation split.\n\n"
        f"```\n{report}\n```\n\n![ROC]({args.name}-roc.png) ![PR]({args.name}-pr.png)\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
