"""Train the model shipped in Resources/models/spine-mtl/ (one command):

    .venv/bin/python Testing/benchmarks/spine_mtl_shipped_model.py [--work /tmp/spine_ship] [--install]

Training data: synthetic spine CT only (`lesiondetect synth spine-ct --size full`, seed 1,
48 studies, 0.6 x 0.6 x 2.5 mm; no public real CT with per-slice bone-quality labels is
reachable here).  The recipe is the method's defaults (the paper's final model, CPU-sized:
hard sharing of all four stages, MLP, posterolateral head, self-paced learning, label
smoothing, warm-up + cosine) with class-balanced losses, 30 epochs (at most 40 minutes) on 2 CPU cores.  The card gets
the slice- and vertebra-level metrics on 16 held-out synthetic studies (seed 2), the demo
study's result, and what this means for real scans.  With --install the model is copied to
Resources/models/spine-mtl/ (refuses to replace one).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from LesionDetectLib.dataset import load_dataset  # noqa: E402
from LesionDetectLib.files import read_json, write_json  # noqa: E402
from LesionDetectLib.synth import generate  # noqa: E402
from LesionDetectLib.training import load_trained, train  # noqa: E402


REAL = ("none measured: no real CT with per-slice bone-quality or posterolateral labels is available. On two real "
        "CTs without such labels (TotalSegmentator example, mirp CRLM 1004) it runs end to end and its vertebra "
        "points lie on the spine, but it calls every vertebra diseased (7 lytic and 1 mixed of 8; 4 mixed, 1 "
        "blastic and 1 lytic of 6): real bone does not look like the phantoms', so these classes mean nothing "
        "on real scans")


def synthetic(path: Path, cases: int, seed: int, jobs: int) -> Path:
    if not (path / "dataset.json").exists():
        generate("spine-ct", path, cases=cases, seed=seed, size="full", jobs=jobs)
    return path


def rounded(table: dict) -> dict:
    return {task: {k: round(v, 4) if isinstance(v, float) else v for k, v in cells.items()}
            for task, cells in table.items()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/spine_ship"))
    ap.add_argument("--train", type=Path, help="an existing training set (default: generated, seed 1, 48 studies)")
    ap.add_argument("--test", type=Path, help="an existing test set (default: generated, seed 2, 16 studies)")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--install", action="store_true")
    args = ap.parse_args(argv)
    train_ds = args.train or synthetic(args.work / "train", 48, 1, args.jobs)
    test_ds = args.test or synthetic(args.work / "test", 16, 2, args.jobs)
    out = args.work / "model"
    if not (out / "model.json").exists():
        train("spine-mtl", train_ds, out, overrides={"epochs": args.epochs, "time_limit_minutes": 40})
    method, model, card, device = load_trained(out, device="cpu")
    held_out = method.evaluate(model, card, load_dataset(test_ds), device, split="all")
    print(method.report(held_out))
    doc = read_json(out / "model.json")
    doc["metrics"] = {
        "synthetic_held_out": {"what": f"{len(held_out['cases'])} synthetic spine CTs never seen (seed 2, full size): "
                                       f"{held_out['slices']} labelled slices, {held_out['vertebrae']} vertebrae",
                               "slice": rounded(held_out["slice"]), "vertebra": rounded(held_out["vertebra"])},
        "real": REAL,
    }
    doc["training"].update({
        "data": "synthetic spine CT only: `lesiondetect synth spine-ct --size full --seed 1 --cases 48` "
                "(LesionDetect's generator: thoracic and lumbar vertebrae with drawn lytic, blastic and mixed "
                "lesions and pedicle involvement), 85 / 15 train / validation by study",
        "licence": "the weights are LesionDetect's own (synthetic data, no third-party data)",
        "intended_use": "research and demonstration: shows what the paper's method outputs (per-slice and "
                        "per-vertebra bone quality and posterolateral involvement); trained on synthetic phantoms, "
                        "so its classes on real CT are not validated; not a diagnostic device",
        "known_failure_modes": "on real CT every vertebra tends to be called diseased (lytic or mixed: real bone "
                               "does not look like the phantoms'); real metastases, degenerative change, osteoporosis, "
                               "implants and the sacrum look unlike the phantoms; the mixed class is the weakest; slices without a spine get "
                               "probabilities too (their decision says no spine was found); without a vertebra "
                               "segmentation, vertebrae come from the built-in split along z, which can merge or "
                               "split vertebrae on thick or contrast-enhanced slices",
    })
    write_json(out / "model.json", doc, overwrite=True)
    if args.install:
        target = ROOT / "Resources" / "models" / "spine-mtl"
        if target.exists():
            raise SystemExit(f"{target} exists; remove it first to replace the shipped model")
        target.mkdir(parents=True)
        for name in ("model.json", "model.safetensors"):
            shutil.copy2(out / name, target / name)
        print(f"installed {target}")
    print(json.dumps(doc["metrics"], indent=1)[:2000])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
