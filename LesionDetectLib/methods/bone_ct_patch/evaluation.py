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
from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score, roc_auc_score

SUMMARY_KEYS = ("precision", "recall", "f", "auc")


def patch_metrics(labels: np.ndarray, scores: np.ndarray, threshold: float) -> dict:
    labels = np.asarray(labels).astype(int)
    pred = (np.asarray(scores) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, pred, labels=[0, 1]).ravel()
    both = len(np.unique(labels)) == 2
    return {
        "precision": float(precision_score(labels, pred, zero_division=0)),
        "recall": float(recall_score(labels, pred, zero_division=0)),
        "f": float(f1_score(labels, pred, zero_division=0)),
        "auc": float(roc_auc_score(labels, scores)) if both else float("nan"),
        "threshold": float(threshold),
        "confusion_matrix": {"tp": int(tp), "fp": int(fp), "tn": int(tn), "fn": int(fn)},
        "patches": {"lesion": int(labels.sum()), "non_lesion": int((1 - labels).sum())},
    }


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
