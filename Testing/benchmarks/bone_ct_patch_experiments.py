"""Method 000 experiments, one command: train, Table 2, FROC on synthetic studies and on real CT.

    .venv/bin/python Testing/benchmarks/bone_ct_patch_experiments.py \
        [--data SYNTH_DATASET] [--cases 10] [--work /tmp/bone_ct_patch] [--experiments 3c-ri ri fast] \
        [--seeds 0] [--epochs N] [--froc 3c-ri fast] [--blds ../shared/data/bone_ct_blds]

1. Synthetic study: `lesiondetect synth bone-ct --size full` (generated into --work unless
   --data is given), split 72/10/18 by patient.  Each experiment config
   (Resources/configs/bone-ct-patch/<name>.json) is trained per seed through the shared
   trainer (`--epochs` overrides the paper's 30/40 when the CPU budget is short; what was
   run is recorded) and evaluated on the test split: patch precision / recall / F / AUC
   (Table 2, mean ± SD over seeds) and, for the experiments named in --froc, volume
   parsing + FROC of the candidates against the lesion points.
2. Real CT (BLDS demo patches, ../shared/data/bone_ct_blds, never trained on): lesions.csv
   boxes become a dataset (boxes .mrk.json, bone mask from HU), and every --froc model is
   evaluated on all five volumes: FROC of candidates inside the boxes.

TL / 3C-TL need torchvision's real ImageNet file vgg16-397923af.pth in
$TORCH_HOME/hub/checkpoints (not downloadable here); they are skipped when it is absent.
Results: Resources/benchmarks/bone-ct-patch-experiments.json and .md, FROC plots beside them.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from LesionDetectLib import markups  # noqa: E402
from LesionDetectLib.dataset import load_dataset, write_dataset_json  # noqa: E402
from LesionDetectLib.files import write_json, write_text  # noqa: E402
from LesionDetectLib.methods import get_method  # noqa: E402
from LesionDetectLib.metrics.froc import plot_froc  # noqa: E402
from LesionDetectLib.models import torch_checkpoint_dir  # noqa: E402
from LesionDetectLib.prediction import LesionBox  # noqa: E402
from LesionDetectLib.training import load_trained, train, training_config  # noqa: E402

CONFIGS = ROOT / "Resources" / "configs" / "bone-ct-patch"
OUT = ROOT / "Resources" / "benchmarks"
SHARED = ROOT.parent / "shared" / "data" / "bone_ct_blds"


def blds_dataset(src: Path, dest: Path) -> Path:
    """The BLDS patches as a dataset: images by absolute path, boxes from lesions.csv."""
    if (dest / "dataset.json").exists():
        return dest
    (dest / "boxes").mkdir(parents=True, exist_ok=True)
    rows: dict[str, list[LesionBox]] = {}
    with open(src / "lesions.csv", newline="") as f:
        for r in csv.DictReader(f):
            rows.setdefault(r["image_path"], []).append(LesionBox(
                center=(float(r["x"]), float(r["y"]), float(r["z"])),
                size=(float(r["width"]), float(r["height"]), float(r["depth"])), label=r["class"]))
    cases = []
    for name, boxes in sorted(rows.items()):
        cid = name.split(".")[0]
        markups.write_boxes(dest / "boxes" / f"{cid}.mrk.json", boxes)
        cases.append({"id": f"blds{cid}", "patient": f"blds{cid}", "image": str((src / name).resolve()),
                      "boxes": f"boxes/{cid}.mrk.json", "split": "test"})
    write_dataset_json(dest, "BLDS demo CT patches (hugboom/BLDS testdata)", "CT", cases)
    return dest


def evaluate(model_dir: Path, data: Path, split: str, volumes: bool) -> dict:
    method, model, card, device = load_trained(model_dir)
    card.config["evaluate_volumes"] = volumes
    t = time.perf_counter()
    metrics = method.evaluate(model, card, load_dataset(data), device, split=split)
    metrics["evaluate_seconds"] = round(time.perf_counter() - t, 1)
    metrics["train_seconds"] = card.training.get("seconds")
    metrics["epochs"] = card.config.get("epochs")
    return metrics


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path)
    ap.add_argument("--cases", type=int, default=10)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bone_ct_patch"))
    ap.add_argument("--experiments", nargs="+", default=["3c-ri", "ri", "3c-tl", "tl", "fast"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--epochs", type=int, help="override the paper's epochs (record of a short run)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="override a config value in every experiment (e.g. width=0.125 for a CPU run)")
    ap.add_argument("--froc", nargs="*", default=["3c-ri", "fast"])
    ap.add_argument("--blds", type=Path, default=SHARED)
    ap.add_argument("--jobs", type=int, default=1, help="processes for generating the synthetic study")
    ap.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    ap.add_argument("--results", type=Path, default=OUT, help=f"where results go (default {OUT})")
    args = ap.parse_args(argv)
    from LesionDetectLib.commands.train import parse_overrides

    sets = parse_overrides(argparse.Namespace(set=args.set))  # as `lesiondetect train --set` reads them
    for name in args.experiments:  # unknown config keys: fail before the synthetic study is made
        training_config(get_method("bone-ct-patch"), CONFIGS / f"{name}.json", sets)
    out = args.results
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.data
    if data is None:
        data = args.work / "synth"
        if not (data / "dataset.json").exists():
            from LesionDetectLib import synth

            synth.generate("bone-ct", data, cases=args.cases, seed=0, size="full", jobs=args.jobs)
    have_imagenet = (torch_checkpoint_dir() / "vgg16-397923af.pth").exists()
    runs, froc_runs, blds_runs, skipped = [], {}, {}, []
    blds = blds_dataset(args.blds, args.work / "blds") if args.blds.is_dir() else None
    for name in args.experiments:
        config = json.loads((CONFIGS / f"{name}.json").read_text())
        if config.get("pretrained") and not have_imagenet:
            skipped.append(f"{name}: needs vgg16-397923af.pth (ImageNet) in {torch_checkpoint_dir()}")
            continue
        for seed in args.seeds:
            model_dir = args.work / (f"{name}-seed{seed}" + ("" if args.epochs is None else f"-e{args.epochs}")
                                     + "".join(f"-{k}{v}" for k, v in sets.items()))
            if not (model_dir / "model.json").exists():
                overrides = {"seed": seed, **({"epochs": args.epochs} if args.epochs else {}), **sets}
                train("bone-ct-patch", data, model_dir, CONFIGS / f"{name}.json", overrides, device=args.device)
            volumes = name in args.froc and seed == args.seeds[0]
            metrics = evaluate(model_dir, data, "test", volumes)
            metrics["config"] = name
            runs.append(metrics)
            if volumes:
                froc_runs[name] = metrics
                plot_froc(metrics, out / f"bone-ct-patch-froc-synthetic-{name}.png",
                          title=f"bone-ct-patch {name}: synthetic test volumes")
                if blds is not None:
                    blds_runs[name] = evaluate(model_dir, blds, "all", True)
                    plot_froc(blds_runs[name], out / f"bone-ct-patch-froc-blds-{name}.png",
                              title=f"bone-ct-patch {name}: BLDS real CT patches")
            print(json.dumps({k: metrics.get(k) for k in ("config", "seed", "precision", "recall", "f", "auc",
                                                          "froc_mean")}), flush=True)
    from LesionDetectLib.methods.bone_ct_patch.evaluation import combine_runs, table2

    combined = combine_runs(runs)
    for name, m in froc_runs.items():
        combined["rows"][m["experiment"]].update({k: m[k] for k in ("froc", "lesions", "volumes")})
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
                   f"torch {torch.__version__}"
                   + (f", {torch.cuda.get_device_name()}" if args.device != "cpu" and torch.cuda.is_available() else ""),
        "command": "python Testing/benchmarks/bone_ct_patch_experiments.py " + " ".join(argv or sys.argv[1:]),
        "data": str(data), "epochs_override": args.epochs, "overrides": sets, "skipped": skipped,
        "synthetic": {k: v for k, v in combined.items()},
        "blds": {name: {k: m[k] for k in ("froc", "froc_mean", "lesions", "volumes", "per_case", "precision",
                                          "recall", "f", "auc")} for name, m in blds_runs.items()},
    }
    write_json(out / "bone-ct-patch-experiments.json", result, overwrite=True)
    lines = ["# bone-ct-patch (method 000) experiments", "", f"Command: `{result['command']}`  ",
             f"Machine: {result['machine']}  ", f"Data: synthetic bone-ct ({data}); epochs override: {args.epochs}; overrides: {sets or 'none'}",
             "", "## Synthetic study, test split (Table 2 layout)", "", "```", table2(combined), "```"]
    if skipped:
        lines += ["", "Skipped: " + "; ".join(skipped)]
    if blds_runs:
        lines += ["", "## Real CT: BLDS demo patches (5 volumes, 7 boxes, bone mask from HU, no training)", ""]
        for name, m in blds_runs.items():
            lines.append(f"- {name}: FROC " + ", ".join(f"{k}: {v:.2f}" for k, v in m["froc"].items()) +
                         f"; mean {m['froc_mean']:.3f} ({m['lesions']} lesions, {m['volumes']} volumes)")
    write_text(out / "bone-ct-patch-experiments.md", "\n".join(lines) + "\n", overwrite=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
