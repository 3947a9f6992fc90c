"""Fine-tune the shipped ms-flair-fcn model on one corrected case of a centre it never saw
(issue #18, 7b), with `train --init` and its default short schedule:

    .venv/bin/python Testing/benchmarks/flair_finetune_one_case.py [--work /tmp/flair_finetune] [--threads 2]

The shipped model (version 1) was trained on open_ms_data patients 07 and 19 and synthetic
heads; MSLesSeg was left out.  ../shared/data/ms_flair holds one MSLesSeg scan (P18, three
lesions), so "that centre's other scans" are stood in for by a slab of the same scan:

  A. held-out slab: fine-tune on P18's axial slices z >= SPLIT_Z (lesions 2 and 3), measure
     before and after on the slices below (lesion 1, infratentorial, and the false positives
     there).  Same patient and scanner, other anatomy: an optimistic stand-in, said so.
  B. the whole case, as a user would after correcting it: fine-tune on all of P18, measure
     before and after on the parent's own evaluation sets from its card: the held-out
     synthetic heads (seed 1) and the two real cases it was trained on (open_ms_data 07, 19;
     "no worse than the parent" there means fine-tuning did not undo what it knew), and P18
     itself (in-sample, said so).

Metrics are the method's `evaluate` (Dice and Anima lesion F1 per case, the card's lesion
operating point; fine-tuning keeps the parent's, as `train --init` does by default).  Timings
come with the load average (`os.getloadavg`), since the machine may be shared.  Results go to
WORK/results.json and are printed as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import SimpleITK as sitk  # noqa: E402
import torch  # noqa: E402

from LesionDetectLib.commands.train import parse_key_values  # noqa: E402
from LesionDetectLib.dataset import load_dataset, write_dataset_json  # noqa: E402
from LesionDetectLib.models import shipped_model_dir  # noqa: E402
from LesionDetectLib.synth import generate  # noqa: E402
from LesionDetectLib.training import load_trained, train  # noqa: E402

CASE = "mslesseg_P18"
PARENT_CASES = ("open_ms_data_patient07", "open_ms_data_patient19")
SPLIT_Z = 60  # P18's lesion 1 lies in slices 34-47, lesions 2 and 3 in 85-102


def load() -> str:
    return "load average " + " ".join(f"{v:.2f}" for v in os.getloadavg())


def slab(image: Path, mask: Path, out: Path, lower: bool) -> dict:
    """P18's slices below (lower) or from SPLIT_Z up, written with their physical geometry."""
    out.mkdir(parents=True, exist_ok=True)
    for src, name in ((image, "flair.nii.gz"), (mask, "lesions.nii.gz")):
        img = sitk.ReadImage(str(src))
        part = img[:, :, :SPLIT_Z] if lower else img[:, :, SPLIT_Z:]
        sitk.WriteImage(part, str(out / name))
    return {"image": str(out / "flair.nii.gz"), "mask": str(out / "lesions.nii.gz")}


def dataset(folder: Path, name: str, cases: list[tuple[str, dict]]) -> Path:
    if not (folder / "dataset.json").exists():
        write_dataset_json(folder, name, "MR", [{"id": cid, "patient": cid, **files} for cid, files in cases])
    return folder


def measure(model_dir: Path, data: Path) -> dict:
    """{case: {"dice", "lesion_f1", "lesion_precision", "lesion_sensitivity"}} and the seconds."""
    method, model, card, device = load_trained(model_dir, device="cpu")
    t0 = time.perf_counter()
    result = method.evaluate(model, card, load_dataset(data), device, split="all")
    rows = {c["case"]: {k: round(c[k], 4) for k in ("dice", "lesion_f1", "lesion_precision", "lesion_sensitivity")}
            for c in result["cases"]}
    return {"cases": rows, "seconds": round(time.perf_counter() - t0, 1), "load": load()}


def finetune(parent: Path, data: Path, out: Path, overrides: dict) -> dict:
    """`train --init parent` with the default fine-tuning schedule, timed (kept beside the
    model, so a rerun reuses both)."""
    timing = out.with_name(out.name + ".timing.json")
    if (out / "model.json").exists() and timing.exists():
        return {**json.loads(timing.read_text()), "reused": True}
    start = load()
    t0 = time.perf_counter()
    train(None, data, out, init=parent, device="cpu", resume=True, overrides=overrides)
    result = {"seconds": round(time.perf_counter() - t0, 1), "load": f"{start} (start), {load()} (end)"}
    timing.write_text(json.dumps(result))
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared/data/ms_flair"))
    parser.add_argument("--work", default="/tmp/flair_finetune")
    parser.add_argument("--parent", default=None, help="model to fine-tune (default: the shipped ms-flair-fcn)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a fine-tuning setting other than the default schedule, as `train --set`")
    parser.add_argument("--skip-synthetic", action="store_true", help="leave out the synthetic heads (faster)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data, work = Path(args.data), Path(args.work)
    parent = Path(args.parent) if args.parent else shipped_model_dir("ms-flair-fcn")
    if parent is None or not (data / CASE).is_dir():
        print(f"needs the shipped ms-flair-fcn model and {data / CASE}")
        return 2
    work.mkdir(parents=True, exist_ok=True)
    image, mask = data / CASE / "flair.nii.gz", data / CASE / "lesions.nii.gz"
    overrides = parse_key_values(args.set)
    results: dict = {"parent": str(parent), "threads": args.threads, "split_z": SPLIT_Z, "overrides": overrides}

    # A: fine-tune on the upper slab, measure on the lower one
    upper = dataset(work / "A_train", "MSLesSeg P18, slices z >= 60 (fine-tuning)",
                    [(f"{CASE}_upper", slab(image, mask, work / "A_upper", lower=False))])
    lower = dataset(work / "A_test", "MSLesSeg P18, slices z < 60 (held out)",
                    [(f"{CASE}_lower", slab(image, mask, work / "A_lower", lower=True))])
    results["A_finetune"] = finetune(parent, upper, work / "A_model", overrides)
    results["A_before"] = measure(parent, lower)
    results["A_after"] = measure(work / "A_model", lower)

    # B: fine-tune on the whole case, measure on the parent's own sets and the case
    whole = dataset(work / "B_train", "MSLesSeg P18 (fine-tuning)", [(CASE, {"image": str(image), "mask": str(mask)})])
    cases = [(c, {"image": str(data / c / "flair.nii.gz"), "mask": str(data / c / "lesions.nii.gz")})
             for c in (*PARENT_CASES, CASE)]
    if not args.skip_synthetic:
        synth = work / "synthetic_test"
        if not (synth / "dataset.json").exists():
            generate("ms-flair", synth, cases=2, seed=1, size="full")  # the card's held-out heads
        cases += [(f"synthetic_{c.id}", {"image": str(c.image), "mask": str(c.mask)})
                  for c in load_dataset(synth).cases]
    check = dataset(work / "B_test", "parent's evaluation sets + P18", cases)
    results["B_finetune"] = finetune(parent, whole, work / "B_model", overrides)
    results["B_before"] = measure(parent, check)
    results["B_after"] = measure(work / "B_model", check)

    own = [c for c in results["B_before"]["cases"] if c != CASE]  # the parent's own evaluation sets
    results["B_parent_sets_mean"] = {
        when: {m: round(sum(results[f"B_{when}"]["cases"][c][m] for c in own) / len(own), 4)
               for m in ("dice", "lesion_f1")} for when in ("before", "after")}
    (work / "results.json").write_text(json.dumps(results, indent=2))
    print(f"parent {parent}, {args.threads} thread(s)")
    for part in ("A", "B"):
        ft = results[f"{part}_finetune"]
        print(f"\n{part}: fine-tune {ft['seconds']} s ({ft['load']})")
        print(f"{'case':40s} {'Dice before':>11s} {'after':>7s} {'F1 before':>10s} {'after':>7s}")
        before, after = results[f"{part}_before"]["cases"], results[f"{part}_after"]["cases"]
        for case in before:
            print(f"{case:40s} {before[case]['dice']:11.3f} {after[case]['dice']:7.3f} "
                  f"{before[case]['lesion_f1']:10.3f} {after[case]['lesion_f1']:7.3f}")
    means = results["B_parent_sets_mean"]
    print(f"\nB, mean over the parent's own sets ({', '.join(own)}): Dice {means['before']['dice']:.3f} -> "
          f"{means['after']['dice']:.3f}, lesion F1 {means['before']['lesion_f1']:.3f} -> "
          f"{means['after']['lesion_f1']:.3f}")
    print(f"results: {work / 'results.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
