"""Train, measure and install the model shipped in Resources/models/ms-flair-fcn/ (one command):

    .venv/bin/python Testing/benchmarks/ms_flair_shipped_model.py [--work /tmp/ms_flair_ship] [--install]

Training data: the two CC-BY cases of ../shared/data/ms_flair (open_ms_data patients 07 and
19, Lesjak et al. 2018) and three full-size synthetic ms-flair heads with skull, scalp fat,
eyes and sinuses (`lesiondetect synth ms-flair --size full --seed 0 --cases 3`), so the model
also meets raw, not skull-stripped, heads.  MSLesSeg (licence not stated) is left out of the
weights; its case P18 is a test case only.  Recipe: the method's default config (`--config` to
train another, e.g. Resources/configs/ms-flair-fcn/lesion-level.json, which measured worse on the
leave-one-case-out, see /work/notes/flair.md) with the lesion operating point that calibration
now adds (threshold, minimum component volume and component max-probability chosen for lesion
F1 on the training cases; the default operating point of the card).

`--reuse DIR` takes an already trained model of the same data and config instead of training
(the leave-one-case-out fold that tests P18, `ms_flair_loo.py --models default` with the default
--synthetic 3, trains on exactly these five cases with this config and seed).

The card gets: training data and licence, intended use, known failure modes, and metrics at
both operating points (lesion = default, pixel) on each real case (saying which were in
training), two held-out synthetic heads (seed 1) and the demo study (seed 7), the lesion
detection by size, TTA's effect and inference seconds with and without TTA.  With --install
the model is copied to Resources/models/ms-flair-fcn/ (replacing the one there).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from LesionDetectLib.dataset import load_dataset, read_mask, write_dataset_json  # noqa: E402
from LesionDetectLib.io import read_image  # noqa: E402
from LesionDetectLib.metrics import lesionwise  # noqa: E402
from LesionDetectLib.synth import generate  # noqa: E402
from LesionDetectLib.training import load_trained, train  # noqa: E402

CC_BY_CASES = ("open_ms_data_patient07", "open_ms_data_patient19")
TEST_ONLY = ("mslesseg_P18",)
CONFIG = None  # the method's defaults
INTENDED_USE = ("Research and annotation aid: a first plaque mask on skull-stripped or raw 3-D FLAIR for an annotator "
                "to correct, not a diagnosis. Not a medical device.")
FAILURE_MODES = [
    "Trained on two real patients (one centre, open_ms_data) plus synthetic heads: scans of other centres and "
    "preprocessing (MSLesSeg P18) get false positives on bright periventricular rims and grey matter.",
    "Small plaques (< 10 mm3) are mostly missed (0/7 and 0/27 on the two real training cases, 2/6 on the demo "
    "study): the lesion operating point keeps only components whose max probability reaches 0.98.",
    "Infratentorial (brainstem, cerebellar) plaques: rare in the training data.",
    "Not FLAIR (e.g. T1 or CT given as FLAIR): the output carries a warning (provenance parameters.warning), "
    "the map is unreliable; the check is a histogram rule, it can miss unusual T1 scans.",
    "Raw anisotropic scans are resampled to 1 mm in-plane; thick slices (4 mm) blur small plaques.",
]


def score_case(method, model, card, image_path, mask_path, device, tta=False, threshold=None) -> dict:
    image = read_image(image_path)
    t0 = time.perf_counter()
    pred = method.predict(model, card, image, device, threshold=threshold, tta=tta)
    seconds = time.perf_counter() - t0
    truth = read_mask(mask_path)
    lesions = lesionwise.lesion_detection(truth, pred.mask, spacing=image.GetSpacing())
    row = {**lesionwise.pixel_scores(lesionwise.pixel_counts(truth, pred.mask)), **lesions.scores(),
           "by_size": lesionwise.detection_by_size(lesions, image.GetSpacing()),
           "truth_voxels": int(truth.sum()), "predicted_voxels": int(pred.mask.sum()), "seconds": round(seconds, 2)}
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/ms_flair"))
    parser.add_argument("--work", default="/tmp/ms_flair_ship")
    parser.add_argument("--synthetic", type=int, default=3, help="full-size synthetic studies to add")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reuse", help="a model already trained on these cases with this config")
    parser.add_argument("--config", default=CONFIG, help="training config (default: the method's defaults)")
    parser.add_argument("--no-tta", action="store_true", help="skip the TTA measurements")
    parser.add_argument("--install", action="store_true", help="copy the model to Resources/models/ms-flair-fcn")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data, work = Path(args.data), Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    synth = work / "synthetic"
    if not (synth / "dataset.json").exists():
        generate("ms-flair", synth, cases=args.synthetic, seed=0, size="full")
    cases = [{"id": c, "patient": c, "image": str(data / c / "flair.nii.gz"), "mask": str(data / c / "lesions.nii.gz")}
             for c in CC_BY_CASES]
    for case in load_dataset(synth).cases:
        cases.append({"id": case.id, "patient": case.patient, "image": str(case.image), "mask": str(case.mask)})
    folder = work / "dataset"
    if not (folder / "dataset.json").exists():
        write_dataset_json(folder, "open_ms_data patients 07+19 (CC-BY) + synthetic ms-flair full seed 0", "MR", cases)
    model_dir = Path(args.reuse) if args.reuse else work / "model"
    if not (model_dir / "model.json").exists():
        train("ms-flair-fcn", folder, model_dir, config_path=args.config, device="cpu", resume=True)
    method, model, card, device = load_trained(model_dir, device="cpu")

    # measurements
    held_out = work / "synthetic_test"
    if not (held_out / "dataset.json").exists():
        generate("ms-flair", held_out, cases=2, seed=1, size="full")
    demo = work / "demo_study"
    if not (demo / "dataset.json").exists():
        generate("ms-flair", demo, cases=1, seed=7, size="full")
    tests = [(c, data / c / "flair.nii.gz", data / c / "lesions.nii.gz", c in CC_BY_CASES)
             for c in (*CC_BY_CASES, *TEST_ONLY) if (data / c).exists()]
    tests += [(f"synthetic {c.id} (held out, seed 1)", c.image, c.mask, False) for c in load_dataset(held_out).cases]
    tests += [(f"demo study {c.id} (seed 7)", c.image, c.mask, False) for c in load_dataset(demo).cases]
    rows = {}
    for name, image, mask, in_training in tests:
        row = {"in_training": in_training,
               "lesion": score_case(method, model, card, image, mask, device),
               "pixel": score_case(method, model, card, image, mask, device, threshold=card.thresholds["pixel"])}
        if not in_training and not args.no_tta:
            row["lesion_tta"] = score_case(method, model, card, image, mask, device, tta=True)
        rows[name] = row
        print(name, json.dumps({k: {m: row[k][m] for m in ("dice", "lesion_f1", "seconds")}
                                for k in row if k != "in_training"}), flush=True)
    card.metrics = card_metrics(rows)
    data_text = ("open_ms_data patients 07 + 19 (real FLAIR, Lesjak et al., Neuroinformatics 2018; CC-BY) + 3 "
                 "synthetic full-size ms-flair heads (LesionDetect synth, seed 0); MSLesSeg not used")
    card.training.update({
        "dataset": data_text, "data": data_text,
        "licence": "weights trained only on CC-BY and synthetic data; cite Lesjak et al. 2018 (open_ms_data)",
        "intended_use": INTENDED_USE, "known_failure_modes": " ".join(FAILURE_MODES),
        "recipe": args.config or "the method's default config + lesion operating point (issue #17)",
        "made_by": "python Testing/benchmarks/ms_flair_shipped_model.py" + (f" --reuse {args.reuse}" if args.reuse else "")})
    card_path = model_dir / "model.json"
    doc = json.loads(card_path.read_text())
    doc["metrics"], doc["training"] = card.metrics, card.training
    out = work / "final"
    out.mkdir(exist_ok=True)
    shutil.copy2(model_dir / "model.safetensors", out / "model.safetensors")
    (out / "model.json").write_text(json.dumps(_no_nan(doc), indent=2, allow_nan=False) + "\n")
    print(f"model in {out}")
    if args.install:
        dest = ROOT / "Resources/models/ms-flair-fcn"
        dest.mkdir(parents=True, exist_ok=True)
        for name in ("model.safetensors", "model.json"):
            shutil.copy2(out / name, dest / name)
        print(f"installed in {dest}")
    return 0


def card_metrics(rows: dict) -> dict:
    """The card's metrics: one set per evaluated case, the default (lesion) operating point's
    numbers at the top of each set, the pixel operating point and TTA beside them; the key
    metric is lesion F1 on the real case held out from training (MSLesSeg P18)."""
    metrics = {"note": "each set: the default lesion operating point; pixel_operating_point: the pixel F-max "
                       "threshold; lesion_operating_point_tta: with test-time flips; in_training: whether the "
                       "case was a training case"}
    for name, row in rows.items():
        key = name.split(" (")[0].replace(" ", "_").replace(".", "_")
        what = ("real FLAIR, " + ("a training case" if row["in_training"] else "held out from training")
                if not name.startswith(("synthetic", "demo")) else name)
        entry = {**row["lesion"], "in_training": row["in_training"], "what": what,
                 "pixel_operating_point": row["pixel"]}
        if "lesion_tta" in row:
            entry["lesion_operating_point_tta"] = row["lesion_tta"]
        metrics[key] = entry
    if "mslesseg_P18" in metrics:
        metrics["key_metric"] = "mslesseg_P18.lesion_f1"
    return metrics


def _no_nan(value):
    """JSON without NaN: an undefined score (e.g. precision with no predicted lesion) becomes null."""
    if isinstance(value, dict):
        return {k: _no_nan(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_no_nan(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


if __name__ == "__main__":
    raise SystemExit(main())
