"""Active learning with `lesiondetect rank` on real data, one command: does reviewing the crops the
model is least sure of first reach the all-crops AUC with fewer reviewed crops than reviewing
crops at random?

    OMP_NUM_THREADS=1 .venv/bin/python Testing/benchmarks/active_learning_bone_scan.py \
        [--images ../shared/data/bone_scan_bs80k/anterior] [--seeds 0 1] [--step 100] [--steps 8] \
        [--work /tmp/al_bone_scan] [--name active-learning-bone-scan] [--device cpu]
    .venv/bin/python Testing/benchmarks/active_learning_bone_scan.py --from-json RESULT.json  # report again

Method bone-scan-cls (001) on the BS-80K right-chest anterior crops (2,194 crops, one per
patient: the file number is the patient's number, so every split is by patient).  30 % of the
patients (stratified by label) are the test set, never reviewed; the other 70 % are the pool a
reviewer works through.  Per seed:

1. start: a model trained from scratch on a random 10 % of all the shared crops, drawn from the
   pool (`training.train`);
2. each step: `--step` more pool crops are "reviewed" (their labels revealed), chosen either by
   `ranking.rank` - the same code as `lesiondetect rank`, run on a dataset.json of the pool in
   which the reviewed crops carry a "review" entry (class entropy of the model's probability,
   highest first) - or uniformly at random; the current model is then fine-tuned on every crop
   reviewed so far (`training.train(..., init=parent)`, the fine-tuning schedule with the
   settings below);
3. after every step the test AUC is measured.

The target ("all crops") is what reviewing the whole pool gives: each seed's start model
fine-tuned once on all pool crops with the same fine-tuning schedule (mean over seeds); a
model trained from scratch on the whole pool with the start schedule is reported beside it.
The issue asks for steps of 200 crops; the pool holds 1,536 crops, so steps
of 100 (8 steps: up to 1,019 reviewed crops, 2/3 of the pool) give a curve with more than a few
points, and a small network (compact widths 8-64, 96 x 40 input) keeps the whole run to about
15 minutes of one free CPU thread (28 min measured with the 2 cores shared, load 2-6).
Results: Resources/benchmarks/<name>.json / .md / -auc.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bone_scan_cls_experiments import SHARED, label_table_dataset, shown  # noqa: E402

from LesionDetectLib.dataset import load_dataset, split_cases, write_dataset_json  # noqa: E402
from LesionDetectLib.methods import get_method  # noqa: E402
from LesionDetectLib.ranking import rank  # noqa: E402
from LesionDetectLib.training import config_defaults, load_trained, merge_config, train  # noqa: E402

# a small network so that 2 seeds x 2 strategies x 8 fine-tunes fit in minutes on one thread
START = {"compact_widths": [8, 16, 32, 64], "input_size": [96, 40], "epochs": 20, "seed": 0}
FINETUNE = {"epochs": 3, "lr": 5e-4}  # on top of training.FINETUNE_DEFAULTS (warm-up + cosine)
LABELS = {"0": "normal", "1": "metastasis"}


def load_avg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def entry(case, reviewed: bool) -> dict:
    """A pool crop as dataset.json holds it: label and review only once reviewed."""
    e = {"id": case.id, "patient": case.patient, "image": str(case.image)}
    if reviewed:
        e.update({"label": int(case.label), "split": "train", "review": {"source": "BS-80K label",
                                                                         "findings": []}})
    return e


def train_set(folder: Path, cases) -> Path:
    write_dataset_json(folder, folder.name, "NM", [entry(c, True) for c in cases], labels=LABELS, overwrite=True)
    return folder


def test_auc(model_dir: Path, test_set, device: str) -> float:
    from sklearn.metrics import roc_auc_score

    method, net, card, dev = load_trained(model_dir, device=device)
    scores = method.scores(net, test_set, card.config, dev)
    return float(roc_auc_score(test_set.labels.numpy(), scores))


def run_strategy(strategy: str, seed: int, start_model: Path, start_ids: list[str], pool: list, test_set,
                 args, work: Path) -> list[dict]:
    """[{"reviewed", "auc", "positives", "seconds"}] after the start and every step."""
    by_id = {c.id: c for c in pool}
    reviewed, model = list(start_ids), start_model
    rng = random.Random(1000 + seed)
    curve = [{"reviewed": len(reviewed), "auc": test_auc(model, test_set, args.device),
              "positives": sum(int(by_id[i].label) for i in reviewed), "seconds": 0.0}]
    print(f"[{strategy} seed {seed}] start: {len(reviewed)} reviewed, AUC {curve[0]['auc']:.4f}", flush=True)
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        done = set(reviewed)
        if strategy == "ranked":
            ds = work / f"{strategy}-s{seed}-pool{step}"
            write_dataset_json(ds, "pool", "NM", [entry(c, c.id in done) for c in pool], labels=LABELS,
                               overwrite=True)
            ranking = rank(ds, loaded=load_trained(model, device=args.device))
            chosen = [r["id"] for r in ranking["cases"][:args.step]]
        else:
            chosen = rng.sample(sorted(c.id for c in pool if c.id not in done), args.step)
        reviewed += chosen
        data = train_set(work / f"{strategy}-s{seed}-data{step}", [by_id[i] for i in reviewed])
        out = work / f"{strategy}-s{seed}-model{step}"
        model = train(None, data, out, overrides={**FINETUNE, "seed": seed}, device=args.device, init=model)
        auc = test_auc(model, test_set, args.device)
        curve.append({"reviewed": len(reviewed), "auc": auc, "positives": sum(int(by_id[i].label) for i in reviewed),
                      "added_positives": sum(int(by_id[i].label) for i in chosen),
                      "seconds": round(time.perf_counter() - t0, 1)})
        print(f"[{strategy} seed {seed}] step {step}: {len(reviewed)} reviewed "
              f"(+{curve[-1]['added_positives']} positive), AUC {auc:.4f}, {curve[-1]['seconds']} s", flush=True)
    return curve


def first_reaching(curve: list[dict], target: float) -> int | None:
    return next((p["reviewed"] for p in curve if p["auc"] >= target), None)


def mean_curve(curves: list[list[dict]]) -> list[dict]:
    import numpy as np

    return [{"reviewed": pts[0]["reviewed"], "auc": float(np.mean([p["auc"] for p in pts])),
             "auc_sd": float(np.std([p["auc"] for p in pts], ddof=1)) if len(pts) > 1 else 0.0,
             "positives": float(np.mean([p["positives"] for p in pts]))}
            for pts in zip(*curves)]


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    colours = {"ranked": "tab:red", "random": "tab:blue"}
    for strategy, colour in colours.items():
        for seed, curve in result["curves"][strategy].items():
            ax.plot([p["reviewed"] for p in curve], [p["auc"] for p in curve], color=colour, alpha=0.25, lw=1)
        mean = result["mean"][strategy]
        label = {"ranked": "ranked by `rank` (class entropy)", "random": "random"}[strategy]
        ax.plot([p["reviewed"] for p in mean], [p["auc"] for p in mean], color=colour, lw=2, marker="o", ms=3,
                label=f"{label}, mean of {len(result['curves'][strategy])} seed(s)")
    ref = result["reference"]
    ax.axhline(result["target_auc"], color="k", ls="-", lw=1,
               label=f"target: all {ref['crops']} pool crops reviewed at once (fine-tuned): "
                     f"{result['target_auc']:.3f}")
    ax.axhline(ref["auc"], color="k", ls="--", lw=1,
               label=f"all {ref['crops']} pool crops, from scratch: {ref['auc']:.3f}")
    ax.set_xlabel("crops reviewed (labels revealed)")
    ax.set_ylabel(f"test AUC ({result['test']['crops']} crops, {result['test']['positives']} positive)")
    ax.set_title("bone-scan-cls on BS-80K crops: active learning")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def markdown(result: dict, args) -> str:
    ref, tol = result["reference"], result["tolerance"]
    lines = [f"# Active learning with `lesiondetect rank`: bone-scan-cls on {shown(Path(args.images))}", "",
             f"Command: `{result['command']}`  ",
             f"Machine: {result['machine']}; load average at start {result['load_start']}, at end "
             f"{result['load_end']} (other work running); {result['seconds'] / 60:.1f} min in all.", "",
             f"Data: {result['crops']} BS-80K right-chest anterior crops ({result['positives']} positive), one per "
             f"patient. Test: {result['test']['crops']} crops ({result['test']['positives']} positive), 30 % of the "
             f"patients stratified by label, never reviewed. Pool: {result['pool']['crops']} crops "
             f"({result['pool']['positives']} positive).", "",
             f"Start: a model trained from scratch on {result['start_crops']} pool crops (10 % of all crops, random "
             f"per seed), config {json.dumps(START)}. Each step reviews {args.step} more pool crops - the top of "
             "`ranking.rank` (the code of `lesiondetect rank`: class entropy, most uncertain first) or a random "
             f"draw - and fine-tunes the current model on all reviewed crops (`train --init`, {json.dumps(FINETUNE)}). "
             f"The issue's steps of 200 are scaled to {args.step}: the pool holds {result['pool']['crops']} crops. "
             f"Seeds: {', '.join(map(str, args.seeds))} (each its own start set and random order; same test set).",
             "", f"Target - all {ref['crops']} pool crops reviewed at once (each seed's start model fine-tuned on "
                 f"them with the same schedule), mean over seeds: AUC **{result['target_auc']:.4f}** ("
                 + ", ".join(f"seed {k}: {v['auc']:.4f}" for k, v in result["all_crops"].items())
                 + f"). For comparison, a model trained from scratch on all of them with the start schedule: AUC "
                 f"{ref['auc']:.4f}.",
             "", "| crops reviewed | ranked AUC (mean ± SD) | random AUC (mean ± SD) | ranked positives | "
                 "random positives |", "|---:|---:|---:|---:|---:|"]
    for a, b in zip(result["mean"]["ranked"], result["mean"]["random"]):
        lines.append(f"| {a['reviewed']} | {a['auc']:.4f} ± {a['auc_sd']:.4f} | {b['auc']:.4f} ± {b['auc_sd']:.4f} "
                     f"| {a['positives']:.1f} | {b['positives']:.1f} |")
    lines += ["", "Crops reviewed until the mean curve first reaches the target AUC (and within "
                  f"{tol} of it):", ""]
    for strategy in ("ranked", "random"):
        hit = result["reaches"][strategy]
        lines.append(f"- {strategy}: {hit['exact'] if hit['exact'] is not None else 'not within the steps run'} "
                     f"({hit['within_tolerance'] if hit['within_tolerance'] is not None else 'not reached'} within "
                     f"{tol})")
    scratch = result["reaches_scratch"]
    lines += ["", f"Against the stricter target, the from-scratch all-crops AUC {ref['auc']:.4f} (within {tol}): "
              + "; ".join(f"{s}: {scratch[s]['within_tolerance'] or 'not reached'}" for s in ("ranked", "random"))
              + " (exactly: " + "; ".join(f"{s}: {scratch[s]['exact'] or 'not reached'}" for s in ("ranked", "random"))
              + ")."]
    lines += ["", result["verdict"], "", f"![AUC against crops reviewed]({args.name}-auc.png)", "",
              "Data: BS-80K (Huang et al., Computers in Biology and Medicine 2022) as published in "
              "webmasters777/BoneScanCEP; research use only."]
    return "\n".join(lines) + "\n"


def verdict(result: dict) -> str:
    r, q = result["reaches"]["ranked"], result["reaches"]["random"]
    parts = []
    for key, what in (("exact", "the target AUC"), ("within_tolerance", f"within {result['tolerance']} of it")):
        a, b = r[key], q[key]
        if a is not None and (b is None or a < b):
            parts.append(f"ranked selection reached {what} with {a} reviewed crops, random "
                         + (f"with {b}" if b is not None else "not within the steps run"))
        elif a is not None and b is not None and a == b:
            parts.append(f"both reached {what} at {a} reviewed crops")
        elif b is not None:
            parts.append(f"random selection reached {what} first ({b} crops; ranked: "
                         + (f"{a})" if a is not None else "not within the steps run)"))
        else:
            parts.append(f"neither reached {what} within the steps run")
    gains = [a["auc"] - b["auc"] for a, b in zip(result["mean"]["ranked"][1:], result["mean"]["random"][1:])]
    parts.append(f"mean AUC difference ranked - random over the steps: {sum(gains) / len(gains):+.4f} "
                 f"(per step: {', '.join(f'{g:+.3f}' for g in gains)})")
    ahead = [p["reviewed"] for p, g in zip(result["mean"]["ranked"][1:], gains) if g > 0]
    behind = [p["reviewed"] for p, g in zip(result["mean"]["ranked"][1:], gains) if g < 0]
    if behind:
        parts.append(f"ranked selection is behind at {', '.join(map(str, behind))} reviewed crops (uncertainty "
                     "sampling's usual cold start: the weak start model's most uncertain crops taught it less than a random "
                     "draw; not investigated further) and ahead at "
                     + (", ".join(map(str, ahead)) if ahead else "none"))
    return "Result: " + "; ".join(parts) + "."


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", default=str(SHARED))
    p.add_argument("--labels", default=None, help="image<TAB>label table (default: labels.tsv in --images)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--step", type=int, default=100, help="crops reviewed per step")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--tolerance", type=float, default=0.005)
    p.add_argument("--work", default="/tmp/al_bone_scan")
    p.add_argument("--name", default="active-learning-bone-scan")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out-dir", default=str(ROOT / "Resources" / "benchmarks"))
    p.add_argument("--from-json", help="write the .md and .png again from this result file (no training)")
    args = p.parse_args(argv)
    if args.from_json:
        result = json.loads(Path(args.from_json).read_text())
        args.seeds, args.step, args.steps = result["seeds"], result["step"], result["steps"]
        return report(result, args)
    t_start, load_start = time.perf_counter(), load_avg()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    images = Path(args.images)
    full = load_dataset(label_table_dataset(images, Path(args.labels or images / "labels.tsv"), work / "all", "bs80k"))
    method = get_method("bone-scan-cls")
    parts = split_cases(full.cases, {"train": 0.7, "test": 0.3}, seed=0, stratify=method.label)
    pool, test = parts["train"], parts["test"]
    config = merge_config(config_defaults(method), START)
    test_set = method.scan_set(test, config, augment=False)
    n_start = round(0.10 * len(full.cases))
    result = {"command": "OMP_NUM_THREADS=1 .venv/bin/python Testing/benchmarks/active_learning_bone_scan.py "
                         + " ".join(sys.argv[1:] if argv is None else argv),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch threads "
                         f"{__import__('torch').get_num_threads()}",
              "load_start": load_start, "crops": len(full.cases), "positives": sum(int(c.label) for c in full.cases),
              "test": {"crops": len(test), "positives": sum(int(c.label) for c in test)},
              "pool": {"crops": len(pool), "positives": sum(int(c.label) for c in pool)},
              "start_crops": n_start, "step": args.step, "steps": args.steps, "seeds": args.seeds,
              "start_config": START, "finetune_config": FINETUNE, "tolerance": args.tolerance,
              "curves": {"ranked": {}, "random": {}}, "all_crops": {}}
    print(f"pool {len(pool)}, test {len(test)}, start {n_start} crops; load {load_start}", flush=True)
    t0 = time.perf_counter()
    ref_model = train("bone-scan-cls", train_set(work / "reference-data", pool), work / "reference-model",
                      overrides=START, device=args.device)
    result["reference"] = {"crops": len(pool), "auc": test_auc(ref_model, test_set, args.device),
                           "seconds": round(time.perf_counter() - t0, 1)}
    print(f"reference: all {len(pool)} pool crops, AUC {result['reference']['auc']:.4f}", flush=True)
    for seed in args.seeds:
        start_ids = random.Random(seed).sample(sorted(c.id for c in pool), n_start)
        by_id = {c.id: c for c in pool}
        start_model = train("bone-scan-cls", train_set(work / f"start-s{seed}-data", [by_id[i] for i in start_ids]),
                            work / f"start-s{seed}-model", overrides={**START, "seed": seed}, device=args.device)
        t0 = time.perf_counter()
        every = train(None, train_set(work / f"all-s{seed}-data", pool), work / f"all-s{seed}-model",
                      overrides={**FINETUNE, "seed": seed}, device=args.device, init=start_model)
        result["all_crops"][str(seed)] = {"auc": test_auc(every, test_set, args.device),
                                          "seconds": round(time.perf_counter() - t0, 1)}
        print(f"[seed {seed}] start model fine-tuned on all {len(pool)} pool crops: AUC "
              f"{result['all_crops'][str(seed)]['auc']:.4f}", flush=True)
        for strategy in ("ranked", "random"):
            result["curves"][strategy][str(seed)] = run_strategy(strategy, seed, start_model, start_ids, pool,
                                                                 test_set, args, work)
    result["seconds"] = round(time.perf_counter() - t_start, 1)
    result["load_end"] = load_avg()
    return report(result, args)


def report(result: dict, args) -> int:
    """Summaries, verdict, JSON, markdown and plot of a finished run."""
    result["mean"] = {s: mean_curve(list(result["curves"][s].values())) for s in ("ranked", "random")}
    target = sum(v["auc"] for v in result["all_crops"].values()) / len(result["all_crops"])
    result["target_auc"] = target
    tol = result["tolerance"]
    for key, goal in (("reaches", target), ("reaches_scratch", result["reference"]["auc"])):
        result[key] = {s: {"exact": first_reaching(result["mean"][s], goal),
                           "within_tolerance": first_reaching(result["mean"][s], goal - tol)}
                       for s in ("ranked", "random")}
    result["verdict"] = verdict(result)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.name}.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out / f"{args.name}-auc.png")
    (out / f"{args.name}.md").write_text(markdown(result, args))
    print(result["verdict"])
    print(f"wrote {out / (args.name + '.json')}, .md, -auc.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
