"""The paper's tables: sensitivity and specificity of every class, one class against the rest,
at slice and at vertebra level, for bone quality and posterolateral involvement; mean ± SD
over seeds; printed in the paper's layout (Tables 1, 2 and 4)."""

from __future__ import annotations

import numpy as np

from .data import BONE_QUALITY, POSTEROLATERAL

TASKS = {"bone_quality": BONE_QUALITY, "posterolateral": POSTEROLATERAL}


def per_class(truth, predicted, classes) -> dict[str, float]:
    """{"SE_<c>": sensitivity, "SP_<c>": specificity, "n_<c>": count} for every class c
    (one against the rest; NaN where a class has no positives or no negatives)."""
    truth, predicted = np.asarray(truth), np.asarray(predicted)
    out: dict[str, float] = {}
    for i, name in enumerate(classes):
        pos, neg = truth == i, truth != i
        out[f"SE_{name}"] = float((predicted[pos] == i).mean()) if pos.any() else float("nan")
        out[f"SP_{name}"] = float((predicted[neg] != i).mean()) if neg.any() else float("nan")
        out[f"n_{name}"] = int(pos.sum())
    out["accuracy"] = float((truth == predicted).mean()) if len(truth) else float("nan")
    return out


def balanced_score(truth, predicted, classes) -> float:
    """Mean over the classes present of (sensitivity + specificity) / 2: what the vertebra
    threshold is chosen by."""
    table = per_class(truth, predicted, classes)
    values = [(table[f"SE_{c}"] + table[f"SP_{c}"]) / 2 for c in classes
              if not np.isnan(table[f"SE_{c}"]) and not np.isnan(table[f"SP_{c}"])]
    return float(np.mean(values)) if values else 0.0


def combine(runs: list[dict]) -> dict:
    """Mean and SD over runs (seeds) of every number, one row per configuration name."""
    rows: dict[str, list[dict]] = {}
    for run in runs:
        rows.setdefault(run.get("name") or run.get("config_name") or "model", []).append(run)
    table = {}
    for name, group in rows.items():
        row = {"runs": len(group)}
        for level in ("slice", "vertebra"):
            for task in TASKS:
                keys = [k for k in group[0].get(level, {}).get(task, {}) if not k.startswith("n_")]
                cell = {}
                for k in keys:
                    values = np.array([r[level][task][k] for r in group], float)
                    cell[k] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
                    cell[k + "_sd"] = float(np.nanstd(values, ddof=1)) if np.isfinite(values).sum() > 1 else 0.0
                row.setdefault(level, {})[task] = cell
        table[name] = row
    return {"rows": table, "runs": runs}


def report(metrics: dict) -> str:
    """The paper's tables (percent), mean ± SD when there are several runs per row."""
    rows = metrics.get("rows") or {metrics.get("name") or "model": {**metrics, "runs": 1}}
    lines = []
    for level, task in (("slice", "bone_quality"), ("slice", "posterolateral"), ("vertebra", "bone_quality"),
                        ("vertebra", "posterolateral")):
        classes = TASKS[task]
        head = [f"{m}_{c[:1].upper()}" for c in classes for m in ("SE", "SP")]
        lines.append(f"{task.replace('_', ' ')} at {level} level (percent)")
        width = max(len(n) for n in rows) + 2
        lines.append(" " * width + "".join(f"{h:>14s}" for h in head))
        for name, row in rows.items():
            cell = row.get(level, {}).get(task, {})
            if not cell:
                continue
            values = []
            for c in classes:
                for m in ("SE", "SP"):
                    v, sd = cell.get(f"{m}_{c}", float("nan")), cell.get(f"{m}_{c}_sd", 0.0)
                    values.append(f"{100 * v:.1f} ± {100 * sd:.1f}" if row.get("runs", 1) > 1 else f"{100 * v:.1f}")
            lines.append(f"{name:{width}s}" + "".join(f"{v:>14s}" for v in values))
        lines.append("")
    return "\n".join(lines).rstrip()
