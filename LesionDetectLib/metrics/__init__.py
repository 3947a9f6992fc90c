"""Evaluation measures shared by the methods (one place for each), as plain array functions.

- `thresholds`: `fmax_threshold` (the F-max decision threshold stored in model cards) and
  `youden_threshold` (largest sensitivity + specificity - 1).
- `classification`: `binary_metrics` (accuracy, precision, recall, specificity, F1, AUC, AP,
  confusion matrix at a threshold) and `bootstrap_ci`.
- `matching`: hit rules (`point_hits`: point in lesion box / within a radius of a lesion
  point; `box_hits`: 2-D IoU, DeepLesion rule) and `match_detections`, which turns a hit
  matrix into false-positive scores and per-lesion best scores.
- `froc`: `froc_curve`, `froc_summary` (sensitivity at 0.5-8 FP per image), `threshold_at`
  (the operating point at a false-positive rate), `plot_froc`.
- `lesionwise`: pixel scores and Anima's lesion-wise detection (MSSEG).
"""

from .classification import binary_metrics, bootstrap_ci
from .froc import FP_RATES, froc_curve, froc_summary, plot_froc, sensitivity_at, threshold_at
from .lesionwise import lesion_detection, lesion_rows, pixel_counts, pixel_scores
from .matching import box_hits, match_detections, point_hits
from .thresholds import fmax_threshold, youden_threshold

__all__ = ["FP_RATES", "binary_metrics", "bootstrap_ci", "box_hits", "fmax_threshold", "froc_curve", "froc_summary", "lesion_detection", "lesion_rows",
           "match_detections", "pixel_counts", "pixel_scores", "plot_froc", "point_hits", "sensitivity_at",
           "threshold_at", "youden_threshold"]
