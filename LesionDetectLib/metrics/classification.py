"""Scores of a binary (image- or patch-level) classifier, from labels and scores.

`binary_metrics` gives what the papers report (accuracy, precision, recall, F1) at a decision
threshold plus what an imbalanced task needs beside them (specificity, ROC AUC, average
precision, the confusion matrix); `bootstrap_ci` the confidence interval of any of them when
positives are few.  scikit-learn computes every number.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def binary_metrics(labels, scores, threshold: float) -> dict:
    """Metrics of `scores >= threshold` against `labels`.

    Arguments:
        labels: (n,) truth, nonzero = positive.
        scores: (n,) classifier scores or probabilities (higher = more likely positive).
        threshold: the decision threshold.

    Returns:
        {"accuracy", "precision", "recall", "specificity", "f1", "auc", "average_precision",
        "threshold", "confusion_matrix": {"tp", "fp", "tn", "fn"}, "positives", "negatives"};
        AUC and average precision are NaN when the labels hold one class only, precision 0
        when nothing is predicted positive.
    """
    from sklearn.metrics import (accuracy_score, average_precision_score, confusion_matrix, f1_score,
                                 precision_score, recall_score, roc_auc_score)

    labels = (np.asarray(labels).ravel() != 0).astype(int)
    scores = np.asarray(scores, dtype=float).ravel()
    pred = (scores >= threshold).astype(int)
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(labels, pred, labels=[0, 1]).ravel())
    both = len(np.unique(labels)) == 2
    return {
        "accuracy": float(accuracy_score(labels, pred)),
        "precision": float(precision_score(labels, pred, zero_division=0)),
        "recall": float(recall_score(labels, pred, zero_division=0)),
        "specificity": tn / (tn + fp) if tn + fp else float("nan"),
        "f1": float(f1_score(labels, pred, zero_division=0)),
        "auc": float(roc_auc_score(labels, scores)) if both else float("nan"),
        "average_precision": float(average_precision_score(labels, scores)) if both else float("nan"),
        "threshold": float(threshold),
        "confusion_matrix": {"tp": tp, "fp": fp, "tn": tn, "fn": fn},
        "positives": int(labels.sum()),
        "negatives": int(len(labels) - labels.sum()),
    }


def bootstrap_ci(labels, scores, metric: Callable[[np.ndarray, np.ndarray], float], n: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of `metric(labels, scores)` over `n` resamples of the
    cases (resamples holding one class only are skipped, as AUC is undefined there)."""
    labels = np.asarray(labels).ravel() != 0
    scores = np.asarray(scores, dtype=float).ravel()
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        pick = rng.integers(0, len(labels), len(labels))
        if labels[pick].all() or not labels[pick].any():
            continue
        values.append(metric(labels[pick], scores[pick]))
    if not values:
        return float("nan"), float("nan")
    lo, hi = np.percentile(values, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)
