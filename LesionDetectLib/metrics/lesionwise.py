"""Pixel and lesion-wise segmentation measures, lesion-wise as animaSegPerfAnalyzer defines them.

Pixel measures (`pixel_counts`, `pixel_scores`): precision = TP / (TP + FP), recall = TP /
(TP + FN), F = harmonic mean of the two.  For binary masks F equals Dice; the method reports
both, Dice per case and F pooled over every test voxel (the paper's "F-measure").

Lesion-wise (`lesion_detection`), following Anima's `animaSegPerfCAnalyzer.cxx`
(Commowick et al., MSSEG-1, Sci Rep 2018; ../shared/reference/ml-anchors.md 2.4):

1. Lesions are connected components with face connectivity (ITK's ConnectedComponent with
   FullyConnected off: 6-neighbourhood in 3-D, 4 in 2-D) of the truth and of the
   prediction; components of `min_volume_mm3` (3 mm^3) or less are dropped, i.e. become
   background, exactly like Anima's RelabelComponent(min size = floor(3 / voxel volume) + 1).
2. An overlap table counts voxels of truth lesion i (0 = background) against predicted
   lesion j (0 = background).
3. Truth lesion i is detected when more than alpha (0.10) of its voxels lie in predicted
   lesions, and, walking the predicted lesions that overlap it in decreasing overlap order
   until their share of its overlap reaches gamma (0.65), none of them has more than beta
   (0.70) of its own voxels in the truth's background.
4. The same test on the transposed table decides which predicted lesions are true positives.
5. Sensitivity = detected truth lesions / truth lesions; precision = true positive
   predicted lesions / predicted lesions; F1 = 2 P S / (P + S).  An empty denominator gives
   NaN, as in Anima; F1 is 0 when either side is 0 and NaN only when neither is defined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

ALPHA, BETA, GAMMA, MIN_VOLUME_MM3 = 0.10, 0.70, 0.65, 3.0


# --- pixels -----------------------------------------------------------------------------

def pixel_counts(truth: np.ndarray, pred: np.ndarray) -> dict[str, int]:
    """{"tp", "fp", "fn"} voxel counts.

    Arguments:
        truth, pred: arrays of one shape; values > 0 are lesion.
    """
    truth, pred = np.asarray(truth) > 0, np.asarray(pred) > 0
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in shape")
    tp = int(np.count_nonzero(truth & pred))
    return {"tp": tp, "fp": int(np.count_nonzero(pred)) - tp, "fn": int(np.count_nonzero(truth)) - tp}


def pixel_scores(counts: dict[str, int]) -> dict[str, float]:
    """Precision, recall, F and Dice from TP/FP/FN counts (NaN where a denominator is empty)."""
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    precision = tp / (tp + fp) if tp + fp else math.nan
    recall = tp / (tp + fn) if tp + fn else math.nan
    dice = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan
    return {"pixel_precision": precision, "pixel_recall": recall, "pixel_f": dice, "dice": dice}


# --- lesions ----------------------------------------------------------------------------

def min_component_voxels(spacing, min_volume_mm3: float = MIN_VOLUME_MM3) -> int:
    """Anima's size rule: components must be strictly larger than min_volume_mm3."""
    voxel_volume = float(np.prod(spacing[:3]))
    return int(math.floor(min_volume_mm3 / voxel_volume)) + 1


def lesion_labels(mask: np.ndarray, spacing=(1.0, 1.0, 1.0), min_volume_mm3: float = MIN_VOLUME_MM3
                  ) -> tuple[np.ndarray, int]:
    """(label array, number of lesions): face-connected components larger than the minimum
    volume, numbered 1..n by decreasing size.  `spacing` is SimpleITK's (x, y, z) order."""
    image = sitk.GetImageFromArray((np.asarray(mask) > 0).astype(np.uint8))
    image.SetSpacing([float(s) for s in spacing[:image.GetDimension()]])
    components = sitk.ConnectedComponent(image, False)  # fullyConnected=False: face connectivity
    relabel = sitk.RelabelComponentImageFilter()
    relabel.SetMinimumObjectSize(min_component_voxels(spacing, min_volume_mm3))
    relabel.SetSortByObjectSize(True)
    labels = relabel.Execute(components)
    return sitk.GetArrayFromImage(labels).astype(np.int32), int(relabel.GetNumberOfObjects())


def overlap_table(truth_labels: np.ndarray, n_truth: int, pred_labels: np.ndarray, n_pred: int) -> np.ndarray:
    """(n_truth + 1, n_pred + 1) voxel counts; row/column 0 is background."""
    combined = truth_labels.astype(np.int64).ravel() * (n_pred + 1) + pred_labels.astype(np.int64).ravel()
    return np.bincount(combined, minlength=(n_truth + 1) * (n_pred + 1)).reshape(n_truth + 1, n_pred + 1)


def detected_rows(table: np.ndarray, alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA) -> np.ndarray:
    """Which row lesions (rows 1..) count as detected by the column lesions; bool (n_rows,).

    Anima's getTruePositiveLesions + falsePositiveRatioTester, including its loop bound: at
    most as many overlapping columns are visited as there are row labels (background
    included)."""
    n_rows = table.shape[0] - 1
    out = np.zeros(n_rows, dtype=bool)
    if n_rows == 0 or table.shape[1] == 1:
        return out
    column_sums = table.sum(axis=0)
    for i in range(1, n_rows + 1):
        overlaps = table[i, 1:]
        inside = int(overlaps.sum())
        if inside / (inside + table[i, 0]) <= alpha:
            continue
        order = np.argsort(-overlaps, kind="stable") + 1  # column labels, decreasing overlap
        share, k, rejected = 0.0, 0, False
        while share < gamma and k < table.shape[0] and k < len(order):
            j = order[k]
            if table[0, j] / column_sums[j] > beta:  # this column lesion lies mostly outside every row lesion
                rejected = True
                break
            share += table[i, j] / inside
            k += 1
        out[i - 1] = not rejected
    return out


@dataclass
class LesionResult:
    n_truth: int
    n_pred: int
    truth_detected: np.ndarray  # bool per truth lesion (label 1..n_truth)
    pred_true: np.ndarray  # bool per predicted lesion
    table: np.ndarray
    truth_labels: np.ndarray = field(repr=False)
    pred_labels: np.ndarray = field(repr=False)

    @property
    def sensitivity(self) -> float:
        return float(self.truth_detected.mean()) if self.n_truth else math.nan

    @property
    def precision(self) -> float:
        return float(self.pred_true.mean()) if self.n_pred else math.nan

    @property
    def f1(self) -> float:
        return f1_score(self.precision, self.sensitivity)

    def scores(self) -> dict[str, float]:
        return {"lesion_sensitivity": self.sensitivity, "lesion_precision": self.precision, "lesion_f1": self.f1,
                "truth_lesions": self.n_truth, "predicted_lesions": self.n_pred,
                "detected_lesions": int(self.truth_detected.sum()), "true_positive_predictions": int(self.pred_true.sum())}


def f1_score(precision: float, sensitivity: float) -> float:
    if math.isnan(precision) and math.isnan(sensitivity):
        return math.nan
    if (precision == 0 or sensitivity == 0) or math.isnan(precision) or math.isnan(sensitivity):
        return 0.0
    return 2 * precision * sensitivity / (precision + sensitivity)


def lesion_detection(truth: np.ndarray, pred: np.ndarray, spacing=(1.0, 1.0, 1.0), alpha: float = ALPHA,
                     beta: float = BETA, gamma: float = GAMMA, min_volume_mm3: float = MIN_VOLUME_MM3) -> LesionResult:
    """Lesion-wise detection of binary `pred` against binary `truth` (same (z, y, x) grid,
    `spacing` in SimpleITK's (x, y, z) order)."""
    if np.shape(truth) != np.shape(pred):
        raise ValueError(f"truth {np.shape(truth)} and prediction {np.shape(pred)} differ in shape")
    truth_labels, n_truth = lesion_labels(truth, spacing, min_volume_mm3)
    pred_labels, n_pred = lesion_labels(pred, spacing, min_volume_mm3)
    table = overlap_table(truth_labels, n_truth, pred_labels, n_pred)
    return LesionResult(n_truth, n_pred, detected_rows(table, alpha, beta, gamma),
                        detected_rows(table.T, alpha, beta, gamma), table, truth_labels, pred_labels)


SIZE_BINS_MM3 = (10.0, 100.0)  # < 10, 10-100, > 100 mm^3, as lesion-detection studies report them


def size_bin_names(edges=SIZE_BINS_MM3) -> list[str]:
    names = [f"<{edges[0]:g} mm3"] + [f"{a:g}-{b:g} mm3" for a, b in zip(edges[:-1], edges[1:])]
    return names + [f">{edges[-1]:g} mm3"]


def detection_by_size(result: LesionResult, spacing=(1.0, 1.0, 1.0), edges=SIZE_BINS_MM3) -> dict[str, dict]:
    """Lesion detection per size bin: {bin name: {"truth", "detected", "sensitivity", "pred",
    "true_pred", "precision"}}.  Truth lesions are binned by their own volume (mm^3),
    predicted lesions by theirs; the bins are [0, e1), [e1, e2), ..., [e_last, inf) and
    components of 3 mm^3 or less are already gone (Anima's rule), so the first bin holds
    the lesions of more than 3 and under 10 mm^3."""
    voxel = float(np.prod(spacing[:3]))
    out = {}
    names = size_bin_names(edges)
    bounds = [0.0, *edges, math.inf]
    truth_vol = np.bincount(result.truth_labels.ravel(), minlength=result.n_truth + 1)[1:] * voxel
    pred_vol = np.bincount(result.pred_labels.ravel(), minlength=result.n_pred + 1)[1:] * voxel
    for name, lo, hi in zip(names, bounds[:-1], bounds[1:]):
        t = (truth_vol >= lo) & (truth_vol < hi)
        p = (pred_vol >= lo) & (pred_vol < hi)
        n_t, d, n_p, tp = int(t.sum()), int(result.truth_detected[t].sum()), int(p.sum()), int(result.pred_true[p].sum())
        out[name] = {"truth": n_t, "detected": d, "sensitivity": d / n_t if n_t else math.nan,
                     "pred": n_p, "true_pred": tp, "precision": tp / n_p if n_p else math.nan}
    return out


def lesion_rows(result: LesionResult, geometry=None, probability: np.ndarray | None = None) -> list[dict]:
    """The per-lesion table: one row per truth lesion and per predicted lesion with its
    voxels, volume (mm^3), centroid (LPS mm when `geometry` is given, else voxel index
    x, y, z), overlap fraction, whether it counts as detected / true positive, and the
    highest probability inside it when `probability` is given."""
    spacing = geometry.spacing if geometry is not None else (1.0, 1.0, 1.0)
    voxel_volume = float(np.prod(spacing))
    rows = []
    for kind, labels, n, flags, table in (("truth", result.truth_labels, result.n_truth, result.truth_detected,
                                           result.table),
                                          ("predicted", result.pred_labels, result.n_pred, result.pred_true,
                                           result.table.T)):
        if n == 0:
            continue
        index = np.arange(1, n + 1)
        voxels = np.bincount(labels.ravel(), minlength=n + 1)[1:]
        zyx = np.nonzero(labels)
        sums = [np.bincount(labels[zyx], weights=coord, minlength=n + 1)[1:] for coord in zyx]
        centroids_xyz = np.stack([sums[2], sums[1], sums[0]], axis=1) / voxels[:, None]
        maxima = None
        if probability is not None:
            maxima = np.zeros(n + 1)
            np.maximum.at(maxima, labels[zyx], probability[zyx])
        for k, lab in enumerate(index):
            centroid = geometry.index_to_lps(centroids_xyz[k]) if geometry is not None else centroids_xyz[k]
            row = {"kind": kind, "id": int(lab), "voxels": int(voxels[k]),
                   "volume_mm3": round(float(voxels[k]) * voxel_volume, 3),
                   "centroid": [round(float(v), 2) for v in np.ravel(centroid)],
                   "overlap": round(float(table[lab, 1:].sum() / voxels[k]), 4),
                   "detected" if kind == "truth" else "true_positive": bool(flags[k])}
            if maxima is not None:
                row["max_probability"] = round(float(maxima[lab]), 4)
            rows.append(row)
    return rows
