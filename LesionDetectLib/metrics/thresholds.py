"""Choosing a decision threshold from labelled scores.

`fmax_threshold` is the F-max rule the methods use to store a threshold in the model card
(bone-ct-patch: patch scores on validation patches; ms-flair-fcn: pixel probabilities of
the training volumes): the score threshold whose F1 (harmonic mean of precision and
recall) is highest, predicting positive when score >= threshold.  `youden_threshold` is the
rule for a screening classifier on imbalanced data (bone-scan-cls): the ROC point with the
largest sensitivity + specificity - 1, which does not let the majority class dominate.
"""

from __future__ import annotations

import numpy as np

DEFAULT_THRESHOLD = 0.5


def _flat(labels, scores) -> tuple[np.ndarray, np.ndarray]:
    """(bool labels, float scores), both flattened; a size mismatch is a ValueError."""
    labels = np.asarray(labels).ravel() != 0
    scores = np.asarray(scores, dtype=float).ravel()
    if labels.shape != scores.shape:
        raise ValueError(f"{labels.size} labels but {scores.size} scores")
    return labels, scores


def fmax_threshold(labels, scores) -> float:
    """The threshold t (predict positive when score >= t) that maximises F1.

    Arguments:
        labels: array-like of shape (n,), the truth; nonzero / True is positive.  Any shape
            is accepted and flattened (e.g. a whole (z, y, x) mask).
        scores: array-like of the same number of elements, the classifier's scores or
            probabilities (higher = more likely positive).

    Returns:
        One of the distinct values of `scores`: the one whose threshold gives the highest
        F1, searched over every distinct score with `sklearn.metrics.precision_recall_curve`
        (ties go to the lowest such threshold).  Thresholds <= 0 are never chosen: with
        probabilities, predicting score >= 0 marks every pixel.  Returns 0.5 when `labels`
        hold fewer than two classes (no F to maximise) or when no score is above 0.

    Raises:
        ValueError: when labels and scores differ in size.
    """
    from sklearn.metrics import precision_recall_curve

    labels, scores = _flat(labels, scores)
    if labels.all() or not labels.any():
        return DEFAULT_THRESHOLD
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    f = 2 * precision[:-1] * recall[:-1] / np.clip(precision[:-1] + recall[:-1], 1e-12, None)
    usable = thresholds > 0  # a threshold <= 0 would mark everything
    if not usable.any():
        return DEFAULT_THRESHOLD
    f[~usable] = -1.0
    return float(thresholds[int(np.argmax(f))])


def youden_threshold(labels, scores) -> float:
    """The threshold t (predict positive when score >= t) maximising Youden's J =
    sensitivity + specificity - 1 over every distinct score (sklearn.metrics.roc_curve);
    ties go to the highest such threshold (fewer false positives).  0.5 when `labels`
    hold fewer than two classes.

    Arguments:
        labels: (n,) truth, nonzero = positive.
        scores: (n,) scores, higher = more likely positive.
    """
    from sklearn.metrics import roc_curve

    labels, scores = _flat(labels, scores)
    if labels.all() or not labels.any():
        return DEFAULT_THRESHOLD
    fpr, tpr, thresholds = roc_curve(labels, scores)
    finite = np.isfinite(thresholds)  # roc_curve's first threshold is +inf (nothing positive)
    j = np.where(finite, tpr - fpr, -np.inf)
    return float(thresholds[int(np.argmax(j))])
