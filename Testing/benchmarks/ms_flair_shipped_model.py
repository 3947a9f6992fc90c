"""Train the model shipped in Resources/models/ms-flair-fcn/ (one command):

    .venv/bin/python Testing/benchmarks/ms_flair_shipped_model.py [--work /tmp/ms_flair_ship] [--install]

Training data: the two CC-BY cases of ../shared/data/ms_flair (open_ms_data patients 07 and
19, Lesjak et al. 2018) and three full-size synthetic ms-flair studies with skull, scalp fat,
eyes and sinuses (`lesiondetect synth ms-flair --size full --seed 0`), so the model also
meets raw, not skull-stripped, heads.  MSLesSeg (license unstated) is left out; it stays a
test case.  Default config (`lesiondetect train --method ms-flair-fcn` without --config).
With --install the model is copied to Resources/models/ms-flair-fcn/ (refuses to replace one).
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from LesionDetectLib.dataset import load_dataset, write_dataset_json  # noqa: E402
from LesionDetectLib.synth import generate  # noqa: E402
from LesionDetectLib.training import train  # noqa: E402

CC_BY_CASES = ("open_ms_data_patient07", "open_ms_data_patient19")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/ms_flair"))
    parser.add_argument("--work", default="/tmp/ms_flair_ship")
    parser.add_argument("--synthetic", type=int, default=3, help="full-size synthetic studies to add")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--install", action="store_true", help="copy the model to Resources/models/ms-flair-fcn")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data, work = Path(args.data), Path(args.work)
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
    model = work / "model"
    if not (model / "model.json").exists():
        train("ms-flair-fcn", folder, model, device="cpu", resume=True)
    print(f"model in {model}")
    if args.install:
        dest = ROOT / "Resources/models/ms-flair-fcn"
        if dest.exists():
            raise SystemExit(f"{dest} exists; remove it first to replace the shipped model")
        dest.mkdir(parents=True)
        for name in ("model.safetensors", "model.json"):
            shutil.copy2(model / name, dest / name)
        print(f"installed in {dest}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
