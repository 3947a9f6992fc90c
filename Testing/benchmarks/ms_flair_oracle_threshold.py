"""Is the threshold what keeps method 004 below its target?  One command, after ms_flair_loo.py:

    .venv/bin/python Testing/benchmarks/ms_flair_oracle_threshold.py [--work /tmp/ms_flair_loo]

For each leave-one-case-out fold model (default model) in --work, the pixel F on its test
case at the threshold it chose on its training cases, at 0.5, and at the best threshold for
the test case itself (an oracle no real run has), plus the test case's average precision.
If even the oracle stays far below 0.60, the model's ranking of pixels, not the threshold,
is what limits it.  Results: Resources/benchmarks/ms_flair_oracle_threshold.json and .md.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from sklearn.metrics import average_precision_score  # noqa: E402

from LesionDetectLib.dataset import load_dataset, read_mask  # noqa: E402
from LesionDetectLib.files import write_json, write_text  # noqa: E402
from LesionDetectLib.io import read_image  # noqa: E402
from LesionDetectLib.metrics.thresholds import fmax_threshold  # noqa: E402
from LesionDetectLib.metrics.lesionwise import pixel_counts, pixel_scores  # noqa: E402
from LesionDetectLib.training import load_trained  # noqa: E402


def pixel_f(prob: np.ndarray, truth: np.ndarray, threshold: float) -> float:
    return float(pixel_scores(pixel_counts(truth, prob >= threshold))["pixel_f"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/ms_flair_loo"))
    ap.add_argument("--out", type=Path, default=ROOT / "Resources" / "benchmarks" / "ms_flair_oracle_threshold")
    args = ap.parse_args(argv)
    rows = []
    for fold in sorted(args.work.glob("fold_*")):
        test = load_dataset(fold).by_split("test")[0]
        method, model, card, device = load_trained(fold / "model_default", device="cpu")
        prob = method.probability_map(model, card.config, read_image(test.image), device)
        truth = read_mask(test.mask).astype(bool)
        keep = (prob > 0) | truth  # pixels at 0 are negative at every threshold > 0
        # the same F-max search that chose the training threshold, run on the test case itself
        oracle = fmax_threshold(truth[keep], prob[keep])
        stored = float(card.thresholds["pixel"])
        rows.append({"test_case": test.id, "threshold_from_training": stored, "f_at_training_threshold":
                     pixel_f(prob, truth, stored), "f_at_0.5": pixel_f(prob, truth, 0.5),
                     "oracle_threshold": oracle, "oracle_f": pixel_f(prob, truth, oracle),
                     "average_precision": float(average_precision_score(truth[keep], prob[keep]))})
        print(rows[-1], flush=True)
    mean = {k: float(np.mean([r[k] for r in rows])) for k in ("f_at_training_threshold", "oracle_f",
                                                                "average_precision")}
    result = {"command": "python Testing/benchmarks/ms_flair_oracle_threshold.py --work " + str(args.work),
              "torch": torch.__version__, "rows": rows, "mean": mean}
    lines = ["# ms-flair-fcn: the leave-one-case-out models at an oracle threshold", "",
             f"Command: `{result['command']}` (fold models of `ms_flair_loo.py`, default model).", "",
             "| test case | threshold from training | pixel F there | pixel F at 0.5 | oracle threshold "
             "| oracle pixel F | average precision |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['test_case']} | {r['threshold_from_training']:.3f} | {r['f_at_training_threshold']:.3f} "
              f"| {r['f_at_0.5']:.3f} | {r['oracle_threshold']:.3f} | {r['oracle_f']:.3f} "
              f"| {r['average_precision']:.3f} |" for r in rows]
    lines.append(f"| **mean** | | **{mean['f_at_training_threshold']:.3f}** | | | **{mean['oracle_f']:.3f}** "
                 f"| **{mean['average_precision']:.3f}** |")
    write_json(args.out.with_suffix(".json"), result, overwrite=True)
    write_text(args.out.with_suffix(".md"), "\n".join(lines) + "\n", overwrite=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
