"""Leave-one-case-out of the issue #17 training recipes on the real MS FLAIR cases (method 004), one command:

    python Testing/benchmarks/ms_flair_recipes.py --data DATA --out OUT [--device auto] [--jobs N]

DATA holds the labelled cases (CASE/flair.nii.gz + CASE/lesions.nii.gz; ../shared/data/ms_flair, or
$MS_FLAIR_DATA); OUT receives ms_flair_recipes.json and .md, rewritten after every finished fold, and
OUT/logs/RECIPE__CASE.log; the synthetic heads, fold datasets and fold models go to --work
(default OUT/work).  For every case, every recipe trains on the other cases plus 3 full-size
synthetic heads (seed 0) and is tested on it, through ms_flair_loo.py's code (both operating
points, lesion detection by size bin):

    a shipped       the shipped recipe: default config + 3 plain synthetic heads
    b small-loss    + lesion-size-balanced loss term (configs/ms-flair-fcn/small-lesion-loss.json)
    c context2      + 5 slices of context instead of 3 (context-2.json)
    d synth-contrast  the default config on synthetic heads with randomised tissue contrasts
                    (synth ms-flair random_contrast=1) instead of the plain ones
    e all           b + c + d (small-loss-context-2.json on the random-contrast heads)

Every recipe has the same schedule (the default: 10 epochs, batch 32; --epochs / --batch-size
change it for all of them).  Folds run as separate processes, --jobs at a time, each with
--threads torch threads (default: the CPU count / jobs); on one GPU they share it.  A rerun
reuses the fold models already in the work folder.  --smoke: 1 epoch, 1 small synthetic head
(a quick end-to-end check of the command on a CPU, not a measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import ms_flair_loo as loo  # noqa: E402

CONFIGS = ROOT / "Resources/configs/ms-flair-fcn"
RANDOM_CONTRAST = {"random_contrast": True}
# name: (label in the tables, config file or None for the defaults, synthetic-head parameters)
RECIPES = {
    "shipped": ("a: shipped recipe (defaults + 3 plain synthetic heads)", None, None),
    "small-loss": ("b: + small-plaque loss", CONFIGS / "small-lesion-loss.json", None),
    "context2": ("c: + context_slices 2", CONFIGS / "context-2.json", None),
    "synth-contrast": ("d: random-contrast synthetic heads", None, RANDOM_CONTRAST),
    "all": ("e: b + c + d", CONFIGS / "small-loss-context-2.json", RANDOM_CONTRAST),
}


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.environ.get("MS_FLAIR_DATA", str(ROOT.parent / "shared/data/ms_flair")))
    parser.add_argument("--out", required=True, help="folder for ms_flair_recipes.json / .md")
    parser.add_argument("--work", help="synthetic heads, fold datasets, models, logs (default OUT/work)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present, default), cuda or cpu")
    parser.add_argument("--jobs", type=int, default=1, help="folds trained at the same time (processes)")
    parser.add_argument("--threads", type=int, help="torch threads per fold process (default: CPUs / jobs)")
    parser.add_argument("--recipes", nargs="+", choices=tuple(RECIPES), default=tuple(RECIPES))
    parser.add_argument("--cases", nargs="+", help="test only these cases (default: every case in DATA)")
    parser.add_argument("--synthetic", type=int, default=3, help="synthetic heads per fold (default 3)")
    parser.add_argument("--epochs", type=int, help="epochs for every recipe (default: the config's, 10)")
    parser.add_argument("--batch-size", type=int, help="batch size for every recipe (default: the config's, 32)")
    parser.add_argument("--seed", type=int, help="training seed for every recipe (default: the config's, 0)")
    parser.add_argument("--smoke", action="store_true", help="1 epoch, 1 small synthetic head: a quick check")
    parser.add_argument("--worker", nargs=2, metavar=("RECIPE", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.data = Path(args.data).resolve()
    args.out = Path(args.out).resolve()
    args.work = Path(args.work).resolve() if args.work else args.out / "work"
    if args.smoke:
        args.epochs, args.synthetic = args.epochs or 1, min(args.synthetic, 1)
    args.size = "small" if args.smoke else "full"
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // max(1, args.jobs))
    return args


def overrides(args) -> dict:
    return {k: v for k, v in (("epochs", args.epochs), ("batch_size", args.batch_size), ("seed", args.seed))
            if v is not None}


def fold_folder(args, cases: list[str], test: str, recipe: str) -> Path:
    return loo.fold_dataset(args.data, cases, test, args.work, args.synthetic, RECIPES[recipe][2], args.size)


def worker(args, cases: list[str]) -> int:
    """One recipe on one fold: train (unless its model is there), evaluate, write the rows."""
    import torch

    from LesionDetectLib.training import train

    recipe, test = args.worker
    torch.set_num_threads(args.threads)
    label, config, _ = RECIPES[recipe]
    folder = fold_folder(args, cases, test, recipe)
    model_dir = folder / f"model_{recipe}"
    t0 = time.perf_counter()
    if not (model_dir / "model.json").exists():
        train("ms-flair-fcn", folder, model_dir, config_path=config, overrides=overrides(args) or None,
              device=args.device, resume=True)
    rows = loo.fold_rows(label, folder, model_dir, test, args.device, t0)
    loo.write_json(rows_file(args, recipe, test), {"rows": rows}, overwrite=True)
    return 0


def rows_file(args, recipe: str, test: str) -> Path:
    return args.work / "rows" / f"{recipe}__{test}.json"


def run_task(args, recipe: str, test: str, passthrough: list[str]) -> dict:
    log = args.out / "logs" / f"{recipe}__{test}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    t0 = time.perf_counter()
    with open(log, "w") as f:
        code = subprocess.run([sys.executable, __file__, *passthrough, "--worker", recipe, test], stdout=f,
                              stderr=subprocess.STDOUT, env=env).returncode
    seconds = round(time.perf_counter() - t0, 1)
    print(f"{recipe:15s} {test:28s} {'done' if code == 0 else f'FAILED ({code})'} in {seconds} s  log {log}",
          flush=True)
    return {"recipe": recipe, "test_case": test, "returncode": code, "seconds": seconds, "log": str(log)}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    cases = sorted(p.name for p in args.data.iterdir() if (p / "flair.nii.gz").exists())
    if not cases:
        raise SystemExit(f"no cases (CASE/flair.nii.gz) in {args.data}")
    if args.worker:
        return worker(args, cases)
    t0 = time.perf_counter()
    tests = args.cases or cases
    # the synthetic heads and fold datasets are made here, once, before the fold processes start
    for params in {json.dumps(RECIPES[r][2]) for r in args.recipes}:
        loo.synthetic_cases(args.work, args.synthetic, json.loads(params), args.size, jobs=max(1, args.jobs))
    for recipe in args.recipes:
        for test in tests:
            fold_folder(args, cases, test, recipe)
    passthrough = [a for a in argv if a != "--worker"]
    tasks = [(r, t) for r in args.recipes for t in tests]
    runs, rows = [], []
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        futures = [pool.submit(run_task, args, r, t, passthrough) for r, t in tasks]
        for future in as_completed(futures):  # the tables are rewritten after every fold: a run cut
            run = future.result()  # short by a time limit still leaves the folds it finished
            path = rows_file(args, run["recipe"], run["test_case"])
            if run["returncode"] == 0 and path.exists():
                rows += json.loads(path.read_text())["rows"]
            else:
                run["log_tail"] = Path(run["log"]).read_text(errors="replace")[-2000:]
            runs.append(run)
            text = write_results(args, argv, cases, rows, runs, time.perf_counter() - t0, len(tasks))
    print(text)
    return 0 if all(r["returncode"] == 0 for r in runs) else 1


def write_results(args, argv, cases, rows, runs, seconds, total) -> str:
    order = {(r, t): i for i, (r, t) in enumerate((r, t) for r in RECIPES for t in cases)}
    rows = sorted(rows, key=lambda r: (order.get((_recipe_of(r["model"]), r["test_case"]), 0), r["operating_point"]))
    result = summary(args, argv, cases, rows, runs, seconds)
    result["folds_done"] = f"{len(runs)} of {total}"
    loo.write_json(args.out / "ms_flair_recipes.json", result, overwrite=True)
    text = markdown(result)
    loo.write_text(args.out / "ms_flair_recipes.md", text, overwrite=True)
    return text


def _recipe_of(label: str) -> str:
    return next((name for name, (lab, _, _) in RECIPES.items() if lab == label), "")


def summary(args, argv, cases, rows, runs, seconds) -> dict:
    import torch

    means = []
    for recipe in args.recipes:
        label = RECIPES[recipe][0]
        for point in ("lesion", "pixel"):
            mine = [r for r in rows if r["model"] == label and r["operating_point"] == point]
            if mine:
                means.append({"model": label, "operating_point": point, "folds": len(mine),
                              **{k: sum(r[k] for r in mine) / len(mine) for k in loo.KEYS}})
    gpu = torch.cuda.get_device_name() if args.device != "cpu" and torch.cuda.is_available() else "no GPU"
    return {"command": "python Testing/benchmarks/ms_flair_recipes.py " + " ".join(argv),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {gpu}, torch {torch.__version__}, "
                       f"{args.jobs} jobs x {args.threads} torch threads",
            "schedule": overrides(args) or "each config's own (default: 10 epochs, batch 32)",
            "smoke": bool(args.smoke), "wall_seconds": round(seconds, 1), "cases": cases,
            "recipes": {r: {"label": RECIPES[r][0], "config": str(RECIPES[r][1].relative_to(ROOT)) if RECIPES[r][1]
                            else None, "synthetic_params": RECIPES[r][2]} for r in args.recipes},
            "runs": runs, "rows": rows, "means": means, "paper_pixel_f": 0.55}


def markdown(result: dict) -> str:
    """A compact recipe x fold table (Dice / lesion F1), then ms_flair_loo's full table and size bins."""
    cases = sorted({r["test_case"] for r in result["rows"]})
    head = "| recipe | operating point | " + " | ".join(f"{c} Dice / lesion F1" for c in cases) + \
        " | mean Dice / lesion F1 |"
    lines = [("SMOKE RUN (1 epoch, small synthetic heads): not a measurement.\n" if result["smoke"] else ""),
             head, "|" + "---|" * (head.count("|") - 1)]
    for m in result["means"]:
        cells = []
        for c in cases:
            row = [r for r in result["rows"] if r["model"] == m["model"] and r["test_case"] == c
                   and r["operating_point"] == m["operating_point"]]
            cells.append(f"{row[0]['dice']:.3f} / {row[0]['lesion_f1']:.3f}" if row else "–")
        lines.append(f"| {m['model']} | {m['operating_point']} | " + " | ".join(cells)
                     + f" | {m['dice']:.3f} / {m['lesion_f1']:.3f} |")
    failed = [r for r in result["runs"] if r["returncode"] != 0]
    if failed:
        lines += ["", "Failed folds: " + ", ".join(f"{r['recipe']} / {r['test_case']} (log {r['log']})" for r in failed)]
    lines += ["", f"Schedule: {result['schedule']}; folds done: {result.get('folds_done', '?')}; "
              f"wall time {result['wall_seconds']} s.", "",
              loo.markdown(result)]
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
