"""Train the model shipped in Resources/models/bone-scan-cls/ (one command):

    .venv/bin/python Testing/benchmarks/bone_scan_cls_shipped_model.py [--work /tmp/bone_scan_ship] \
        [--experiment Resources/benchmarks/bone-scan-cls-bs80k-compact.json] [--install]

Training data: every real BS-80K right-chest anterior crop in ../shared/data/bone_scan_bs80k
(2,194 patients, 145 with metastatic uptake; Huang et al. 2022, licence not confirmed:
research use only), 85 / 15 train / validation by patient, stratified; the threshold is
chosen on the validation part.  The recipe is the default config, the one the experiment
measured on a held-out 30 % of the patients (its mean +- SD over seeds goes into the card as
the real-data estimate).  The card also gets the metrics on 300 synthetic BS-80K-like crops
(`lesiondetect synth bone-scan --set view=crop`, seed 11), which no model has seen.
With --install the model is copied to Resources/models/bone-scan-cls/ (refuses to replace one).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bone_scan_cls_experiments import SHARED, label_table_dataset  # noqa: E402

from LesionDetectLib.dataset import load_dataset  # noqa: E402
from LesionDetectLib.files import read_json, write_json  # noqa: E402
from LesionDetectLib.synth import generate  # noqa: E402
from LesionDetectLib.training import load_trained, train  # noqa: E402

SUMMARY = ("accuracy", "recall", "specificity", "precision", "f1", "auc", "average_precision")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, default=SHARED)
    ap.add_argument("--work", type=Path, default=Path("/tmp/bone_scan_ship"))
    ap.add_argument("--experiment", type=Path, default=ROOT / "Resources/benchmarks/bone-scan-cls-bs80k-compact.json")
    ap.add_argument("--install", action="store_true")
    args = ap.parse_args(argv)
    data = label_table_dataset(args.images, args.images / "labels.tsv", args.work / "dataset", "BS-80K anterior")
    out = args.work / "model"
    if not (out / "model.json").exists():
        train("bone-scan-cls", data, out, overrides={"split": {"train": 0.85, "val": 0.15}})
    method, model, card, device = load_trained(out, device="cpu")
    synthetic = args.work / "synthetic"
    if not (synthetic / "dataset.json").exists():
        generate("bone-scan", synthetic, cases=300, seed=11, size="full", params={"view": "crop"})
    synth_metrics = method.evaluate(model, card, load_dataset(synthetic), device, split="all")
    doc = read_json(out / "model.json")
    real = {}
    if args.experiment.exists():
        rows = json.loads(args.experiment.read_text())["rows"]["compact"]
        real = {"what": "the same recipe trained on 70 % of the patients, tested on the other 30 % "
                        f"(stratified; mean +- SD over {rows['runs']} seeds, each its own split)",
                "source": str(args.experiment.relative_to(ROOT)),
                **{k: round(rows[k], 4) for k in SUMMARY}, **{f"{k}_sd": round(rows[f"{k}_sd"], 4) for k in SUMMARY}}
    doc["metrics"] = {
        "real_bs80k_anterior_held_out_patients": real,
        "synthetic_crops_seed11": {"what": "300 synthetic BS-80K-like crops (label: a hot spot inside the crop)",
                                   **{k: round(synth_metrics[k], 4) for k in SUMMARY}},
    }
    doc["training"].update({
        "data": "all 2,194 real BS-80K right-chest anterior crops (Huang et al., Comput Biol Med 2022; "
                "published by webmasters777/BoneScanCEP), 145 with metastatic uptake; one crop per patient",
        "licence": "BS-80K licence not confirmed: research use only; the weights inherit that restriction",
        "intended_use": "research: ranks planar bone-scan crops of the right hemithorax by the chance of "
                        "metastatic uptake and shows where the network looked; not a diagnostic device",
        "known_failure_modes": "trained on anterior right-chest crops only: whole-body views and other regions "
                               "are out of distribution (the posterior view is mirrored and only covered by "
                               "flip augmentation); degenerative joint and injection-site uptake can look "
                               "positive; the threshold was chosen on 15 % of the patients (few positives)",
    })
    write_json(out / "model.json", doc, overwrite=True)
    print(json.dumps(doc["metrics"], indent=1))
    if args.install:
        target = ROOT / "Resources" / "models" / "bone-scan-cls"
        if target.exists():
            raise SystemExit(f"{target} exists; remove it first to replace the shipped model")
        target.mkdir(parents=True)
        for name in ("model.json", "model.safetensors"):
            shutil.copy2(out / name, target / name)
        print(f"installed {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
