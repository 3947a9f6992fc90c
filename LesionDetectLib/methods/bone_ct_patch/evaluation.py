"""Metrics of method 000: patch-level (the paper's Table 2) and lesion-level (FROC).

Patch level, on the test patches: precision, recall, F-score at the model's threshold
(chosen on validation patches), AUC (scikit-learn), confusion matrix.  Several trained
models of one experiment (different seeds) give mean +- SD, printed in Table 2's layout.

Lesion level (method.lesion_level): candidates against annotated lesions with the shared
matching of metrics.matching (inside a lesion box, or within `hit_radius_mm` of a lesion
point) and FROC of metrics.froc.
"""

from __future__ import annotations

import numpy as np

from ...metrics.classification import binary_metrics

SUMMARY_KEYS = ("precision", "recall", "f", "auc")


def patch_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    """Table 2's columns on the test patches (metrics.classification.binary_metrics)."""
    m = binary_metrics(labels, scores, threshold)
    return {"precision": m["precision"], "recall": m["recall"], "f": m["f1"], "auc": m["auc"],
            "threshold": m["threshold"], "confusion_matrix": m["confusion_matrix"],
            "patches": {"lesion": m["positives"], "non_lesion": m["negatives"]}}


# --- several runs, Table 2 ------------------------------------------------------------------------

def combine_runs(runs: list[dict]) -> dict:
    """Group runs by experiment; mean and SD (ddof=1) of each summary metric."""
    rows: dict[str, dict] = {}
    for run in runs:
        rows.setdefault(run.get("experiment", "model"), []).append(run)
    table = {}
    for name, group in rows.items():
        row = {"runs": len(group), "seeds": [r.get("seed") for r in group]}
        for key in (*SUMMARY_KEYS, "froc_mean"):
            values = np.array([r[key] for r in group if r.get(key) is not None], float)
            if len(values):
                row[key] = float(values.mean())
                row[f"{key}_sd"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        row["confusion_matrix"] = {k: int(sum(r["confusion_matrix"][k] for r in group))
                                   for k in ("tp", "fp", "tn", "fn")}
        table[name] = row
    return {"rows": table, "runs": runs}


def table2(metrics: dict) -> str:
    """The paper's Table 2 layout (one row per experiment; +- SD over seeds when several)."""
    rows = metrics["rows"] if "rows" in metrics else {metrics.get("experiment", "model"): metrics}
    w = max([8] + [len(str(n)) for n in rows])  # the name column fits the longest experiment name
    out = [f"{'':{w}s} {'Precision':>15s} {'Recall':>15s} {'F-Score':>15s} {'AUC':>15s}"]
    for name, row in rows.items():
        cells = []
        for key in SUMMARY_KEYS:
            sd = row.get(f"{key}_sd")
            cells.append(f"{row[key]:.2f} ± {sd:.3f}" if sd is not None else f"{row[key]:.3f}")
        out.append(f"{name:{w}s} " + " ".join(f"{c:>15s}" for c in cells))
    out.append("")
    out.append("Confusion matrices (summed over runs):")
    out.append(f"  {'':{w}s} {'TP':>6s} {'FP':>4s} {'TN':>4s} {'FN':>4s}")
    for name, row in rows.items():
        cm = row["confusion_matrix"]
        out.append(f"  {name:{w}s} {cm['tp']:6d} {cm['fp']:4d} {cm['tn']:4d} {cm['fn']:4d}")
    froc_rows = [(n, r) for n, r in rows.items() if r.get("froc_mean") is not None]
    if froc_rows:
        out.append("")
        out.append("Lesion level (FROC, sensitivity at FP per volume):")
        for name, row in froc_rows:
            if "froc" in row:
                cells = "  ".join(f"{k}: {v:.2f}" for k, v in row["froc"].items())
                out.append(f"  {name:{w}s} {cells}  mean {row['froc_mean']:.3f}  "
                           f"({row['lesions']} lesions, {row['volumes']} volumes)")
            else:
                out.append(f"  {name:{w}s} mean {row['froc_mean']:.3f} ± {row.get('froc_mean_sd', 0):.3f}")
    return "\n".join(out)


def lesion_f1(fp_scores, lesion_scores, threshold: float) -> dict:
    """Lesion-level counts and F1 at one operating threshold, from `match_detections`' output:
    a lesion is found when a detection scoring >= threshold hits it; a false detection counts
    when it scores >= threshold and hits no lesion.  (Further hits on a found lesion are
    neither, as in the shared matching.)"""
    found = sum(s is not None and s >= threshold for s in lesion_scores)
    false = sum(s >= threshold for s in fp_scores)
    missed = len(lesion_scores) - found
    precision = found / (found + false) if found + false else 0.0
    recall = found / len(lesion_scores) if len(lesion_scores) else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"lesion_threshold": float(threshold), "found": int(found), "missed": int(missed),
            "false": int(false), "lesion_precision": precision, "lesion_recall": recall, "lesion_f1": f1}
